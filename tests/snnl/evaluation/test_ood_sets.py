"""Synthetic OOD sets: noise range, each transform's formula, bad specs."""

from __future__ import annotations

import numpy as np
import pytest

from snnl.errors import InputError
from snnl.evaluation.ood_sets import transform, uniform_noise


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).uniform(-2.0, 6.0, (20, 3, 4)).astype(np.float32)


def test_uniform_noise(x: np.ndarray) -> None:
    noise = uniform_noise(x, 50, seed=3)
    assert noise.shape == (50, 3, 4) and noise.dtype == np.float32
    assert noise.min() >= x.min() and noise.max() <= x.max()
    np.testing.assert_array_equal(noise, uniform_noise(x, 50, seed=3))
    with pytest.raises(InputError, match="--noise"):
        uniform_noise(x, 0)


def test_transforms(x: np.ndarray) -> None:
    lo, hi = float(x.min()), float(x.max())
    np.testing.assert_allclose(transform(x, "invert"), lo + hi - x, rtol=1e-6)
    np.testing.assert_allclose(transform(x, "scale=4"), 4 * x, rtol=1e-6)
    np.testing.assert_allclose(transform(x, "shift=0.5"), x + 0.5 * (hi - lo), rtol=1e-6)
    permuted = transform(x, "permute", seed=1)
    assert permuted.shape == x.shape
    for a, b in zip(permuted.reshape(20, -1), x.reshape(20, -1), strict=True):
        np.testing.assert_array_equal(np.sort(a), np.sort(b))
    assert not np.array_equal(permuted, x)


@pytest.mark.parametrize("spec", ["rotate", "scale", "scale=x", "invert=2", "shift="])
def test_bad_spec(x: np.ndarray, spec: str) -> None:
    with pytest.raises(InputError, match="--transform"):
        transform(x, spec)
