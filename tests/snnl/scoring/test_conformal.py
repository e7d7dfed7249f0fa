"""Conformal p-values against brute-force counts, and the flag rate's calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest

from snnl.errors import InputError, RepositoryError
from snnl.scoring.conformal import Calibration
from snnl.scoring.guarantees import FlagRule
from snnl.scoring.nonconformity import neg_log_score
from tests.snnl._conformal import expected_flag_rate


def test_nonconformity_floors_each_layer_at_1e_minus_12() -> None:
    log_s = np.array([[math.log(0.5), -math.inf], [0.0, math.log(1e-30)]])
    expected = [-math.log(0.5) - math.log(1e-12), 0.0 - math.log(1e-12)]
    np.testing.assert_allclose(neg_log_score(log_s), expected)


def test_p_values_match_brute_force_counts_with_ties() -> None:
    rng = np.random.default_rng(0)
    # Integer-valued scores make many ties, where >= and <= matter.
    log_s = np.log(rng.integers(1, 6, size=(40, 2)) / 5.0)
    calibration = Calibration.fit(["a", "b"], log_s)
    queries = np.log(rng.integers(1, 7, size=(25, 2)) / 6.0)
    a_cal = [sum(-max(v, math.log(1e-12)) for v in row) for row in log_s]
    a_query = neg_log_score(queries)
    n = len(a_cal)
    expected_p = [(1 + sum(1 for ai in a_cal if ai >= a)) / (n + 1) for a in a_query]
    np.testing.assert_allclose(calibration.p_value(a_query), expected_p)
    s_cal, s_query = np.exp(log_s), np.exp(queries)
    expected_layer = [
        [
            (1 + sum(1 for i in range(n) if s_cal[i, col] <= s_query[b, col])) / (n + 1)
            for col in (0, 1)
        ]
        for b in range(len(queries))
    ]
    np.testing.assert_allclose(calibration.layer_p_values(queries), expected_layer)
    assert calibration.size == 40
    assert np.all(np.diff(calibration.nonconformity) >= 0)


def flag(calibration: Calibration, a: np.ndarray, alpha: float) -> np.ndarray:
    """The marginal rule's flag of nonconformities ``a``."""
    return calibration.decide(FlagRule("marginal", alpha), a, np.zeros(len(a), np.int64)).outlier


def test_marginal_flag_is_p_strictly_below_alpha() -> None:
    calibration = Calibration.fit(["x"], np.log(np.linspace(0.01, 1, 99))[:, None])
    a = np.random.default_rng(4).uniform(0, 5, size=500)
    for alpha in (0.02, 0.05, 0.1, 0.5):
        np.testing.assert_array_equal(flag(calibration, a, alpha), calibration.p_value(a) < alpha)


def test_predicted_classes_round_trip_aligned_with_the_sorted_nonconformity() -> None:
    rng = np.random.default_rng(5)
    log_s = np.log(rng.uniform(size=(50, 1)))
    predicted = rng.integers(0, 3, size=50)
    calibration = Calibration.fit(["x"], log_s, predicted=predicted)
    a = neg_log_score(log_s)
    order = np.argsort(a, kind="stable")
    np.testing.assert_array_equal(calibration.predicted, predicted[order])
    loaded = Calibration.from_bytes(calibration.to_bytes(), ["x"], "cal.safetensors")
    np.testing.assert_array_equal(loaded.predicted, predicted[order])
    for c in range(3):
        np.testing.assert_array_equal(loaded.conformal.by_class[c], np.sort(a[predicted == c]))
    assert loaded.class_sizes(3) == np.bincount(predicted, minlength=3).tolist()
    # A file without it (exported before) loads, and refuses guarantee "class".
    old = Calibration.from_bytes(Calibration.fit(["x"], log_s).to_bytes(), ["x"], "old")
    assert old.predicted is None
    with pytest.raises(InputError, match="export it again"):
        old.check(FlagRule("class", 0.1), classes=3)


def test_flag_rate_is_calibrated_over_many_resplits() -> None:
    """Exchangeable in-distribution data: the flag rate at alpha = 0.05 is exactly
    (ceil(alpha (n+1)) - 1) / (n+1) <= alpha in expectation. Averaged over 2000 independent
    calibration/test draws, the tolerance is 5 standard deviations (about 0.0023), tight enough
    to catch an off-by-one in the count (a shift of 1 / (n+1) = 0.005) and never to flake."""
    rng = np.random.default_rng(1)
    n, m, repeats, alpha = 199, 200, 2000, 0.05
    rates = np.empty(repeats)
    for r in range(repeats):
        # Any continuous score distribution works; a heavy tail stresses the sorting.
        log_s = -(rng.standard_exponential(size=(n + m, 3)) ** 2)
        calibration = Calibration.fit(["a", "b", "c"], log_s[:n])
        rates[r] = flag(calibration, neg_log_score(log_s[n:]), alpha).mean()
    expected = expected_flag_rate(n, alpha)
    per_split_var = expected * (1 - expected) * (1 / (n + 2) + 1 / m)
    tolerance = 5 * math.sqrt(per_split_var / repeats)
    assert expected <= alpha
    assert abs(rates.mean() - expected) < tolerance, (rates.mean(), expected, tolerance)


def test_round_trip_and_refusals() -> None:
    rng = np.random.default_rng(2)
    calibration = Calibration.fit(["x", "y"], np.log(rng.uniform(size=(30, 2))))
    loaded = Calibration.from_bytes(calibration.to_bytes(), ["x", "y"], "cal.safetensors")
    np.testing.assert_array_equal(loaded.nonconformity, calibration.nonconformity)
    np.testing.assert_array_equal(loaded.scores["y"], calibration.scores["y"])
    with pytest.raises(RepositoryError, match=r"cal\.safetensors: missing tensor 'scores\.z'"):
        Calibration.from_bytes(calibration.to_bytes(), ["x", "z"], "cal.safetensors")
    with pytest.raises(RepositoryError, match="not a readable safetensors"):
        Calibration.from_bytes(b"garbage", ["x"], "cal.safetensors")


def test_summary_threshold_agrees_with_the_p_value() -> None:
    rng = np.random.default_rng(3)
    calibration = Calibration.fit(["x"], np.log(rng.uniform(size=(99, 1))))
    for alpha in (0.02, 0.05, 0.1, 0.5):
        summary = calibration.summary(FlagRule("marginal", alpha), classes=1)
        threshold = summary["flag_threshold"]
        assert isinstance(threshold, float)
        above, at = np.nextafter(threshold, np.inf), threshold
        assert flag(calibration, np.array([above]), alpha)[0]
        assert not flag(calibration, np.array([at]), alpha)[0]
    assert (
        calibration.summary(FlagRule("marginal", 0.005), 1)["flag_threshold"] is None
    )  # p >= 1/(n+1) > alpha always
    summary = calibration.summary(FlagRule("marginal", 0.05), 1)
    assert summary["guarantee"] == "marginal" and summary["class_sizes"] == []
    # pac: the threshold sits at its (fewer) flag slots.
    pac = calibration.summary(FlagRule("pac", 0.1, 0.2), 1)["flag_threshold"]
    assert (
        isinstance(pac, float)
        and pac > calibration.summary(FlagRule("marginal", 0.1), 1)["flag_threshold"]
    )  # type: ignore[operator]
    assert summary["size"] == 99 and set(summary["layers"]) == {"x"}  # type: ignore[arg-type]
