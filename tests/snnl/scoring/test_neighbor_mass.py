"""The neighbor-mass fit (temperatures, leave-one-out mean/std) and a(x) against float64 loops."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from snnl.core import class_mass
from snnl.core.class_mass import BLOCK_CHUNKS, class_mean_log_mass
from snnl.core.distances import distance_of
from snnl.core.kernel import Term
from snnl.core.temperature import stratified_subsample
from snnl.errors import InputError
from snnl.scoring.neighbor_mass import fit_neighbor_mass
from snnl.scoring.nonconformity import MassTerm


def slow_distance(a: np.ndarray, b: np.ndarray, distance: str) -> float:
    if distance == "cosine":
        return 1.0 - float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.sum((a - b) ** 2))


def slow_mass(
    q: np.ndarray, ref: np.ndarray, y: np.ndarray, c: int, t: float, distance: str, skip: int = -1
) -> float:
    logits = [
        -slow_distance(q, r, distance) / t for j, r in enumerate(ref) if y[j] == c and j != skip
    ]
    top = max(logits)
    return top + math.log(sum(math.exp(v - top) for v in logits) / len(logits))


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    ref = rng.normal(0.0, 3.0, (3, 4))[y] + rng.normal(0.0, 1.0, (60, 4))
    query = rng.normal(0.0, 3.0, (7, 4))
    return ref, y, query


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("chunk_size", [1, 7, 100])
@pytest.mark.parametrize("block_chunks", [1, 2, BLOCK_CHUNKS])
def test_leave_one_out_class_mass_matches_loop(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
    distance: str,
    chunk_size: int,
    block_chunks: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Also with the rows taken in several blocks (blocks holding one class, or none of a
    query's class)."""
    monkeypatch.setattr(class_mass, "BLOCK_CHUNKS", block_chunks)
    ref, y, _ = data  # y is sorted: class c is rows [20 c, 20 c + 20)
    skip = torch.tensor([0, 21, 45, 3, 22, 59, 19])
    got = class_mean_log_mass(
        torch.from_numpy(ref),
        torch.from_numpy(y),
        3,
        Term(distance_of(distance), 0.5),
        torch.from_numpy(ref[skip.numpy()]),
        torch.from_numpy(y[skip.numpy()]),
        chunk_size,
        exclude=skip,
    )
    for i, j in enumerate(skip.tolist()):
        assert float(got[i]) == pytest.approx(
            slow_mass(ref[j], ref, y, y[j], 0.5, distance, skip=j), rel=1e-10
        )


