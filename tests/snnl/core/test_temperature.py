"""Optimal temperature, entanglement and annealing (docs/method.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from snnl import soft_nearest_neighbor_loss
from snnl.core.temperature import (
    annealed_temperature,
    entanglement,
    optimal_temperature,
    stratified_subsample,
)


def overlapping_clusters(n: int, seed: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian clusters in 6-D whose overlap makes SNNL(T) have an interior minimum."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    centers = rng.normal(size=(3, 6))
    return centers[y] + spread * rng.normal(size=(n, 6)), y


def snnl64(x: np.ndarray, y: np.ndarray, temperature: float, distance: str) -> float:
    return float(
        soft_nearest_neighbor_loss(
            torch.tensor(x, dtype=torch.float64), torch.from_numpy(y), temperature, distance
        )
    )


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("seed", [0, 1])
def test_optimal_temperature_is_the_argmin_on_a_dense_grid(distance: str, seed: int) -> None:
    x, y = overlapping_clusters(90, seed, spread=0.8)
    t_star, value = entanglement(x, y, distance)
    grid = np.exp(np.linspace(math.log(1e-4), math.log(1e4), 801))
    values = np.array([snnl64(x, y, float(t), distance) for t in grid])
    assert 1e-4 < t_star < 1e4
    assert value <= values.min() + 1e-6
    assert value == pytest.approx(snnl64(x, y, t_star, distance), rel=1e-9)
    # The grid's best point lies next to T* (the minimum is interior and unique here).
    assert abs(math.log(grid[values.argmin()]) - math.log(t_star)) < 0.05


def test_optimal_temperature_agrees_with_entanglement_and_accepts_tensors() -> None:
    x, y = overlapping_clusters(60, 2, spread=0.6)
    t_star = optimal_temperature(torch.from_numpy(x).float(), torch.from_numpy(y))
    assert t_star == pytest.approx(entanglement(x, y)[0], rel=1e-3)


def test_clean_layer_collapses_to_the_lower_bound() -> None:
    # Perfectly separated, tight clusters: SNNL keeps falling as T -> 0.
    x, y = overlapping_clusters(60, 3, spread=1e-3)
    t_star, value = entanglement(x, y, bounds=(1e-3, 1e3))
    assert t_star == pytest.approx(1e-3, rel=1e-6)
    assert value == pytest.approx(snnl64(x, y, 1e-3, "cosine"), rel=1e-9, abs=1e-12)


def test_bounds_and_undefined_snnl_are_rejected() -> None:
    x, y = overlapping_clusters(12, 4, spread=1.0)
    with pytest.raises(ValueError):
        entanglement(x, y, bounds=(1.0, 0.1))
    with pytest.raises(ValueError, match="partner"):
        entanglement(x[:3], np.array([0, 1, 2]))


def test_subsample_is_stratified_seeded_and_bounded() -> None:
    y = np.repeat(np.arange(4), [100, 50, 30, 20])
    rows = stratified_subsample(y, 40, seed=0)
    assert len(rows) <= 44 and len(set(rows)) == len(rows)
    assert set(np.unique(y[rows])) == {0, 1, 2, 3}
    assert (rows == stratified_subsample(y, 40, seed=0)).all()
    assert (stratified_subsample(y, 1000) == np.arange(len(y))).all()


def test_annealed_temperature() -> None:
    assert annealed_temperature(0) == 1.0
    for epoch in (1, 3, 10, 99):
        assert annealed_temperature(epoch) == pytest.approx(1.0 / (1.0 + epoch) ** 0.55, rel=1e-15)
    assert annealed_temperature(10) < annealed_temperature(9)
    with pytest.raises(ValueError):
        annealed_temperature(-1)
