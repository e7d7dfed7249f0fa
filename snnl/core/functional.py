"""The soft nearest neighbor loss (docs/method.md) as pure functions on tensors, in log space.

Batch SNNL (Salakhutdinov & Hinton 2007; Frosst, Papernot & Hinton 2019), for rows (h_i, y_i):

    l_i  = logsumexp_{k != i}(-D_ik / T) - logsumexp_{j != i, y_j = y_i}(-D_ij / T)
    SNNL = mean of l_i over the rows that have at least one same-class partner

l_i = -log p_i, where p_i is the probability that a soft neighbor of i is of i's class.
"""

from __future__ import annotations

import math

import torch

from snnl.core.distances import Distance, check_distance, pairwise_distances


def masked_logsumexp(values: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log(sum over ``mask`` of exp(values)) along ``dim``; -inf where the mask is empty.

    The masked row maximum is subtracted first, so nothing overflows or underflows, and the
    gradient is finite (zero for masked entries) even for entries of -inf or a huge magnitude.
    """
    neg_inf = torch.tensor(float("-inf"), dtype=values.dtype, device=values.device)
    masked = torch.where(mask, values, neg_inf)
    row_max = masked.amax(dim=dim, keepdim=True)
    safe_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    shifted = torch.where(mask, values - safe_max, neg_inf)
    total = shifted.exp().sum(dim=dim, keepdim=True)
    # log(0) = -inf for empty rows; clamp only the argument to keep the gradient finite there.
    result = torch.where(total > 0, total.clamp_min(torch.finfo(values.dtype).tiny).log(), neg_inf)
    return (result + safe_max).squeeze(dim)


def check_temperature(temperature: float | torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``temperature`` is a positive finite number or a one-element
    tensor (a tensor of several values would silently broadcast over the distance matrix)."""
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise ValueError(
                f"temperature must be a number or a 0-dim tensor, got shape "
                f"{tuple(temperature.shape)}"
            )
    elif not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")


def per_row_snnl(
    x: torch.Tensor,
    y: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    distance: Distance = "cosine",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row terms l_i (B,) of the batch SNNL and the mask (B,) of rows that have a partner.

    ``x`` is (B, *) and is flattened to (B, d); ``y`` is (B,) integer labels. Rows without a
    same-class partner get l_i = 0 and ``False`` in the mask; callers must leave them out.
    """
    check_distance(distance)
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"expected x (B, ...) and y (B,), got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    h = x.reshape(x.shape[0], -1)
    return per_row_snnl_from_distances(pairwise_distances(h, h, distance), y, temperature)


def per_row_snnl_from_distances(
    distances: torch.Tensor,
    y: torch.Tensor,
    temperature: float | torch.Tensor,
    *,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_row_snnl`` on precomputed distances: the terms and partner mask of batch rows
    ``rows`` (R,) from their distances (R, B) to every row of the batch, labels ``y`` (B,).

    ``rows`` defaults to all B rows (a square (B, B) matrix); the distance of a row to itself is
    ignored. Passing a few rows at a time gives the exact batch terms in O(R * B) memory.
    ``temperature``: a positive finite float, or a one-element tensor (e.g. 0-dim, differentiable)
    whose positivity is the caller's responsibility (checking it would synchronize a GPU).
    """
    check_temperature(temperature)
    if rows is None:
        rows = torch.arange(distances.shape[0], device=distances.device)
    logits = -distances / temperature
    not_self = torch.ones_like(distances, dtype=torch.bool)
    not_self[torch.arange(len(rows), device=distances.device), rows] = False
    same = (y[rows].unsqueeze(1) == y.unsqueeze(0)) & not_self
    has_partner = same.any(dim=1)
    lse_all = masked_logsumexp(logits, not_self)
    lse_same = masked_logsumexp(logits, same)
    terms = torch.where(has_partner, lse_all - lse_same, torch.zeros_like(lse_all))
    return terms, has_partner


def soft_nearest_neighbor_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    distance: Distance = "cosine",
    eps: float = 0.0,
) -> torch.Tensor:
    """The batch SNNL: a 0-dim tensor, differentiable in ``x`` and ``temperature``.

    ``eps > 0`` bounds each row's term as -log(eps + p_i) <= -log(eps) (Frosst et al.'s
    original code used eps = 1e-5, a cap of about 11.5). Maximizing the unbounded SNNL
    (training factor < 0) diverges, so the regularizer uses the bound then; ``eps = 0`` is exact.

    A batch where no row has a same-class partner has no defined SNNL: the result is 0 (still
    attached to the graph, so a training step proceeds with a zero gradient from this term).
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    terms, has_partner = per_row_snnl(x, y, temperature, distance)
    if eps > 0:
        # -log(eps + exp(-l)) = -logaddexp(-l, log eps), exact in log space.
        log_eps = torch.full_like(terms, math.log(eps))
        terms = -torch.logaddexp(-terms, log_eps)
    if not bool(has_partner.any()):
        return (terms * 0.0).sum()
    return terms[has_partner].mean()
