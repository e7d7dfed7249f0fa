"""SoftNeighborScorer against a slow float64 loop over every (query, reference) pair."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from snnl.scoring.scorer import SoftNeighborScorer


def _slow_distance(a: np.ndarray, b: np.ndarray, distance: str) -> float:
    if distance == "cosine":
        dot = sum(float(u) * float(v) for u, v in zip(a, b, strict=True))
        na = math.sqrt(sum(float(u) ** 2 for u in a))
        nb = math.sqrt(sum(float(v) ** 2 for v in b))
        return 1.0 - dot / (na * nb)
    return sum((float(u) - float(v)) ** 2 for u, v in zip(a, b, strict=True))


def _slow_logsumexp(values: list[float]) -> float:
    if not values:
        return -math.inf
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _slow(q, r, y, temperature, distance, predicted, num_classes, k):
    """log s, hard counts, nearest ids and the class probabilities, one pair at a time."""
    log_s, counts, nearest, probs, preds = [], [], [], [], []
    for b in range(q.shape[0]):
        d = [_slow_distance(q[b], r[j], distance) for j in range(r.shape[0])]
        logits = [-v / temperature for v in d]
        total = _slow_logsumexp(logits)
        mass = [
            _slow_logsumexp([lg for lg, lab in zip(logits, y, strict=True) if lab == c])
            for c in range(num_classes)
        ]
        c = int(np.argmax(mass)) if predicted is None else int(predicted[b])
        preds.append(c)
        log_s.append(mass[c] - total)
        order = sorted(range(len(d)), key=lambda j: d[j])
        nearest.append(order)
        counts.append(sum(1 for j in order[:k] if y[j] == c))
        probs.append([math.exp(m - total) for m in mass])
    return np.array(log_s), np.array(counts), nearest, np.array(probs), np.array(preds)


def _data(n: int = 53, b: int = 7, d: int = 5, classes: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    r = rng.normal(size=(n, d))
    y = rng.integers(0, classes, size=n)  # unsorted on purpose
    q = rng.normal(size=(b, d))
    predicted = rng.integers(0, classes, size=b)
    return q, r, y, predicted


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("temperature", [1e-4, 0.05, 3.0])
@pytest.mark.parametrize("chunk_size", [1, 3, 16, 53, 1000])
def test_matches_slow_loop_float64(distance: str, temperature: float, chunk_size: int) -> None:
    q, r, y, predicted = _data()
    k, neighbors = 10, 12
    scorer = SoftNeighborScorer(
        {"h": torch.from_numpy(r)},
        torch.from_numpy(y),
        num_classes=4,
        temperatures={"h": temperature},
        distances={"h": distance},
        chunk_size=chunk_size,
    )
    got = scorer.score(
        {"h": torch.from_numpy(q)}, torch.from_numpy(predicted), k=k, neighbors=neighbors
    )
    log_s, counts, nearest, _, _ = _slow(q, r, y, temperature, distance, predicted, 4, k)
    scale = 2.0 / temperature if distance == "cosine" else 200.0 / temperature
    np.testing.assert_allclose(got.log_score[:, 0], log_s, rtol=1e-9, atol=1e-12 * scale)
    assert np.all(np.isfinite(got.log_score))
    np.testing.assert_array_equal(got.same_class[:, 0], counts)
    assert got.neighbor_ids is not None
    np.testing.assert_array_equal(got.neighbor_ids[:, 0], [o[:neighbors] for o in nearest])
    np.testing.assert_array_equal(got.predicted, predicted)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("chunk_size", [8, 1000])
def test_tiny_temperature_does_not_underflow(distance: str, dtype: type, chunk_size: int) -> None:
    """At T = 1e-4 a naive exp(-D/T) is 0 for almost every row, and the predicted class's mass
    is far below the float32 (e^-87) and float64 (e^-745) ranges; the log score is exact."""
    q, r, y, predicted = _data(seed=1)
    q, r = q.astype(dtype), r.astype(dtype)
    scorer = SoftNeighborScorer(
        {"h": torch.from_numpy(r)},
        torch.from_numpy(y),
        num_classes=4,
        temperatures={"h": 1e-4},
        distances={"h": distance},
        chunk_size=chunk_size,
    )
    got = scorer.score({"h": torch.from_numpy(q)}, torch.from_numpy(predicted), k=5)
    log_s = _slow(q, r, y, 1e-4, distance, predicted, 4, 5)[0]
    assert (log_s < -1000).any(), "the data must contain scores far below float underflow"
    # float32 logits of magnitude ~1e4-1e6 carry absolute rounding errors of ~1e-3 to 1e-1.
    rtol = 1e-9 if dtype is np.float64 else 1e-4
    np.testing.assert_allclose(got.log_score[:, 0], log_s, rtol=rtol)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_float32_and_float16_reference(distance: str) -> None:
    q, r, y, predicted = _data(n=40, d=6, seed=2)
    for dtype in (torch.float32, torch.float16):
        stored = torch.from_numpy(r).to(dtype)
        scorer = SoftNeighborScorer(
            {"h": stored},
            torch.from_numpy(y),
            num_classes=4,
            temperatures={"h": 0.5},
            distances={"h": distance},
            chunk_size=7,
        )
        got = scorer.score({"h": torch.from_numpy(q).float()}, torch.from_numpy(predicted), k=5)
        # The slow loop sees exactly the stored (rounded) values and the float32 queries.
        rounded = stored.double().numpy()
        log_s = _slow(q.astype(np.float32), rounded, y, 0.5, distance, predicted, 4, 5)[0]
        np.testing.assert_allclose(got.log_score[:, 0], log_s, rtol=1e-4, atol=1e-4)


def test_embedding_only_prediction_uses_last_layer_probabilities() -> None:
    q, r, y, _ = _data(seed=3)
    rng = np.random.default_rng(4)
    r2, q2 = rng.normal(size=(r.shape[0], 3)), rng.normal(size=(q.shape[0], 3))
    scorer = SoftNeighborScorer(
        {"a": torch.from_numpy(r), "b": torch.from_numpy(r2)},
        torch.from_numpy(y),
        num_classes=5,  # class 4 has no reference rows: probability 0, never predicted
        temperatures={"a": 0.2, "b": 0.3},
        distances={"a": "cosine", "b": "euclidean"},
        chunk_size=10,
    )
    got = scorer.score(
        {"a": torch.from_numpy(q), "b": torch.from_numpy(q2)}, None, k=7, neighbors=3
    )
    _, counts_b, _, probs, preds = _slow(q2, r2, y, 0.3, "euclidean", None, 5, 7)
    np.testing.assert_array_equal(got.predicted, preds)
    np.testing.assert_allclose(got.class_probability, probs, rtol=1e-9, atol=1e-15)
    assert np.all(got.class_probability[:, 4] == 0.0)
    log_s_a, counts_a, nearest_a, _, _ = _slow(q, r, y, 0.2, "cosine", preds, 5, 7)
    np.testing.assert_allclose(got.log_score[:, 0], log_s_a, rtol=1e-9)
    np.testing.assert_allclose(np.exp(got.log_score[:, 1]), probs[np.arange(len(preds)), preds])
    np.testing.assert_array_equal(got.same_class, np.stack([counts_a, counts_b], 1))
    assert got.neighbor_ids is not None and got.neighbor_ids.shape == (q.shape[0], 2, 3)
    np.testing.assert_array_equal(got.neighbor_ids[:, 0], [o[:3] for o in nearest_a])


def test_no_neighbors_requested_and_k_larger_than_reference() -> None:
    q, r, y, predicted = _data(n=9, seed=5)
    scorer = SoftNeighborScorer(
        {"h": torch.from_numpy(r)},
        torch.from_numpy(y),
        num_classes=4,
        temperatures={"h": 1.0},
        distances={"h": "cosine"},
        chunk_size=4,
    )
    got = scorer.score({"h": torch.from_numpy(q)}, torch.from_numpy(predicted), k=50)
    assert got.neighbor_ids is None
    # With k >= N the hard count is the class size of the predicted class.
    np.testing.assert_array_equal(got.same_class[:, 0], [(y == c).sum() for c in predicted])
    none = scorer.score({"h": torch.from_numpy(q)}, torch.from_numpy(predicted), k=0)
    np.testing.assert_array_equal(none.same_class, 0)
    np.testing.assert_allclose(none.log_score, got.log_score)


def test_rejects_bad_construction() -> None:
    r = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="labels must lie"):
        SoftNeighborScorer(
            {"h": r},
            torch.tensor([0, 1, 2]),
            num_classes=2,
            temperatures={"h": 1.0},
            distances={"h": "cosine"},
        )
    with pytest.raises(ValueError, match="temperature"):
        SoftNeighborScorer(
            {"h": r},
            torch.tensor([0, 1, 1]),
            num_classes=2,
            temperatures={"h": 0.0},
            distances={"h": "cosine"},
        )


def _slow_class_mass(q, r, y, c, temperature, distance) -> float:
    """log mean over the reference rows of class c of exp(-D / T), with the max subtracted."""
    logits = [-_slow_distance(q, r[j], distance) / temperature for j in range(len(r)) if y[j] == c]
    return _slow_logsumexp(logits) - math.log(len(logits))


@pytest.mark.parametrize("temperature", [1e-4, 0.05, 3.0])
@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
def test_mass_terms_match_slow_loop_float64(temperature: float, chunk_size: int) -> None:
    """The batch path's mass terms (one slice of the label-sorted reference per predicted class)
    against an explicit loop, for a cosine layer with cosine and euclidean terms; the query is far
    out (x 50) for some rows so that exp(-D/T) underflows without the max subtracted."""
    q, r, y, predicted = _data(seed=6)
    q[:3] *= 50.0
    terms = [("h", "cosine", temperature), ("h", "euclidean", 2 * temperature)]
    scorer = SoftNeighborScorer(
        {"h": torch.from_numpy(r)},
        torch.from_numpy(y),
        num_classes=4,
        temperatures={"h": 0.5},
        distances={"h": "cosine"},
        mass_terms=terms,
        chunk_size=chunk_size,
    )
    got = scorer.score({"h": torch.from_numpy(q)}, torch.from_numpy(predicted), k=3)
    assert got.log_mass.shape == (len(q), 2)
    for i, (_, distance, t) in enumerate(terms):
        slow = [_slow_class_mass(q[b], r, y, predicted[b], t, distance) for b in range(len(q))]
        if distance == "euclidean":
            assert min(slow) < -800, "some masses must lie below float64's exp range"
        np.testing.assert_allclose(got.log_mass[:, i], slow, rtol=1e-9, atol=1e-9)
    plain = SoftNeighborScorer(
        {"h": torch.from_numpy(r)},
        torch.from_numpy(y),
        num_classes=4,
        temperatures={"h": 0.5},
        distances={"h": "cosine"},
    ).score({"h": torch.from_numpy(q)}, torch.from_numpy(predicted), k=3)
    assert plain.log_mass.shape == (len(q), 0)
    np.testing.assert_allclose(plain.log_score, got.log_score, rtol=1e-12)


def test_mass_term_of_an_unknown_layer_is_refused() -> None:
    with pytest.raises(ValueError, match="mass term layer"):
        SoftNeighborScorer(
            {"h": torch.zeros(3, 2)},
            torch.tensor([0, 1, 1]),
            num_classes=2,
            temperatures={"h": 1.0},
            distances={"h": "cosine"},
            mass_terms=[("g", "cosine", 1.0)],
        )


@pytest.mark.parametrize("known_prediction", [True, False])
@pytest.mark.parametrize("chunk_size", [5, 1000])
def test_euclidean_layer_with_cosine_and_euclidean_terms_matches_slow_loop(
    known_prediction: bool, chunk_size: int
) -> None:
    """One product serves a euclidean layer and mass terms of both geometries (unit rows with
    the norms put back for euclidean), at the given prediction or at the one the scorer makes."""
    q, r, y, predicted = _data(seed=7)
    terms = [("h", "cosine", 0.1), ("h", "euclidean", 0.7), ("h", "euclidean", 3.0)]
    scorer = SoftNeighborScorer(
        {"h": torch.from_numpy(r)},
        torch.from_numpy(y),
        num_classes=4,
        temperatures={"h": 3.0},
        distances={"h": "euclidean"},
        mass_terms=terms,
        chunk_size=chunk_size,
    )
    given = torch.from_numpy(predicted) if known_prediction else None
    got = scorer.score({"h": torch.from_numpy(q)}, given, k=6, neighbors=9)
    log_s, counts, nearest, probs, preds = _slow(
        q, r, y, 3.0, "euclidean", predicted if known_prediction else None, 4, 6
    )
    np.testing.assert_array_equal(got.predicted, preds)
    np.testing.assert_allclose(got.log_score[:, 0], log_s, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.class_probability, probs, rtol=1e-9, atol=1e-15)
    np.testing.assert_array_equal(got.same_class[:, 0], counts)
    assert got.neighbor_ids is not None
    np.testing.assert_array_equal(got.neighbor_ids[:, 0], [o[:9] for o in nearest])
    for i, (_, distance, t) in enumerate(terms):
        slow = [_slow_class_mass(q[b], r, y, preds[b], t, distance) for b in range(len(q))]
        np.testing.assert_allclose(got.log_mass[:, i], slow, rtol=1e-9, atol=1e-9)
