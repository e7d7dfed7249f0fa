"""Baseline detectors against slow float64 formulas (explicit loops) on small random data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from snnl.errors import InputError
from snnl.evaluation.baselines import (
    KNN,
    MSP,
    Energy,
    Mahalanobis,
    ViM,
    default_baselines,
    linear_head,
)


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
    head = (np.eye(3, 5), np.zeros(3))
    assert [d.name for d in default_baselines(head)][-1] == "vim"


def test_knn_normalizes_the_features(data: dict[str, np.ndarray]) -> None:
    """Sun et al.'s KNN works on unit vectors: scaling a query or the reference changes nothing."""
    h, y, q = data["features"], data["labels"], data["query"]
    scores = KNN(k=4).fit(h, y).score(data["logits"], q)
    scaled = KNN(k=4).fit(h * 7.0, y).score(data["logits"], q * 0.1)
    np.testing.assert_allclose(scores, scaled, rtol=1e-12)


def test_vim_against_its_formula(data: dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng(4)
    h, y = data["features"], data["labels"]
    weight, bias = rng.normal(size=(3, 5)), rng.normal(size=3)
    vim = ViM(weight, bias, dim=2).fit(h, y)
    origin = -np.linalg.pinv(weight) @ bias
    centered = h - origin
    eigvals, eigvecs = np.linalg.eigh(centered.T @ centered / len(h))
    principal = eigvecs[:, np.argsort(eigvals)[::-1][:2]]  # the top-2 directions
    projector = np.eye(5) - principal @ principal.T

    def residual(x: np.ndarray) -> np.ndarray:
        return np.array([np.linalg.norm(projector @ (row - origin)) for row in x])

    alpha = (h @ weight.T + bias).max(1).mean() / residual(h).mean()
    assert vim.alpha == pytest.approx(alpha, rel=1e-9)
    q, logits = data["query"], data["logits"]
    expected = [
        math.log(sum(math.exp(v) for v in row)) - alpha * r
        for row, r in zip(logits, residual(q), strict=True)
    ]
    np.testing.assert_allclose(vim.score(logits, q), expected, rtol=1e-9)


def test_vim_flags_features_off_the_principal_space() -> None:
    rng = np.random.default_rng(5)
    basis = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    h = rng.normal(size=(300, 3)) * 5.0 @ basis[:, :3].T + 0.01 * rng.normal(size=(300, 8))
    weight, bias = rng.normal(size=(4, 8)), np.zeros(4)
    vim = ViM(weight, bias).fit(h, np.zeros(300))
    assert vim.residual_basis is not None and vim.residual_basis.shape == (8, 4)  # D = d/2
    inside = h[:50]
    outside = inside + 3.0 * rng.normal(size=(50, 5)) @ basis[:, 3:].T
    assert (vim.score(inside @ weight.T, inside) > vim.score(outside @ weight.T, outside)).all()


def test_vim_refuses_bad_shapes(data: dict[str, np.ndarray]) -> None:
    with pytest.raises(InputError, match="bias"):
        ViM(np.ones((3, 5)), np.ones(4))
    with pytest.raises(InputError, match="dimensions"):
        ViM(np.ones((3, 4)), np.ones(3)).fit(data["features"], data["labels"])
    with pytest.raises(InputError, match="dim"):
        ViM(np.ones((3, 5)), np.ones(3), dim=5).fit(data["features"], data["labels"])
    with pytest.raises(RuntimeError, match="before fit"):
        ViM(np.ones((3, 5)), np.ones(3)).score(data["logits"], data["query"])


def test_linear_head_is_recovered_exactly(data: dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng(6)
    h = np.maximum(data["features"], 0.0)
    h[:, 1] = 0.0  # a dead unit: its weight is not identifiable, the logits still are
    weight, bias = rng.normal(size=(3, 5)), rng.normal(size=3)
    head = linear_head(h, h @ weight.T + bias)
    assert head is not None
    np.testing.assert_allclose(h @ head[0].T + head[1], h @ weight.T + bias, atol=1e-9)
    np.testing.assert_allclose(np.delete(head[0], 1, axis=1), np.delete(weight, 1, axis=1))
    assert linear_head(h, np.tanh(h @ weight.T)) is None  # not affine: not the penultimate layer


def test_in_distribution_scores_higher(data: dict[str, np.ndarray]) -> None:
    h, y = data["features"], data["labels"]
    far = h[:20] * 10.0 + 50.0
    for det in (Mahalanobis(), KNN(k=5)):
        det.fit(h, y)
        id_scores = det.score(np.zeros((20, 3)), h[:20])
        ood_scores = det.score(np.zeros((20, 3)), far)
        assert id_scores.mean() > ood_scores.mean()