def test_fit_and_nonconformity_match_loops(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    ref, y, query = data
    shuffle = np.random.default_rng(1).permutation(len(y))  # the fit sorts rows by label itself
    features = {"a": ref, "b": ref[:, :2] * 3.0}
    spec = fit_neighbor_mass(
        {k: v[shuffle] for k, v in features.items()}, y[shuffle], perplexity=5.0
    )
    assert spec.kind == "neighbor-mass" and spec.perplexity == 5.0
    assert [(t.layer, t.distance) for t in spec.terms] == [
        ("a", "cosine"),
        ("a", "euclidean"),
        ("b", "cosine"),
        ("b", "euclidean"),
    ]
    prediction = np.array([0, 1, 2, 0, 1, 2, 0])
    log_mass = np.zeros((len(query), len(spec.terms)))
    for k, term in enumerate(spec.terms):
        r = features[term.layer]
        x = query if term.layer == "a" else query[:, :2] * 3.0
        t, g = term.temperature, term.distance
        loo = [slow_mass(r[j], r, y, y[j], t, g, skip=j) for j in range(len(r))]
        assert term.mean == pytest.approx(np.mean(loo), rel=1e-8)
        assert term.std == pytest.approx(np.std(loo), rel=1e-8)
        log_mass[:, k] = [slow_mass(x[i], r, y, prediction[i], t, g) for i in range(len(x))]
    expected = -sum((log_mass[:, k] - t.mean) / t.std for k, t in enumerate(spec.terms))
    np.testing.assert_allclose(spec.from_log_mass(log_mass), expected, rtol=1e-12)


@pytest.mark.parametrize("quantile", [0.0, 0.1, 0.5])
def test_one_sided_layer_floor_and_nonconformity_match_loops(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], quantile: float
) -> None:
    """A one-sided layer's floor is the quantile of z over the left-out reference rows, and its
    terms add max(0, floor - z): nothing above the floor; the two-sided layer adds -z."""
    ref, y, _ = data
    features = {"low": ref, "high": ref[:, :2] * 3.0}
    spec = fit_neighbor_mass(
        features, y, perplexity=5.0, one_sided=["low"], floor_quantile=quantile
    )
    for term in spec.terms:
        r = features[term.layer]
        loo = np.array(
            [slow_mass(r[j], r, y, y[j], term.temperature, term.distance, j) for j in range(60)]
        )
        z = (loo - term.mean) / term.std
        if term.layer == "high":
            assert term.floor is None
        else:
            assert term.floor == pytest.approx(np.quantile(z, quantile), rel=1e-8, abs=1e-12)
    # z of each term for 5 samples: at the floors, above, below by 1 and 2.5 std, mixed
    floors = np.array([t.floor if t.floor is not None else 0.0 for t in spec.terms])
    z = np.array(
        [floors, floors + 1.0, floors - 1.0, floors - 2.5, floors + np.array([-1.0, 0.5, 0, 0])]
    )
    mean = np.array([t.mean for t in spec.terms])
    std = np.array([t.std for t in spec.terms])
    a = spec.from_log_mass(mean + std * z)
    two_sided = -z[:, 2:].sum(axis=1)
    np.testing.assert_allclose(a - two_sided, [0.0, 0.0, 2.0, 5.0, 1.0], atol=1e-9)


