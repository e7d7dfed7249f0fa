"""The batch SNNL and masked logsumexp against slow float64 loops of the formulas (SPEC §2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from snnl import soft_nearest_neighbor_loss
from snnl.core.distances import pairwise_distances
from snnl.core.functional import masked_logsumexp, per_row_snnl, per_row_snnl_from_distances

AGARAP_FEATURES = [
    [1.0999, -0.9438, 0.7996, -0.4247],
    [1.2150, -0.2953, 0.0417, -1.2913],
    [1.3218, 0.4214, -0.1541, 0.0961],
    [-0.7253, 1.1685, -0.1070, 1.3683],
]
AGARAP_COSINE = [
    [0, 0.28502, 0.62687, 1.7732],
    [0.28502, 0, 0.46293, 1.8581],
    [0.62687, 0.46293, 0, 1.1171],
    [1.7732, 1.8581, 1.1171, 0],
]


def slow_distance(a: list[float], b: list[float], distance: str) -> float:
    """1 - cos(a, b) or |a - b|^2, one pair at a time."""
    if distance == "euclidean":
        return sum((ai - bi) ** 2 for ai, bi in zip(a, b, strict=True))
    dot = sum(ai * bi for ai, bi in zip(a, b, strict=True))
    norm_a = math.sqrt(sum(ai * ai for ai in a))
    norm_b = math.sqrt(sum(bi * bi for bi in b))
    return 1.0 - dot / (norm_a * norm_b)


def slow_logsumexp(values: list[float]) -> float:
    """log(sum(exp(v))) with the maximum taken out; -inf for an empty list."""
    if not values:
        return -math.inf
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def slow_snnl(x: np.ndarray, y: np.ndarray, temperature: float, distance: str, eps: float = 0.0):
    """SPEC §2 term by term: l_i = lse_{k!=i}(-D_ik/T) - lse_{j!=i, y_j=y_i}(-D_ij/T), or with
    eps the bounded -log(eps + p_i); the mean over rows with a partner (None if there is none)."""
    rows = [list(map(float, r)) for r in np.asarray(x, dtype=np.float64).reshape(len(x), -1)]
    terms = []
    for i in range(len(rows)):
        others = [k for k in range(len(rows)) if k != i]
        partners = [j for j in others if y[j] == y[i]]
        if not partners:
            continue
        logit = {k: -slow_distance(rows[i], rows[k], distance) / temperature for k in others}
        term = slow_logsumexp([logit[k] for k in others]) - slow_logsumexp(
            [logit[j] for j in partners]
        )
        if eps > 0:
            term = -math.log(eps + math.exp(-term))
        terms.append(term)
    return sum(terms) / len(terms) if terms else None


def random_batch(n: int, d: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, classes, size=n)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("temperature", [0.05, 0.3, 1.0, 10.0])
def test_matches_slow_loop(distance: str, temperature: float) -> None:
    x, y = random_batch(24, 5, 4, seed=int(temperature * 100))
    y[0] = 9  # row 0 has no same-class partner: it must be left out
    expected = slow_snnl(x, y, temperature, distance)
    got = soft_nearest_neighbor_loss(
        torch.from_numpy(x), torch.from_numpy(y), temperature, distance
    )
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_float32_close_to_float64_loop(distance: str) -> None:
    x, y = random_batch(16, 3, 3, seed=1)
    expected = slow_snnl(x, y, 0.5, distance)
    got = soft_nearest_neighbor_loss(
        torch.tensor(x, dtype=torch.float32), torch.from_numpy(y), 0.5, distance
    )
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_per_row_terms_and_mask() -> None:
    x, y = random_batch(10, 4, 3, seed=2)
    y[3] = 7
    terms, has_partner = per_row_snnl(torch.from_numpy(x), torch.from_numpy(y), 0.7, "cosine")
    assert has_partner.tolist() == [i != 3 for i in range(10)]
    assert float(terms[3]) == 0.0
    for i in range(10):
        if i == 3:
            continue
        others = [k for k in range(10) if k != i]
        logit = {k: -slow_distance(list(x[i]), list(x[k]), "cosine") / 0.7 for k in others}
        expected = slow_logsumexp([logit[k] for k in others]) - slow_logsumexp(
            [logit[j] for j in others if y[j] == y[i]]
        )
        assert float(terms[i]) == pytest.approx(expected, rel=1e-10)


def test_flattens_trailing_dimensions() -> None:
    x, y = random_batch(12, 6, 3, seed=3)
    flat = soft_nearest_neighbor_loss(torch.from_numpy(x), torch.from_numpy(y))
    shaped = soft_nearest_neighbor_loss(torch.from_numpy(x.reshape(12, 2, 3)), torch.from_numpy(y))
    assert float(shaped) == pytest.approx(float(flat), rel=1e-12)


def test_agarap_cosine_distances() -> None:
    x = torch.tensor(AGARAP_FEATURES, dtype=torch.float64)
    got = pairwise_distances(x, x, "cosine")
    np.testing.assert_allclose(got.numpy(), np.array(AGARAP_COSINE), atol=1e-4)


@pytest.mark.parametrize("temperature", [0.1, 1.0, 100.0])
def test_agarap_snnl_matches_slow_loop(temperature: float) -> None:
    x = np.array(AGARAP_FEATURES)
    y = np.array([0, 0, 1, 1])
    got = soft_nearest_neighbor_loss(torch.from_numpy(x), torch.from_numpy(y), temperature)
    assert float(got) == pytest.approx(slow_snnl(x, y, temperature, "cosine"), rel=1e-10)


def test_perfect_clusters_go_to_zero_and_mixed_to_log_ratio() -> None:
    # Two tight, far-apart clusters: p_i -> 1, SNNL -> 0 as T shrinks.
    x = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0], [-1.0, 0.01]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    assert float(soft_nearest_neighbor_loss(x, y, 0.01)) < 1e-12
    # T -> inf: every neighbor is equally likely, p_i = 1/3 (one partner among three others).
    assert float(soft_nearest_neighbor_loss(x, y, 1e8)) == pytest.approx(math.log(3), rel=1e-6)


STABILITY_TEMPERATURES = [1e-4, 1e-2, 1.0, 1e2, 1e4]


def stability_batches() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(5)
    mixed_y = rng.integers(0, 3, size=12)
    mixed_y[0] = 7  # no partner
    return {
        "random": (rng.normal(size=(16, 8)), rng.integers(0, 4, size=16)),
        "one_class": (rng.normal(size=(8, 8)), np.zeros(8, dtype=np.int64)),
        "row_without_partner": (rng.normal(size=(12, 8)), mixed_y),
        "two_same": (rng.normal(size=(2, 8)), np.array([1, 1])),
        "two_different": (rng.normal(size=(2, 8)), np.array([0, 1])),
        "duplicates": (np.repeat(rng.normal(size=(3, 8)), 2, axis=0), np.array([0, 1, 1, 0, 2, 2])),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("batch", list(stability_batches()))
def test_value_and_gradients_finite(dtype: torch.dtype, distance: str, batch: str) -> None:
    x_np, y_np = stability_batches()[batch]
    # Scale so that the largest squared euclidean distance is about 1e4.
    d2 = ((x_np[:, None, :] - x_np[None, :, :]) ** 2).sum(-1).max()
    for scale in (1.0, math.sqrt(1e4 / d2)):
        for temperature in STABILITY_TEMPERATURES:
            x = torch.tensor(x_np * scale, dtype=dtype, requires_grad=True)
            t = torch.tensor(temperature, dtype=dtype, requires_grad=True)
            loss = soft_nearest_neighbor_loss(x, torch.from_numpy(y_np), t, distance)
            loss.backward()
            where = f"{batch} {distance} {dtype} T={temperature} scale={scale:.3g}"
            value = float(loss.detach())
            assert math.isfinite(value) and value >= -1e-6, where
            assert x.grad is not None and torch.isfinite(x.grad).all(), where
            assert t.grad is not None and torch.isfinite(t.grad), where


def test_distances_up_to_1e4_match_slow_loop() -> None:
    x, y = random_batch(10, 3, 2, seed=6)
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1).max()
    x = x * math.sqrt(1e4 / d2)
    for temperature in (1e2, 1e4):
        got = soft_nearest_neighbor_loss(
            torch.from_numpy(x), torch.from_numpy(y), temperature, "euclidean"
        )
        assert float(got) == pytest.approx(slow_snnl(x, y, temperature, "euclidean"), rel=1e-9)


def test_degenerate_batches_values() -> None:
    batches = stability_batches()
    x, y = batches["one_class"]
    assert float(
        soft_nearest_neighbor_loss(torch.from_numpy(x), torch.from_numpy(y))
    ) == pytest.approx(0.0, abs=1e-12)
    x, y = batches["two_same"]
    assert float(
        soft_nearest_neighbor_loss(torch.from_numpy(x), torch.from_numpy(y))
    ) == pytest.approx(0.0, abs=1e-12)
    x, y = batches["two_different"]
    xt = torch.from_numpy(x).requires_grad_(True)
    loss = soft_nearest_neighbor_loss(xt, torch.from_numpy(y))
    loss.backward()
    assert (
        float(loss.detach()) == 0.0
    )  # no row has a partner: no defined SNNL, zero and no gradient
    assert xt.grad is not None and float(xt.grad.abs().sum()) == 0.0


def test_temperature_gradient_matches_finite_difference() -> None:
    x, y = random_batch(14, 4, 3, seed=7)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    t = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    soft_nearest_neighbor_loss(xt, yt, t).backward()
    h = 1e-6
    numeric = (slow_snnl(x, y, 0.4 + h, "cosine") - slow_snnl(x, y, 0.4 - h, "cosine")) / (2 * h)
    assert float(t.grad) == pytest.approx(numeric, rel=1e-5)


def test_eps_bound_caps_each_row() -> None:
    # Same-class points are far apart, other-class points close: p_i underflows at small T.
    x = np.array([[1.0, 0.0], [1.0, 0.05], [-1.0, 0.0], [-1.0, 0.05]])
    y = np.array([0, 1, 0, 1])
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    exact = float(soft_nearest_neighbor_loss(xt, yt, 1e-3))
    bounded = float(soft_nearest_neighbor_loss(xt, yt, 1e-3, eps=1e-5))
    assert exact > 1e3  # unbounded in log space
    assert bounded <= -math.log(1e-5)
    assert bounded == pytest.approx(slow_snnl(x, y, 1e-3, "cosine", eps=1e-5), rel=1e-10)
    # At a moderate temperature the bound changes little and still matches the loop.
    assert float(soft_nearest_neighbor_loss(xt, yt, 1.0, eps=1e-5)) == pytest.approx(
        slow_snnl(x, y, 1.0, "cosine", eps=1e-5), rel=1e-10
    )


def test_eps_bound_gradient_finite_and_negative_eps_rejected() -> None:
    x, y = random_batch(12, 4, 3, seed=8)
    for temperature in STABILITY_TEMPERATURES:
        xt = torch.from_numpy(x).requires_grad_(True)
        loss = soft_nearest_neighbor_loss(xt, torch.from_numpy(y), temperature, eps=1e-5)
        loss.backward()
        assert float(loss.detach()) <= -math.log(1e-5)
        assert math.isfinite(float(loss.detach()))
        assert xt.grad is not None and torch.isfinite(xt.grad).all()
    with pytest.raises(ValueError, match="eps"):
        soft_nearest_neighbor_loss(torch.from_numpy(x), torch.from_numpy(y), eps=-1.0)


def test_rejects_bad_shapes_and_distance() -> None:
    x, y = random_batch(6, 3, 2, seed=9)
    for bad in (0.0, -1.0, float("nan"), float("inf"), torch.tensor([0.5, 1.0])):
        with pytest.raises(ValueError, match="temperature"):
            soft_nearest_neighbor_loss(torch.from_numpy(x), torch.from_numpy(y), bad)
    with pytest.raises(ValueError):
        soft_nearest_neighbor_loss(torch.from_numpy(x), torch.from_numpy(y[:5]))
    with pytest.raises(ValueError, match="distance"):
        soft_nearest_neighbor_loss(torch.from_numpy(x), torch.from_numpy(y), distance="manhattan")  # type: ignore[arg-type]


def slow_masked_logsumexp(values: np.ndarray, mask: np.ndarray) -> list[float]:
    return [
        slow_logsumexp([float(v) for v, m in zip(row, mrow, strict=True) if m])
        for row, mrow in zip(values, mask, strict=True)
    ]


@pytest.mark.parametrize("scale", [1.0, 1e3, 1e6])
def test_masked_logsumexp_matches_slow_loop(scale: float) -> None:
    rng = np.random.default_rng(int(scale))
    values = rng.normal(size=(7, 9)) * scale
    mask = rng.random(size=(7, 9)) < 0.5
    mask[2] = False  # an empty row: -inf
    mask[3] = True
    got = masked_logsumexp(torch.from_numpy(values), torch.from_numpy(mask))
    expected = slow_masked_logsumexp(values, mask)
    assert math.isinf(float(got[2])) and float(got[2]) < 0
    for i in range(7):
        if i != 2:
            assert float(got[i]) == pytest.approx(expected[i], rel=1e-12)


def test_masked_logsumexp_other_dim_and_gradient() -> None:
    rng = np.random.default_rng(10)
    values = torch.tensor(rng.normal(size=(5, 6)) * 1e4, requires_grad=True)
    mask = torch.from_numpy(rng.random(size=(5, 6)) < 0.6)
    mask[:, 1] = False  # an empty column
    got = masked_logsumexp(values, mask, dim=0)
    expected = slow_masked_logsumexp(values.detach().numpy().T, mask.numpy().T)
    for j in range(6):
        if j == 1:
            assert float(got[j].detach()) == float("-inf")
        else:
            assert float(got[j].detach()) == pytest.approx(expected[j], rel=1e-12)
    got[torch.isfinite(got)].sum().backward()
    assert values.grad is not None and torch.isfinite(values.grad).all()
    assert float(values.grad[~mask].abs().sum()) == 0.0
    # Softmax weights: the gradient of each finite column sums to one.
    col_sums = values.grad.sum(0)
    for j in range(6):
        assert float(col_sums[j]) == pytest.approx(0.0 if j == 1 else 1.0, abs=1e-12)


def test_masked_logsumexp_with_infinite_entries() -> None:
    values = torch.tensor(
        [[0.0, float("-inf"), 1.0], [float("-inf"), float("-inf"), 2.0]], dtype=torch.float64
    )
    mask = torch.tensor([[True, True, True], [True, True, False]])
    got = masked_logsumexp(values, mask)
    assert float(got[0]) == pytest.approx(slow_logsumexp([0.0, 1.0]), rel=1e-12)
    assert float(got[1]) == float("-inf")


def test_per_row_terms_from_a_few_rows_equal_the_square_matrix() -> None:
    """Rows passed a few at a time (distances (R, B)) give the terms of the whole (B, B)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(11, 4, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 0, 1, 2, 2, 3])  # class 3 has no partner
    d = pairwise_distances(x, x, "euclidean")
    terms, partner = per_row_snnl_from_distances(d, y, 0.5)
    for rows in (torch.arange(0, 4), torch.arange(4, 11), torch.tensor([10, 2])):
        part, has = per_row_snnl_from_distances(d[rows], y, 0.5, rows=rows)
        torch.testing.assert_close(part, terms[rows])
        assert torch.equal(has, partner[rows])
    assert not partner[10]
