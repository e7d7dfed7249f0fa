"""Pairwise distances between a query matrix and a reference matrix, as objects.

Both distances the loss and the scores use, one class each:

* ``cosine`` (``CosineDistance``):              D(a, b) = 1 - <a, b> / (|a| |b|), in [0, 2]
* ``euclidean`` (``SquaredEuclideanDistance``): D(a, b) = |a - b|^2 (squared L2, Frosst et al.)

Files and settings name a distance (``Distance``, the manifest's ``"cosine"`` / ``"euclidean"``);
``distance_of`` turns the name into its object, once. Besides the query-vs-reference matrix
(``pairwise``), each object states how it enters the scorer's kernel (snnl.core.kernel): the
kernel exp(-D(h, r)/T) is served as exp(z - o(h)) with the *shifted logit*

    z(h, r) = c(h) <h, row> + b(row)        o(h) = D's shift, the same for every row

where ``row`` is r as the distance sees it (``normalizes``: r/|r| for cosine, r for euclidean):

    cosine:    c(h) = 1/(|h| T)   b = 0            o(h) = 1/T        z in [-1/T, 1/T]
    euclidean: c(h) = 2/T         b = -|r|^2/T     o(h) = |h|^2/T    z unbounded below
"""

from __future__ import annotations

from typing import ClassVar, Literal, get_args

import torch
import torch.nn.functional as F

Distance = Literal["cosine", "euclidean"]
"""The name of a distance, as files, settings and the command line give it."""
DISTANCES: tuple[str, ...] = get_args(Distance)

_NORM_EPS = 1e-12  # as torch.nn.functional.normalize


class BaseDistance:
    """A distance D between the rows of a query matrix and the rows of a reference matrix."""

    name: ClassVar[Distance]
    normalizes: ClassVar[bool]
    """Whether D sees unit rows (the kernel multiplies unit rows when any term's D does)."""

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Rows as the distance sees them (normalizing the reference once saves work per query)."""
        return x

    def pairwise(
        self,
        query: torch.Tensor,
        reference: torch.Tensor,
        reference_sq_norms: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Distances (B, N) between query rows (B, d) and reference rows (N, d), both already
        passed through ``prepare``; ``reference_sq_norms`` (N,) optional |r_j|^2 (euclidean).
        Clamped to the distance's range (rounding can make it slightly negative)."""
        raise NotImplementedError

    def query_scale(
        self, h: torch.Tensor, temperature: float, relative_to: torch.Tensor | None = None
    ) -> torch.Tensor:
        """c(h) (B,) of the shifted logit z = c(h) <h, row> + b(row) at ``temperature``, divided
        by ``relative_to`` (B,) when given (module docstring)."""
        raise NotImplementedError

    def row_bias(self, sq_norms: torch.Tensor, temperature: float) -> torch.Tensor | None:
        """b(row) (N,) of the shifted logit from the rows' |r|^2 (N,); None when b = 0."""
        return None

    def offset(self, sq_norms: torch.Tensor, temperature: float) -> torch.Tensor:
        """o(h) (B,) from the queries' |h|^2 (B,): -D(h, r)/T = z(h, r) - o(h)."""
        raise NotImplementedError

    def logit_bound(self, temperature: float) -> float | None:
        """A bound on |z| for every query and row, None when z is unbounded."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CosineDistance(BaseDistance):
    """D(a, b) = 1 - <a, b> / (|a| |b|), in [0, 2]."""

    name: ClassVar[Distance] = "cosine"
    normalizes: ClassVar[bool] = True

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1, eps=_NORM_EPS)

    def pairwise(
        self,
        query: torch.Tensor,
        reference: torch.Tensor,
        reference_sq_norms: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return (1.0 - query @ reference.transpose(-1, -2)).clamp(0.0, 2.0)

    def query_scale(
        self, h: torch.Tensor, temperature: float, relative_to: torch.Tensor | None = None
    ) -> torch.Tensor:
        scale = h.norm(dim=1).clamp_min(_NORM_EPS) * temperature
        return 1.0 / (scale if relative_to is None else scale * relative_to)

    def offset(self, sq_norms: torch.Tensor, temperature: float) -> torch.Tensor:
        return torch.full_like(sq_norms, 1 / temperature)

    def logit_bound(self, temperature: float) -> float | None:
        return 1.0 / temperature


class SquaredEuclideanDistance(BaseDistance):
    """D(a, b) = |a - b|^2 (squared L2, as in Frosst et al. 2019)."""

    name: ClassVar[Distance] = "euclidean"
    normalizes: ClassVar[bool] = False

    def pairwise(
        self,
        query: torch.Tensor,
        reference: torch.Tensor,
        reference_sq_norms: torch.Tensor | None = None,
    ) -> torch.Tensor:
        dot = query @ reference.transpose(-1, -2)
        if reference_sq_norms is None:
            reference_sq_norms = reference.pow(2).sum(-1)
        sq = query.pow(2).sum(-1, keepdim=True) + reference_sq_norms.unsqueeze(-2) - 2.0 * dot
        return sq.clamp(min=0.0)

    def query_scale(
        self, h: torch.Tensor, temperature: float, relative_to: torch.Tensor | None = None
    ) -> torch.Tensor:
        if relative_to is None:
            return torch.full((h.shape[0],), 2.0 / temperature, dtype=h.dtype, device=h.device)
        return 2.0 / (relative_to * temperature)

    def row_bias(self, sq_norms: torch.Tensor, temperature: float) -> torch.Tensor | None:
        return sq_norms / -temperature

    def offset(self, sq_norms: torch.Tensor, temperature: float) -> torch.Tensor:
        return sq_norms / temperature


_BY_NAME: dict[str, BaseDistance] = {
    d.name: d for d in (CosineDistance(), SquaredEuclideanDistance())
}


def check_distance(distance: str) -> Distance:
    """Return ``distance`` if it names a supported distance, else raise ``ValueError``."""
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
    return distance  # type: ignore[return-value]


def distance_of(name: str) -> BaseDistance:
    """The distance object named ``name`` (one shared instance per distance); ValueError for
    an unknown name."""
    return _BY_NAME[check_distance(name)]


def pairwise_distances(
    query: torch.Tensor,
    reference: torch.Tensor,
    distance: Distance = "cosine",
    *,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Distances (B, N) from each query row (B, d) to each reference row (N, d).

    ``chunk_rows``: the reference is converted to the query's dtype and prepared that many rows
    at a time, each chunk's (B, chunk) block written into the result, so no full-size prepared
    copy of it exists (memory O(B N + chunk_rows d)). ``prepare`` treats each row alone (cosine
    divides a row by its own norm), so every entry is D(query_i, reference_j) as one pass computes
    it, up to the rounding of the product's shape."""
    d = distance_of(distance)
    prepared = d.prepare(query)
    n = reference.shape[0]
    if chunk_rows is None or chunk_rows >= n:
        return d.pairwise(prepared, d.prepare(reference.to(prepared.dtype)))
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    out = prepared.new_empty((prepared.shape[0], n))
    for start in range(0, n, chunk_rows):
        rows = reference[start : start + chunk_rows].to(prepared.dtype)
        out[:, start : start + chunk_rows] = d.pairwise(prepared, d.prepare(rows))
    return out
