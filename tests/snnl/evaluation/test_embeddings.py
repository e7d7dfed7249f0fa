"""Embedding evaluation against slow float64 loops (SNNL at T, leave-one-out k-NN accuracy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from snnl.core.temperature import entanglement
from snnl.errors import InputError
from snnl.evaluation.embeddings import evaluate_embeddings, snnl_and_knn_accuracy


def slow_distance(a: np.ndarray, b: np.ndarray, distance: str) -> float:
    if distance == "cosine":
        return 1.0 - float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.sum((a - b) ** 2))


def slow_snnl(h: np.ndarray, y: np.ndarray, t: float, distance: str) -> float:
    terms = []
    for i in range(len(h)):
        same = [j for j in range(len(h)) if j != i and y[j] == y[i]]
        if not same:
            continue
        num = sum(math.exp(-slow_distance(h[i], h[j], distance) / t) for j in same)
        den = sum(
            math.exp(-slow_distance(h[i], h[j], distance) / t) for j in range(len(h)) if j != i
        )
        terms.append(-math.log(num / den))
    return sum(terms) / len(terms)


def slow_knn_accuracy(h: np.ndarray, y: np.ndarray, k: int, distance: str) -> float:
    correct = 0
    for i in range(len(h)):
        others = sorted((slow_distance(h[i], h[j], distance), j) for j in range(len(h)) if j != i)
        votes: dict[int, int] = {}
        for _, j in others[:k]:
            votes[int(y[j])] = votes.get(int(y[j]), 0) + 1
        best = max(votes.values())
        correct += int(min(c for c, v in votes.items() if v == best) == y[i])
    return correct / len(h)


def blobs(seed: int, n: int = 40, d: int = 6, spread: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    h = rng.normal(0.0, 2.0, (3, d))[y] + rng.normal(0.0, spread, (n, d))
    return h, y


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("k", [1, 4])
def test_snnl_and_knn_match_slow_loops(distance: str, k: int) -> None:
    h, y = blobs(0)
    y[0] = 7  # a singleton class: left out of the SNNL mean, always wrong for k-NN
    snnl, acc = snnl_and_knn_accuracy(h, y, 0.7, distance, k)  # type: ignore[arg-type]
    assert snnl == pytest.approx(slow_snnl(h, y, 0.7, distance), rel=1e-10)
    assert acc == pytest.approx(slow_knn_accuracy(h, y, k, distance))


def test_row_chunks_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    h, y = blobs(1, n=50)
    whole = snnl_and_knn_accuracy(h, y, 0.3, "cosine", 5)
    monkeypatch.setattr("snnl.evaluation.embeddings._ROW_CHUNK", 7)
    assert snnl_and_knn_accuracy(h, y, 0.3, "cosine", 5) == pytest.approx(whole, rel=1e-12)


def test_evaluate_embeddings_layers() -> None:
    h1, y = blobs(2, spread=0.3)
    h2 = np.random.default_rng(3).normal(size=(40, 4))  # no class structure
    result = evaluate_embeddings(
        {"fc1": h1.astype(np.float32), "fc2": h2},
        y,
        temperatures={"fc1": 0.1},
        distances={"fc2": "euclidean"},
        k=3,
    )
    assert result.size == 40
    assert result.accuracy is None and result.outlier_rate is None
    fc1, fc2 = result.layers
    assert (fc1.name, fc1.distance, fc1.temperature) == ("fc1", "cosine", 0.1)
    assert fc1.snnl == pytest.approx(slow_snnl(h1, y, 0.1, "cosine"), rel=1e-6)
    assert (fc2.distance, fc2.temperature, fc2.snnl) == ("euclidean", None, None)
    t_star, ent = entanglement(h1, y, "cosine")
    assert fc1.optimal_temperature == pytest.approx(t_star)
    assert fc1.entanglement == pytest.approx(ent)
    assert fc1.entanglement == pytest.approx(slow_snnl(h1, y, t_star, "cosine"), rel=1e-6)
    assert fc1.knn_accuracy == pytest.approx(slow_knn_accuracy(h1, y, 3, "cosine"))
    assert fc1.knn_accuracy > fc2.knn_accuracy
    assert fc1.entanglement < fc2.entanglement
    as_dict = result.to_dict()
    assert as_dict["layers"][0]["knn_accuracy"] == fc1.knn_accuracy  # type: ignore[index]


@pytest.mark.parametrize(
    ("embeddings", "labels", "field"),
    [
        ({}, np.zeros(3, dtype=np.int64), "embeddings"),
        ({"a": np.ones((3, 2))}, np.zeros(4, dtype=np.int64), "labels"),
        ({"a": np.ones((3, 2))}, np.zeros(3), "labels"),
        ({"a": np.ones((3, 2))}, np.array([0, 1, 2]), "labels"),
        ({"a": np.full((3, 2), np.nan)}, np.zeros(3, dtype=np.int64), "embeddings.a"),
        ({"a": np.ones((3, 2)), "b": np.ones((4, 2))}, np.zeros(3, dtype=np.int64), "embeddings.b"),
    ],
)
def test_bad_inputs(embeddings: dict[str, np.ndarray], labels: np.ndarray, field: str) -> None:
    with pytest.raises(InputError, match=field):
        evaluate_embeddings(embeddings, labels)


def test_bad_temperature() -> None:
    with pytest.raises(InputError, match=r"temperatures\.a"):
        evaluate_embeddings(
            {"a": np.ones((3, 2))}, np.zeros(3, dtype=np.int64), temperatures={"a": 0.0}
        )
