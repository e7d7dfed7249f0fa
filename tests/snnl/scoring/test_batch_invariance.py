"""A sample's scores must not depend on the batch it is scored in (the server merges requests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from snnl import Detector

MODELS = Path(__file__).resolve().parents[3] / "models"
FIELDS = (
    "prediction",
    "confidence",
    "nonconformity",
    "p_value",
    "outlier",
    "soft_neighbor_score",
    "same_class_neighbors",
    "layer_p_value",
    "neighbor_ids",
)


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector.load(MODELS, "digits-mlp", device="cpu")


@pytest.fixture(scope="module")
def samples() -> np.ndarray:
    """In-distribution digits, scaled digits (far from the data) and uniform noise."""
    x = load_digits().data.astype(np.float32)
    noise = np.random.default_rng(0).uniform(0, 16, (60, 64)).astype(np.float32)
    return np.concatenate([x[:120], 3.0 * x[120:180], noise])


@pytest.mark.parametrize("size", [1, 3, 15, 16, 40])
def test_scores_of_a_slice_equal_the_scores_inside_the_whole_batch(
    detector: Detector, samples: np.ndarray, size: int
) -> None:
    whole = detector.score(samples, neighbors=3)
    for start in range(0, len(samples) - size + 1, 37):
        part = detector.score(samples[start : start + size], neighbors=3)
        for field in FIELDS:
            expected = getattr(whole, field)[start : start + size]
            np.testing.assert_array_equal(getattr(part, field), expected, err_msg=field)
