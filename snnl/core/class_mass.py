"""The class-conditional log kernel mass of queries at given classes: the fit-time helper.

Fitting the neighbor-mass nonconformity (snnl.scoring.neighbor_mass) needs, for reference rows
left out of their own sums, m_i = log mean_{j: y_j = c_i, j != i} exp(-D(h_i, r_j) / T): the
same kernel the scorer runs on every batch (snnl.core.kernel), asked for the mass at one class.
"""

from __future__ import annotations

import torch

from snnl.core.kernel import LayerKernel, Term, compute_dtype_of
from snnl.core.logspace import log_mean


def class_mean_log_mass(
    rows: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    term: Term,
    h: torch.Tensor,
    classes: torch.Tensor,
    chunk_size: int,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """m_i = log mean_{j: y_j = c_i, j != exclude_i} exp(-D(h_i, r_j) / T), (B,), floored at
    -1e12, over label-sorted ``rows`` (N, d) with ``labels`` (N,), computed in their dtype (float16
    in float32). ``h`` (B, d) raw queries, ``classes`` (B,), ``exclude`` (B,) optional rows left
    out of the mean (leave-one-out)."""
    dtype = compute_dtype_of(rows.dtype, None)
    kernel = LayerKernel(rows, labels, num_classes, [term, term], dtype)  # term 1: a mass term
    classes = classes.to(device=rows.device, dtype=torch.int64)
    if exclude is not None:
        exclude = exclude.to(rows.device)
    result = kernel.log_sums(
        kernel.prepare(h), classes, 0, chunk_size, score=False, exclude=exclude
    )
    log_sum = result.sums[1].gather(1, classes[:, None])[:, 0] - result.offsets[1]
    count = torch.bincount(labels, minlength=num_classes).to(rows.device)[classes]
    if exclude is not None:
        count = count - (labels[exclude] == classes).to(count.dtype)
    return log_mean(log_sum, count)
