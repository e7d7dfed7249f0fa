"""The served-temperature rules: the perplexity rule hits its target and does not collapse."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from snnl.core.distances import Distance, pairwise_distances
from snnl.core.temperature import optimal_temperature
from snnl.errors import InputError
from snnl.scoring import temperature_rule
from snnl.scoring.temperature_rule import check_rule, choose_temperature


def _slow_mean_entropy(x: np.ndarray, distance: str, temperature: float) -> float:
    """mean_i of the entropy of softmax_j(-D_ij / T) over j != i, one pair at a time."""
    entropies = []
    for i in range(len(x)):
        logits = []
        for j in range(len(x)):
            if i == j:
                continue
            if distance == "cosine":
                cos = float(x[i] @ x[j]) / math.sqrt(float(x[i] @ x[i]) * float(x[j] @ x[j]))
                d = 1.0 - cos
            else:
                d = float(((x[i] - x[j]) ** 2).sum())
            logits.append(-d / temperature)
        top = max(logits)
        total = sum(math.exp(v - top) for v in logits)
        p = [math.exp(v - top) / total for v in logits]
        entropies.append(-sum(q * math.log(q) for q in p if q > 0))
    return sum(entropies) / len(entropies)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_perplexity_rule_hits_its_target(distance: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4))
    y = rng.integers(0, 3, size=60)
    t = choose_temperature(x, y, distance, "perplexity:8")
    assert math.exp(_slow_mean_entropy(x, distance, t)) == pytest.approx(8.0, rel=1e-3)
    assert choose_temperature(x, y, distance, "perplexity:4") < t
    # class-perplexity:F is perplexity F * N / C (here 60 rows, 3 classes).
    assert choose_temperature(x, y, distance, "class-perplexity:0.4") == t


def test_perplexity_rule_does_not_collapse_on_clean_clusters() -> None:
    """Perfectly separated classes: argmin SNNL runs to the grid's lower edge, where the soft
    neighborhood is about one point (a 1-NN vote); the perplexity rule keeps P points in it."""
    rng = np.random.default_rng(1)
    centers = np.eye(3) * 10
    y = np.repeat(np.arange(3), 40)
    x = centers[y] + rng.normal(scale=1.5, size=(120, 3))
    t_star = optimal_temperature(x, y, "cosine")
    assert t_star <= 1.01e-4
    assert math.exp(_slow_mean_entropy(x, "cosine", t_star)) < 1.5
    t = choose_temperature(x, y, "cosine", "perplexity:10")
    assert math.exp(_slow_mean_entropy(x, "cosine", t)) == pytest.approx(10.0, rel=1e-3)
    # The default: twice the mean class size (2 * 120 / 3 = 80 points), past the class cluster.
    t_default = choose_temperature(x, y, "cosine")
    assert math.exp(_slow_mean_entropy(x, "cosine", t_default)) == pytest.approx(80.0, rel=1e-3)
    assert choose_temperature(x, y, "cosine", "min-snnl:0.05") == 0.05
    assert choose_temperature(x, y, "cosine", "0.3") == 0.3


def test_perplexity_rule_needs_three_rows() -> None:
    with pytest.raises(InputError, match="at least 3 reference rows"):
        choose_temperature(np.eye(2), np.array([0, 1]), "cosine")


def test_rule_specs_are_checked() -> None:
    good = (
        "perplexity:50",
        "class-perplexity",
        "class-perplexity:0.5",
        "min-snnl",
        "min-snnl:0.1",
        "2",
    )
    for rule in good:
        assert check_rule(rule) == rule
    for bad in (
        "perplexity",
        "perplexity:1",
        "class-perplexity:0",
        "min-snnl:0",
        "-1",
        "hot",
        "nan",
    ):
        with pytest.raises(InputError, match="temperature rule"):
            check_rule(bad)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_chunked_distances_equal_one_pass(distance: Distance) -> None:
    """The reference prepared and compared a few rows at a time (float32 rows converted to the
    query's float64 chunk by chunk) gives the distances of one pass over a float64 copy."""
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(50, 6)).astype(np.float32))
    query = x[[0, 7, 31]].to(torch.float64)
    whole = pairwise_distances(query, x.to(torch.float64), distance)
    for chunk_rows in (1, 7, 16, 49):
        chunked = pairwise_distances(query, x, distance, chunk_rows=chunk_rows)
        assert chunked.dtype == torch.float64
        torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_perplexity_rule_over_reference_chunks_chooses_the_same_temperature(
    distance: Distance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forcing several chunks (7 rows each, 200 rows) leaves the chosen temperature unchanged,
    and float32 features give the temperature of their float64 copy."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    y = rng.integers(0, 4, size=200)
    expected = choose_temperature(x.astype(np.float64), y, distance, "perplexity:20")
    monkeypatch.setattr(temperature_rule, "_CHUNK_ROWS", 7)
    got = choose_temperature(x, y, distance, "perplexity:20")
    assert got == pytest.approx(expected, rel=1e-9)
