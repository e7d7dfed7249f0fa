"""The shard API: sums over row ranges, merged, finalize to the local scores."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from snnl.scoring.scorer import (
    SoftNeighborScorer,
    finalize,
    merge_shard_sums,
    predict,
    top_width,
)


def _reference(n: int = 90, classes: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.sort(rng.integers(0, classes, size=n))  # shards tile the label-sorted reference
    return {"a": rng.normal(size=(n, 6)), "b": rng.normal(size=(n, 3))}, y


def _scorer(features, y, rows: slice = slice(None), offset: int = 0) -> SoftNeighborScorer:
    return SoftNeighborScorer(
        {name: torch.from_numpy(x[rows]) for name, x in features.items()},
        torch.from_numpy(y[rows]),
        num_classes=4,
        temperatures={"a": 0.3, "b": 0.7},
        distances={"a": "cosine", "b": "euclidean"},
        mass_terms=[("a", "cosine", 0.2), ("a", "euclidean", 2.0), ("b", "cosine", 0.5)],
        chunk_size=16,
        row_offset=offset,
    )


@pytest.mark.parametrize("known_prediction", [True, False])
@pytest.mark.parametrize("cuts", [[45], [10, 11, 70]])
def test_sharded_scores_equal_local_scores(known_prediction: bool, cuts: list[int]) -> None:
    features, y = _reference()
    rng = np.random.default_rng(1)
    queries = {
        "a": torch.from_numpy(rng.normal(size=(9, 6))),
        "b": torch.from_numpy(rng.normal(size=(9, 3))),
    }
    predicted = torch.from_numpy(rng.integers(0, 4, size=9)) if known_prediction else None
    k, neighbors = 7, 12
    local = _scorer(features, y)
    expected = local.score(queries, predicted, k=k, neighbors=neighbors)
    top = top_width(k, neighbors, local.reference_size)
    bounds = [0, *cuts, len(y)]
    parts = [
        _scorer(features, y, slice(a, b), a).shard_sums(queries, predicted, top=top)
        for a, b in itertools.pairwise(bounds)
    ]
    got = finalize(merge_shard_sums(parts[::-1]), predicted, k=k, neighbors=neighbors)
    np.testing.assert_array_equal(got.predicted, expected.predicted)
    np.testing.assert_allclose(got.log_score, expected.log_score, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.log_mass, expected.log_mass, rtol=1e-12)
    np.testing.assert_allclose(got.class_probability, expected.class_probability, rtol=1e-12)
    np.testing.assert_array_equal(got.same_class, expected.same_class)
    assert got.neighbor_ids is not None and expected.neighbor_ids is not None
    np.testing.assert_array_equal(got.neighbor_ids, expected.neighbor_ids)


def test_a_shard_smaller_than_the_top_width_pads() -> None:
    features, y = _reference(n=30)
    queries = {
        "a": torch.ones(2, 6, dtype=torch.float64),
        "b": torch.ones(2, 3, dtype=torch.float64),
    }
    part = _scorer(features, y, slice(0, 5)).shard_sums(queries, None, top=8)
    assert part.top_values.shape == (2, 2, 8)
    assert torch.isinf(part.top_values[..., 5:]).all()
    assert (part.top_rows[..., 5:] == -1).all() and (part.top_labels[..., 5:] == -1).all()
    assert int(part.class_count.sum()) == 5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [1, 5, 40])
def test_one_and_two_rounds_give_identical_mass_terms(batch: int, dtype: type) -> None:
    """score picks one round or two by batch size: both must give the same bits (a sample's
    scores must not depend on its batch)."""
    features, y = _reference(n=200)
    features = {name: x.astype(dtype) for name, x in features.items()}
    rng = np.random.default_rng(2)
    queries = {
        "a": torch.from_numpy(rng.normal(size=(batch, 6)).astype(dtype)),
        "b": torch.from_numpy(rng.normal(size=(batch, 3)).astype(dtype)),
    }
    scorer = _scorer(features, y)
    one = scorer.shard_sums(queries, None, top=5)
    predicted = predict(one)
    two = scorer.shard_sums(queries, predicted, top=5, score=False).term_log_mass
    at = predicted[None, :, None].expand(two.shape[0], -1, 1)
    assert torch.equal(one.term_log_mass.gather(2, at), two.gather(2, at))
    first = scorer.shard_sums(queries, None, top=5, mass=False)
    assert torch.equal(first.class_log_mass, one.class_log_mass)
