"""Temperatures: the optimal temperature search, entanglement, and the annealing schedule.

T* = argmin_T SNNL(T) over a labeled set, searched on log T; the entanglement of a
layer is SNNL(T*). On perfectly clustered features SNNL decreases monotonically as T -> 0, so
T* sits at the lower bound (docs/method.md): that is the honest answer for entanglement, but not a
temperature to serve: export applies a guarded rule (snnl.scoring.temperature_rule).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from snnl.core.distances import Distance, check_distance, pairwise_distances
from snnl.core.functional import per_row_snnl_from_distances

# The temperature range of the whole package: the T* search, the served-temperature rules and a
# learned training temperature all stay in [1e-4, 1e4], where exp(-D / T) is stable in log space.
TEMPERATURE_BOUNDS: tuple[float, float] = (1e-4, 1e4)
_GRID_POINTS = 33


def annealed_temperature(epoch: int) -> float:
    """The annealing schedule of Frosst et al.: T = 1 / (1 + epoch)^0.55."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return 1.0 / (1.0 + epoch) ** 0.55


def stratified_subsample(y: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of about ``max_points`` rows (all rows if there are no more), each class
    kept in proportion with at least 2 rows (so a few more than ``max_points`` is possible)."""
    n = len(y)
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        take = max(2, round(len(rows) * max_points / n))
        keep.append(rng.choice(rows, size=min(take, len(rows)), replace=False))
    return np.sort(np.concatenate(keep))


class _SnnlCurve:
    """SNNL(T) on a fixed set: the distance matrix is computed once, in float64."""

    def __init__(
        self,
        x: torch.Tensor | np.ndarray,
        y: torch.Tensor | np.ndarray,
        distance: Distance,
        max_points: int,
        seed: int,
    ) -> None:
        check_distance(distance)
        x_np = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
        y_np = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
        if x_np.ndim < 2 or y_np.ndim != 1 or len(x_np) != len(y_np):
            raise ValueError(f"expected x (N, ...) and y (N,), got {x_np.shape} and {y_np.shape}")
        rows = stratified_subsample(y_np, max_points, seed)
        h = torch.from_numpy(x_np[rows].reshape(len(rows), -1).astype(np.float64))
        self.labels = torch.from_numpy(y_np[rows].astype(np.int64))
        self.distances = pairwise_distances(h, h, distance)
        _, has_partner = per_row_snnl_from_distances(self.distances, self.labels, 1.0)
        if not bool(has_partner.any()):
            raise ValueError("SNNL is undefined: no point has a same-class partner")
        self.has_partner = has_partner

    def __call__(self, temperature: float) -> float:
        terms, _ = per_row_snnl_from_distances(self.distances, self.labels, temperature)
        return float(terms[self.has_partner].mean())


def entanglement(
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    distance: Distance = "cosine",
    *,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    max_points: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """(T*, SNNL(T*)) for features ``x`` (N, ...) with labels ``y`` (N,).

    A grid of 33 points on log T over ``bounds`` brackets the minimum, then a bounded scalar
    search refines it. At most ``max_points`` rows (stratified, seeded) are used.
    """
    low, high = bounds
    if not 0 < low < high:
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}")
    curve = _SnnlCurve(x, y, distance, max_points, seed)
    grid = np.linspace(math.log(low), math.log(high), _GRID_POINTS)
    values = np.array([curve(math.exp(g)) for g in grid])
    best = int(np.argmin(values))
    log_t, value = float(grid[best]), float(values[best])
    if 0 < best < len(grid) - 1:
        refined = minimize_scalar(
            lambda g: curve(math.exp(g)),
            bounds=(grid[best - 1], grid[best + 1]),
            method="bounded",
            options={"xatol": 1e-4},
        )
        if refined.fun < value:
            log_t, value = float(refined.x), float(refined.fun)
    return math.exp(log_t), value


def optimal_temperature(
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    distance: Distance = "cosine",
    *,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    max_points: int = 2000,
    seed: int = 0,
) -> float:
    """T* = argmin_T SNNL(T) (see ``entanglement``)."""
    return entanglement(x, y, distance, bounds=bounds, max_points=max_points, seed=seed)[0]
