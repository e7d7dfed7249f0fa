"""A sample's scores must not depend on the batch it is scored in (the server merges requests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from snnl import Detector
from snnl.core.kernel import PER_CLASS_ROWS
from snnl.scoring.scorer import TWO_ROUNDS_PER_CLASS, SoftNeighborScorer

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


SCORER_FIELDS = (
    "predicted",
    "log_score",
    "same_class",
    "neighbor_ids",
    "class_probability",
    "log_mass",
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
    # the whole batch evaluates the mass terms per class slice, the parts over every class
    assert len(samples) >= PER_CLASS_ROWS * len(detector.class_names)
    whole = detector.score(samples, neighbors=3)
    for start in range(0, len(samples) - size + 1, 37):
        part = detector.score(samples[start : start + size], neighbors=3)
        for field in FIELDS:
            expected = getattr(whole, field)[start : start + size]
            np.testing.assert_array_equal(getattr(part, field), expected, err_msg=field)


@pytest.mark.parametrize("size", [1, 9, 70])
def test_embedding_only_scores_do_not_depend_on_the_batch(size: int) -> None:
    """Without logits the scorer takes one round for small batches and two for large ones
    (snnl.scoring.scorer): a sample's scores must be the same bits either way."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 600)
    centers = rng.normal(0, 1, (4, 24)).astype(np.float32)
    ref = centers[y] + rng.normal(0, 1, (600, 24)).astype(np.float32)
    queries = centers[rng.integers(0, 4, 150)] + rng.normal(0, 1.5, (150, 24)).astype(np.float32)
    scorer = SoftNeighborScorer(
        {"e": torch.from_numpy(ref)},
        torch.from_numpy(y),
        num_classes=4,
        temperatures={"e": 0.2},
        distances={"e": "cosine"},
        mass_terms=[("e", "cosine", 0.1), ("e", "euclidean", 20.0)],
        chunk_size=128,
    )
    assert len(queries) >= TWO_ROUNDS_PER_CLASS * 4  # the whole batch takes two rounds
    whole = scorer.score({"e": torch.from_numpy(queries)}, None, k=7, neighbors=3)
    for start in range(0, len(queries) - size + 1, 41):
        part = scorer.score(
            {"e": torch.from_numpy(queries[start : start + size])}, None, k=7, neighbors=3
        )
        for field in SCORER_FIELDS:
            np.testing.assert_array_equal(
                getattr(part, field), getattr(whole, field)[start : start + size], err_msg=field
            )
