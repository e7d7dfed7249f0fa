"""Kernel sums exp(-D / T) of queries against reference rows, in log space and in chunks.

For reference rows r_j of one layer, a distance D and a temperature T, the logits are shifted so
that they are one matrix product (the shift ``offset(h)`` is the same for every row j):

    cosine:    z_j = <h/|h|, r_j/|r_j|> / T                  = -D(h, r_j)/T + 1/T
    euclidean: z_j = (2 <h, r_j> - |r_j|^2) / T              = -D(h, r_j)/T + |h|^2/T

Sums over a contiguous run of rows are reduced with each chunk's maximum M subtracted and
merged with logaddexp; exp(z - M) is clamped at e^-87 (a normal float32: out-of-range inputs
make exp some 30 times slower on the CPU), which adds at most n e^-87 relative to a sum over n
rows. Nothing underflows at any temperature.

Reference rows are sorted by label, so the rows of class c are one slice [start_c, stop_c), and
the class-conditional log-mass of SPEC §1 ("neighbors from the predicted class")

    m(h, c) = log( (1/n_c) sum_{j: y_j = c} exp(-D(h, r_j) / T) )

costs one pass over that slice only (``class_log_mass``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from snnl.core.distances import Distance, prepare

EXP_FLOOR = -87.0  # exp(-87) is still a normal float32
LOG_FLOOR = -1e12  # m of a class with no rows (never for a fitted model's classes)
# BLAS multiplies a few query rows with other kernels (GEMV, small-M paths) than many rows, and
# they round differently. Padding every product to at least this many query rows makes a
# sample's scores independent of the batch it comes in (alone == merged by the server).
# Measured with torch's MKL on the CPU: products of 1-15 rows differ in the last bits, from 16
# rows on they agree. cuBLAS chooses kernels by shape too; on a GPU this is not guaranteed.
MIN_GEMM_ROWS = 16


def prepare_rows(x: torch.Tensor, distance: Distance) -> torch.Tensor:
    """Reference rows (N, d) as a kernel holds them: prepared, contiguous, float16 -> float32."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32)
    return prepare(x, distance).contiguous()


class ReferenceKernel:
    """One layer's reference rows (N, d), prepared for ``distance``, at temperature T."""

    def __init__(self, rows: torch.Tensor, distance: Distance, temperature: float) -> None:
        """``rows`` already passed through ``snnl.core.distances.prepare`` (float32 or float64)."""
        self.distance = distance
        self.temperature = temperature
        self.rows = rows
        # euclidean: z = (2 h / T) r^T - |r|^2 / T; cosine: z = (h / (|h| T)) r^T.
        self.bias = -rows.pow(2).sum(-1) / temperature if distance == "euclidean" else None

    @classmethod
    def from_features(
        cls, x: torch.Tensor, distance: Distance, temperature: float
    ) -> ReferenceKernel:
        """A kernel over raw features ``x`` (N, d)."""
        return cls(prepare_rows(x, distance), distance, temperature)

    def query(self, h: torch.Tensor) -> torch.Tensor:
        """The query side of z, (B, d), on the reference's device and dtype."""
        h = prepare(h.to(device=self.rows.device, dtype=self.rows.dtype), self.distance)
        return h * ((2.0 if self.distance == "euclidean" else 1.0) / self.temperature)

    def offset(self, h: torch.Tensor) -> torch.Tensor:
        """z - (-D / T) for queries ``h`` (B, d): 1/T (cosine) or |h|^2 / T (euclidean), (B,)."""
        h = h.to(device=self.rows.device, dtype=self.rows.dtype)
        if self.distance == "euclidean":
            return h.pow(2).sum(-1) / self.temperature
        return torch.full((h.shape[0],), 1.0 / self.temperature, dtype=h.dtype, device=h.device)

    def logits(self, q: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Shifted logits z (B, stop - start) of ``q`` (see ``query``) vs rows [start, stop)."""
        rows = self.rows[start:stop].T
        batch = q.shape[0]
        if batch < MIN_GEMM_ROWS:  # a row's z must not depend on its batch: see MIN_GEMM_ROWS
            q = torch.cat([q, q.new_zeros(MIN_GEMM_ROWS - batch, q.shape[1])])
        z = q @ rows if self.bias is None else torch.addmm(self.bias[start:stop], q, rows)
        return z[:batch]


def slice_logsumexp(
    kernel: ReferenceKernel,
    q: torch.Tensor,
    start: int,
    stop: int,
    chunk_size: int,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """log sum_{start <= j < stop, j != exclude_i} exp(z_ij), (B,), for ``q`` (B, d) from
    ``kernel.query``; ``exclude`` (B,) optional rows left out (leave-one-out). -inf if empty."""
    if exclude is None and 0 < stop - start <= chunk_size:  # one chunk: fewer kernel launches
        z = kernel.logits(q, start, stop)
        top = z.amax(1, keepdim=True)
        return (z - top).clamp_min_(EXP_FLOOR).exp_().sum(1).log_() + top[:, 0]
    result = torch.full((q.shape[0],), float("-inf"), dtype=q.dtype, device=q.device)
    for begin in range(start, stop, chunk_size):
        end = min(begin + chunk_size, stop)
        z = kernel.logits(q, begin, end)
        hit = None
        if exclude is not None:
            hit = torch.nonzero((exclude >= begin) & (exclude < end))[:, 0]
            z[hit, exclude[hit] - begin] = float("-inf")
        top = z.amax(1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        weights = (z - top).clamp_min_(EXP_FLOOR).exp_()
        if hit is not None and exclude is not None:
            weights[hit, exclude[hit] - begin] = 0.0
        result = torch.logaddexp(result, weights.sum(1).log_() + top[:, 0])
    return result


def class_log_mass(
    kernel: ReferenceKernel,
    h: torch.Tensor,
    classes: torch.Tensor,
    class_rows: Sequence[tuple[int, int]],
    chunk_size: int,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """m_i = log mean_{j: y_j = c_i, j != exclude_i} exp(-D(h_i, r_j) / T), (B,), floored at
    -1e12 (a class with no rows). ``h`` (B, d) raw queries, ``classes`` (B,) labels,
    ``class_rows[c]`` the slice of class c in the label-sorted reference, ``exclude`` (B,)
    optional reference rows left out of the mean."""
    q = kernel.query(h)
    classes = classes.to(q.device)
    if exclude is not None:
        exclude = exclude.to(q.device)
    out = torch.full((q.shape[0],), float("-inf"), dtype=q.dtype, device=q.device)
    for label in torch.unique(classes).tolist():
        idx = torch.nonzero(classes == label)[:, 0]
        start, stop = class_rows[label]
        left_out = None if exclude is None else exclude[idx]
        total = slice_logsumexp(kernel, q[idx], start, stop, chunk_size, left_out)
        count = torch.full_like(total, float(stop - start))
        if left_out is not None:
            count = count - ((left_out >= start) & (left_out < stop)).to(count.dtype)
        out[idx] = total - count.clamp_min(1.0).log()
    return (out - kernel.offset(h)).clamp_min(LOG_FLOOR)
