"""The soft-neighbor mass detector against a slow float64 loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from snnl.distances import prepare
from snnl.errors import InputError
from snnl.neighbor_mass import SoftNeighborMass, log_class_mass


def slow_distance(a: np.ndarray, b: np.ndarray, distance: str) -> float:
    if distance == "cosine":
        return 1.0 - float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.sum((a - b) ** 2))


def slow_mass(
    q: np.ndarray, ref: np.ndarray, y: np.ndarray, c: int, t: float, distance: str, skip: int = -1
) -> float:
    terms = [
        math.exp(-slow_distance(q, r, distance) / t)
        for j, r in enumerate(ref)
        if y[j] == c and j != skip
    ]
    return math.log(sum(terms) / len(terms))


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    ref = rng.normal(0.0, 3.0, (3, 4))[y] + rng.normal(0.0, 1.0, (60, 4))
    query = rng.normal(0.0, 3.0, (7, 4))
    return ref, y, query


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_log_class_mass_matches_loop(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], distance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, y, query = data
    classes = np.array([0, 1, 2, 0, 1, 2, 0])
    monkeypatch.setattr("snnl.neighbor_mass._MAX_ELEMENTS", 100)  # several query chunks
    got = log_class_mass(
        prepare(torch.from_numpy(query), distance),
        prepare(torch.from_numpy(ref), distance),
        torch.from_numpy(y),
        torch.from_numpy(classes),
        0.5,
        distance,  # type: ignore[arg-type]
    )
    for i in range(len(query)):
        assert float(got[i]) == pytest.approx(
            slow_mass(query[i], ref, y, classes[i], 0.5, distance), rel=1e-10
        )
    skip = torch.tensor([0, 21, 45, 3, 22, 46, 5])
    loo = log_class_mass(
        prepare(torch.from_numpy(ref[skip.numpy()]), distance),
        prepare(torch.from_numpy(ref), distance),
        torch.from_numpy(y),
        torch.from_numpy(y[skip.numpy()]),
        0.5,
        distance,  # type: ignore[arg-type]
        skip,
    )
    for i, j in enumerate(skip.tolist()):
        assert float(loo[i]) == pytest.approx(
            slow_mass(ref[j], ref, y, y[j], 0.5, distance, skip=j), rel=1e-10
        )


def test_score_is_the_sum_of_standardized_masses(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    ref, y, query = data
    det = SoftNeighborMass(perplexity=5.0).fit({"a": ref, "b": ref[:, :2] * 3.0}, y)
    prediction = np.array([0, 1, 2, 0, 1, 2, 0])
    features = {"a": query, "b": query[:, :2] * 3.0}
    score = det.score(features, prediction)
    expected = np.zeros(len(query))
    for layer, x, r in (("a", query, ref), ("b", query[:, :2] * 3.0, ref[:, :2] * 3.0)):
        for g in ("cosine", "euclidean"):
            t = det.temperature[layer, g]
            loo = [slow_mass(r[j], r, y, y[j], t, g, skip=j) for j in range(len(r))]
            mu, sigma = np.mean(loo), np.std(loo)
            assert det.mean[layer, g] == pytest.approx(mu, rel=1e-8)
            m = np.array([slow_mass(x[i], r, y, prediction[i], t, g) for i in range(len(x))])
            expected += (m - mu) / sigma
    np.testing.assert_allclose(score, expected, rtol=1e-7)


def test_far_and_off_class_samples_score_lower(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    ref, y, _ = data
    det = SoftNeighborMass(perplexity=5.0).fit({"a": ref}, y)
    inside = det.score({"a": ref[:10]}, y[:10])
    scaled = det.score({"a": ref[:10] * 10.0}, y[:10])  # same directions, far away
    wrong_class = det.score({"a": ref[:10]}, (y[:10] + 1) % 3)
    assert scaled.max() < inside.min()
    assert wrong_class.mean() < inside.mean()


def test_bad_inputs(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    ref, y, query = data
    with pytest.raises(InputError, match="perplexity"):
        SoftNeighborMass(perplexity=1.0)
    with pytest.raises(InputError, match=r"features\.a"):
        SoftNeighborMass().fit({"a": ref[:10]}, y)
    det = SoftNeighborMass(perplexity=5.0).fit({"a": ref}, y)
    with pytest.raises(InputError, match="missing layer"):
        det.score({"b": query}, np.zeros(7, dtype=np.int64))
    with pytest.raises(InputError, match=r"features\.a"):
        det.score({"a": query[:, :3]}, np.zeros(7, dtype=np.int64))