def test_one_sided_bad_options(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    ref, y, _ = data
    with pytest.raises(InputError, match=r"--one-sided: layers \['c'\] are not served"):
        fit_neighbor_mass({"a": ref}, y, one_sided=["c"])
    with pytest.raises(InputError, match="must stay two-sided"):
        fit_neighbor_mass({"a": ref}, y, one_sided=["a"])
    for bad in (1.0, -0.01, float("nan")):
        with pytest.raises(InputError, match="--floor-quantile: expected 0 <= q < 1"):
            fit_neighbor_mass({"a": ref, "b": ref}, y, one_sided=["a"], floor_quantile=bad)


def test_weights_multiply_each_terms_contribution(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """A term's weight is its layer's times its geometry's (1 where none is given); the fit is
    otherwise that of the unweighted spec, and a(x) sums w_t c_t, one-sided terms included."""
    ref, y, _ = data
    features = {"low": ref, "high": ref[:, :2] * 3.0}
    plain = fit_neighbor_mass(features, y, perplexity=5.0, one_sided=["low"])
    weighted = fit_neighbor_mass(
        features, y, perplexity=5.0, one_sided=["low"], layer_weights={"high": 2.0},
        geometry_weights={"cosine": 0.5},
    )  # fmt: skip
    expected = {("low", "cosine"): 0.5, ("low", "euclidean"): 1.0}
    expected |= {("high", "cosine"): 1.0, ("high", "euclidean"): 2.0}
    assert [(t.layer, t.distance, t.weight) for t in weighted.terms] == [
        (t.layer, t.distance, expected[t.layer, t.distance]) for t in plain.terms
    ]
    assert [replace(t, weight=1.0) for t in weighted.terms] == plain.terms
    mean = np.array([t.mean for t in plain.terms])
    std = np.array([t.std for t in plain.terms])
    z = np.random.default_rng(0).normal(-1.0, 2.0, size=(7, len(plain.terms)))
    floors = np.array([np.nan if t.floor is None else t.floor for t in plain.terms])
    contributions = np.where(np.isnan(floors), -z, np.maximum(floors - z, 0.0))
    weights = np.array([t.weight for t in weighted.terms])
    log_mass = mean + std * z
    np.testing.assert_allclose(weighted.from_log_mass(log_mass), contributions @ weights, rtol=1e-9)
    np.testing.assert_allclose(plain.from_log_mass(log_mass), contributions.sum(1), rtol=1e-9)


def test_weights_bad_options(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    ref, y, _ = data
    for options, match in [
        ({"layer_weights": {"c": 2.0}}, r"--layer-weights: \['c'\] not among \['a'\]"),
        ({"geometry_weights": {"l1": 2.0}}, r"--geometry-weights: \['l1'\] not among"),
        ({"layer_weights": {"a": 0.0}}, "--layer-weights: a=0.0: expected a finite weight > 0"),
        ({"geometry_weights": {"cosine": float("inf")}}, "--geometry-weights: cosine=inf"),
        ({"layer_weights": {"a": float("nan")}}, "--layer-weights: a=nan"),
        (
            {"layer_weights": {"a": 1e200}, "geometry_weights": {"cosine": 1e200}},
            "--layer-weights a times --geometry-weights cosine is inf: expected a finite product",
        ),
        (
            {"layer_weights": {"a": 1e-200}, "geometry_weights": {"euclidean": 1e-200}},
            "--layer-weights a times --geometry-weights euclidean is 0.0",
        ),
    ]:
        with pytest.raises(InputError, match=match):
            fit_neighbor_mass({"a": ref}, y, **options)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature, std and weight must be > 0"):
        MassTerm(layer="a", distance="cosine", temperature=1.0, mean=0.0, std=1.0, weight=-1.0)


def test_stats_use_a_subsample_of_the_reference(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    ref, y, _ = data
    spec = fit_neighbor_mass({"a": ref}, y, perplexity=5.0, geometries=["cosine"], max_stat_rows=9)
    rows = stratified_subsample(y, 9, 0)
    assert len(rows) < len(y)
    term = spec.terms[0]
    loo = [slow_mass(ref[j], ref, y, y[j], term.temperature, "cosine", skip=j) for j in rows]
    assert term.mean == pytest.approx(np.mean(loo), rel=1e-8)


def test_far_and_off_class_samples_are_less_conforming(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    ref, y, _ = data
    spec = fit_neighbor_mass({"a": ref}, y, perplexity=5.0)
    terms = [Term(distance_of(t.distance), t.temperature) for t in spec.terms]

    def a(x: np.ndarray, c: np.ndarray) -> np.ndarray:
        m = [
            class_mean_log_mass(
                torch.from_numpy(ref),
                torch.from_numpy(y),
                3,
                term,
                torch.from_numpy(x),
                torch.from_numpy(c),
                16,
            )
            for term in terms
        ]
        return spec.from_log_mass(torch.stack(m, 1).numpy())

    inside = a(ref[:10], y[:10])
    scaled = a(ref[:10] * 10.0, y[:10])  # same directions, far away
    wrong_class = a(ref[:10], (y[:10] + 1) % 3)
    assert scaled.min() > inside.max()
    assert wrong_class.mean() > inside.mean()


def test_bad_inputs(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    ref, y, _ = data
    with pytest.raises(InputError, match="perplexity"):
        fit_neighbor_mass({"a": ref}, y, perplexity=1.0)
    with pytest.raises(InputError, match="geometries"):
        fit_neighbor_mass({"a": ref}, y, geometries=[])
    with pytest.raises(InputError, match=r"features\.a"):
        fit_neighbor_mass({"a": ref[:10]}, y)
    with pytest.raises(InputError, match="labels"):
        fit_neighbor_mass({"a": ref}, y.astype(float))
    spec = fit_neighbor_mass({"a": ref}, y, perplexity=5.0)
    with pytest.raises(ValueError, match="log_mass"):
        spec.from_log_mass(np.zeros((3, 1)))
