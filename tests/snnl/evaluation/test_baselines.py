"""Baseline detectors against slow float64 formulas (explicit loops) on small random data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from snnl.errors import InputError
from snnl.evaluation.baselines import KNN, MSP, Energy, Mahalanobis, default_baselines


@pytest.fixture
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    centers = rng.normal(0.0, 3.0, (3, 5))
    labels = rng.integers(0, 3, 90)
    features = centers[labels] + rng.normal(0.0, 1.0, (90, 5)) @ rng.normal(0.0, 1.0, (5, 5))
    return {
        "features": features,
        "labels": labels,
        "query": rng.normal(0.0, 3.0, (12, 5)),
        "logits": rng.normal(0.0, 4.0, (12, 3)),
    }


def test_msp_and_energy(data: dict[str, np.ndarray]) -> None:
    logits = data["logits"]
    msp = MSP().score(logits, data["query"])
    energy = Energy().score(logits, data["query"])
    energy_t = Energy(temperature=2.0).score(logits, data["query"])
    for i, row in enumerate(logits):
        exps = [math.exp(v) for v in row]
        assert msp[i] == pytest.approx(max(exps) / sum(exps), rel=1e-12)
        assert energy[i] == pytest.approx(math.log(sum(exps)), rel=1e-12)
        assert energy_t[i] == pytest.approx(
            2.0 * math.log(sum(math.exp(v / 2) for v in row)), rel=1e-12
        )


def test_energy_is_stable_for_huge_logits() -> None:
    score = Energy().score(np.array([[1e4, 0.0, -1e4]]), np.zeros((1, 2)))
    assert score[0] == pytest.approx(1e4)


def test_mahalanobis(data: dict[str, np.ndarray]) -> None:
    h, y, q = data["features"], data["labels"], data["query"]
    got = Mahalanobis().fit(h, y).score(data["logits"], q)
    means = {c: h[y == c].mean(axis=0) for c in np.unique(y)}
    cov = np.zeros((5, 5))
    for hi, yi in zip(h, y, strict=True):
        diff = (hi - means[yi])[:, None]
        cov += diff @ diff.T
    precision = np.linalg.inv(cov / len(h))
    for i, qi in enumerate(q):
        dists = [float((qi - m) @ precision @ (qi - m)) for m in means.values()]
        assert got[i] == pytest.approx(-min(dists), rel=1e-9)


def test_mahalanobis_ignores_dead_units(data: dict[str, np.ndarray]) -> None:
    h = np.hstack([data["features"], np.zeros((90, 1))])
    q = np.hstack([data["query"], np.full((12, 1), 5.0)])
    det = Mahalanobis().fit(h, data["labels"])
    with_dead = det.score(data["logits"], q)
    plain = Mahalanobis().fit(data["features"], data["labels"]).score(data["logits"], data["query"])
    np.testing.assert_allclose(with_dead, plain, rtol=1e-8)


@pytest.mark.parametrize("k", [1, 7])
def test_knn(data: dict[str, np.ndarray], k: int) -> None:
    h, q = data["features"], data["query"]
    got = KNN(k=k).fit(h, data["labels"]).score(data["logits"], q)
    ref = [r / np.linalg.norm(r) for r in h]
    for i, qi in enumerate(q):
        z = qi / np.linalg.norm(qi)
        dists = sorted(float(np.sqrt(np.sum((z - r) ** 2))) for r in ref)
        assert got[i] == pytest.approx(-dists[k - 1], abs=1e-7)


def test_knn_needs_k_reference_rows(data: dict[str, np.ndarray]) -> None:
    with pytest.raises(InputError, match="k=50"):
        KNN().fit(data["features"][:10], data["labels"][:10])


def test_bad_inputs_are_refused(data: dict[str, np.ndarray]) -> None:
    with pytest.raises(InputError, match="logits"):
        MSP().score(np.array([[np.nan, 1.0]]), data["query"])
    with pytest.raises(InputError, match="labels"):
        Mahalanobis().fit(data["features"], data["labels"][:5])
    with pytest.raises(InputError, match="features"):
        Mahalanobis().fit(data["features"], data["labels"]).score(data["logits"], np.ones(5))


def test_default_baselines_names() -> None:
    assert [d.name for d in default_baselines()] == ["msp", "energy", "mahalanobis", "knn"]


def test_in_distribution_scores_higher(data: dict[str, np.ndarray]) -> None:
    h, y = data["features"], data["labels"]
    far = h[:20] * 10.0 + 50.0
    for det in (Mahalanobis(), KNN(k=5)):
        det.fit(h, y)
        id_scores = det.score(np.zeros((20, 3)), h[:20])
        ood_scores = det.score(np.zeros((20, 3)), far)
        assert id_scores.mean() > ood_scores.mean()
