"""Log-space reductions: sums of exp(z) kept as logs, so that nothing overflows or underflows.

* ``segment_log_sums``: log sum_{j in segment} exp(z_ij) over column segments of a block of
  logits, exact to e^-87 relative (each segment's own maximum subtracted) or, for logits known
  to be bounded, with one exp pass;
* ``merge_segment_sums``: the per-class log-sums of every chunk of rows merged into (B, C);
* ``log_add``: log sum_i exp(values_i), elementwise, with the same bits whatever the tensors'
  length (shards and chunks merge exactly as a single pass would, up to float rounding);
* ``log_mean``: log(sum / n) from log(sum), floored for empty classes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import torch

EXP_FLOOR = -87.0  # exp(-87) is still a normal float32
LOG_FLOOR = -1e12  # log mean kernel of a class with no rows (never for a fitted model's classes)


def log_mean(log_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """log(sum / n) from log(sum) and n (same shape), floored at -1e12 (n = 0: no rows)."""
    return (log_sum - count.to(log_sum.dtype).clamp_min(1.0).log()).clamp_min(LOG_FLOOR)


def segment_log_sums(z: torch.Tensor, cuts: list[int], bounded: bool, guard: bool) -> torch.Tensor:
    """log sum_{j in segment s} exp(z_ij) (B, S) in float64 of the column segments [cuts_s,
    cuts_s+1) of ``z`` (B, n) (overwritten; the last segment ends at n).

    ``bounded``: exp(z) is taken as it is (the logits are bounded: ``LayerKernel._bounded``);
    otherwise each segment's own row maximum M is subtracted and the exponent clamped at -87 (a
    normal float32: out-of-range inputs make exp many times slower on the CPU), and M
    added back to the log in float64. ``guard``: z holds -inf entries (left-out rows, that must
    count 0, not e^-87), reduced by torch.logsumexp instead.
    """
    if guard:
        return _segment_reduce(z, cuts, None, lambda part: torch.logsumexp(part, 1)).double()
    if bounded:
        return _segment_reduce(z.exp_(), cuts, np.add, _row_sum).double().log_()
    top = _segment_reduce(z, cuts, np.maximum, _row_max)
    if len(cuts) == 1:
        spread = top
    else:
        lengths = [b - a for a, b in _segment_bounds(cuts, z.shape[1])]
        spread = top.repeat_interleave(torch.tensor(lengths, device=z.device), dim=1)
    exp = z.sub_(spread).clamp_min_(EXP_FLOOR).exp_()
    return _segment_reduce(exp, cuts, np.add, _row_sum).double().log_().add_(top)


def _segment_bounds(cuts: list[int], n: int) -> list[tuple[int, int]]:
    """[a, b) of each column segment starting at ``cuts``, the last ending at ``n``."""
    return list(itertools.pairwise([*cuts, n]))


def _row_sum(part: torch.Tensor) -> torch.Tensor:
    return part.sum(1)


def _row_max(part: torch.Tensor) -> torch.Tensor:
    return part.amax(1)


def _segment_reduce(
    x: torch.Tensor,
    cuts: list[int],
    ufunc: np.ufunc | None,
    reduce: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """A row reduction (B, S) of each column segment of ``x`` (B, n) starting at ``cuts``.

    On the CPU, with a ``ufunc``, one ``ufunc.reduceat`` call for all segments, also for one: a
    segment's sum is the same bits whether it is reduced alone or among others, and whatever the
    other rows of the batch (measured), so one-round and two-round mass terms agree. Otherwise
    ``reduce`` (B, b - a) -> (B,) on each segment."""
    if ufunc is not None and x.device.type == "cpu":
        return torch.from_numpy(ufunc.reduceat(x.numpy(), cuts, axis=1))
    return torch.stack([reduce(x[:, a:b]) for a, b in _segment_bounds(cuts, x.shape[1])], 1)


def merge_segment_sums(
    parts: list[tuple[list[int], torch.Tensor]], batch: int, num_classes: int, device: torch.device
) -> torch.Tensor:
    """Per-class log-sums (B, C) over all chunks from each chunk's (classes, log-sums (B, S)).

    A class's chunks are merged by ``log_add`` in chunk order: the parts are stacked (depth =
    the most chunks any class spans, -inf where a class has fewer, which adds exactly 0)."""
    if len(parts) == 1 and parts[0][0] == list(range(num_classes)):
        return parts[0][1]  # one chunk holding every class: its sums, in class order
    depth = [0] * num_classes
    layers = []
    for classes, _ in parts:
        layers.append([depth[k] for k in classes])
        for k in classes:
            depth[k] += 1
    stack = torch.full(
        (max(depth), batch, num_classes), float("-inf"), dtype=torch.float64, device=device
    )
    for (classes, values), layer in zip(parts, layers, strict=True):
        stack[layer, :, classes] = values.T
    return stack[0] if len(stack) == 1 else log_add(list(stack))


def log_add(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """log sum_i exp(values_i), elementwise over tensors of one shape; -inf entries allowed.

    Built from maximum, exp, log and additions only: their results per element do not depend on
    the tensors' length (``torch.logaddexp`` and a reduction over a stacked tensor do: their
    vectorized and scalar paths round differently), so a query's sums do not depend on how many
    other queries share the tensors.
    """
    top = values[0]
    for value in values[1:]:
        top = torch.maximum(top, value)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.zeros_like(top)
    for value in values:
        total += (value - top).exp_()
    return total.log_().add_(top)
