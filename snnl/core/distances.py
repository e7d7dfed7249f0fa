"""Pairwise distances between a query matrix and a reference matrix.

Both distances the loss and the scores use:

* ``cosine``:    D(a, b) = 1 - <a, b> / (|a| |b|), in [0, 2]
* ``euclidean``: D(a, b) = |a - b|^2 (squared L2, as in Frosst et al. 2019)
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

Distance = Literal["cosine", "euclidean"]
DISTANCES: tuple[str, ...] = get_args(Distance)

_NORM_EPS = 1e-12


def check_distance(distance: str) -> Distance:
    """Return ``distance`` if it names a supported distance, else raise ``ValueError``."""
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
    return distance  # type: ignore[return-value]


def prepare(x: torch.Tensor, distance: Distance) -> torch.Tensor:
    """Rows as the distance sees them: unit-normalized for cosine, unchanged for euclidean.

    Normalizing the reference once (see ``pairwise_distances_prepared``) saves work per query.
    """
    if distance == "cosine":
        return F.normalize(x, dim=-1, eps=_NORM_EPS)
    return x


def pairwise_distances_prepared(
    query: torch.Tensor,
    reference: torch.Tensor,
    distance: Distance,
    reference_sq_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distances (B, N) between rows already passed through ``prepare``.

    For euclidean, ``reference_sq_norms`` (N,) may be given to avoid recomputing |r_j|^2.
    The result is clamped to the distance's range (rounding can make it slightly negative).
    """
    dot = query @ reference.transpose(-1, -2)
    if distance == "cosine":
        return (1.0 - dot).clamp(0.0, 2.0)
    if reference_sq_norms is None:
        reference_sq_norms = reference.pow(2).sum(-1)
    sq = query.pow(2).sum(-1, keepdim=True) + reference_sq_norms.unsqueeze(-2) - 2.0 * dot
    return sq.clamp(min=0.0)


def pairwise_distances(
    query: torch.Tensor, reference: torch.Tensor, distance: Distance = "cosine"
) -> torch.Tensor:
    """Distances (B, N) from each query row (B, d) to each reference row (N, d)."""
    check_distance(distance)
    return pairwise_distances_prepared(
        prepare(query, distance), prepare(reference, distance), distance
    )
