"""The class-conditional log kernel mass of queries at given classes: the fit-time helper.

Fitting the neighbor-mass nonconformity (snnl.scoring.neighbor_mass) needs, for reference rows
left out of their own sums, m_i = log mean_{j: y_j = c_i, j != i} exp(-D(h_i, r_j) / T): the
same kernel the scorer runs on every batch (snnl.core.kernel), asked for the mass at one class.
"""

from __future__ import annotations

import torch

from snnl.core.kernel import LayerKernel, Term, compute_dtype_of
from snnl.core.logspace import log_add, log_mean

BLOCK_CHUNKS = 64  # kernel chunks of reference rows per block (converted and normalized at once)


def class_mean_log_mass(
    rows: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    term: Term,
    h: torch.Tensor,
    classes: torch.Tensor,
    chunk_size: int,
    exclude: torch.Tensor | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """m_i = log mean_{j: y_j = c_i, j != exclude_i} exp(-D(h_i, r_j) / T), (B,), floored at
    -1e12, over label-sorted ``rows`` (N, d) with ``labels`` (N,), computed in ``dtype`` (None:
    the rows' own; float16 in float32). ``h`` (B, d) raw queries, ``classes`` (B,), ``exclude``
    (B,) optional rows left out of the mean (leave-one-out).

    The rows go through the kernel ``BLOCK_CHUNKS`` x ``chunk_size`` rows at a time (each block
    converted to ``dtype`` and normalized on its own), so memory is O(block x d) beyond ``rows``;
    the blocks' log-sums are merged with ``log_add``. Blocks are whole chunks, so every chunk's
    sum is the one a single kernel over all rows computes."""
    classes = classes.to(device=rows.device, dtype=torch.int64)
    block = BLOCK_CHUNKS * chunk_size
    log_sums = []
    for start in range(0, rows.shape[0], block):
        part = rows[start : start + block]
        part = part if dtype is None else part.to(dtype)
        dtype_of_product = compute_dtype_of(part.dtype, None)
        terms = [term, term]  # term 1: a mass term
        kernel = LayerKernel(
            part, labels[start : start + block], num_classes, terms, dtype_of_product
        )
        local = None if exclude is None else exclude.to(rows.device) - start
        result = kernel.log_sums(
            kernel.prepare(h), classes, 0, chunk_size, score=False, exclude=local
        )
        log_sums.append(result.sums[1].gather(1, classes[:, None])[:, 0] - result.offsets[1])
    count = torch.bincount(labels, minlength=num_classes).to(rows.device)[classes]
    if exclude is not None:
        count = count - (labels[exclude] == classes).to(count.dtype)
    return log_mean(log_add(log_sums), count)
