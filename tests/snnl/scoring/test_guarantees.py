"""The flag's guarantees against brute force, and each one's promise over many re-splits of the
nonconformities that the committed model gives real in-distribution data (digits) and noise.

Every re-split test draws a random calibration set from the pool, calibrates on it, and measures
the flag rate on the rest. The checks allow two standard errors over the re-splits (the issue's
criterion); the seeds are fixed, so a run is deterministic on any machine."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.datasets import load_digits

from snnl.errors import InputError
from snnl.scoring.guarantees import (
    ConformalCalibration,
    FlagRule,
    benjamini_hochberg,
    default_calibration_size,
    marginal_slots,
    pac_level,
    pac_slots,
    rank_counts,
)

MODELS = Path(__file__).resolve().parents[3] / "models"
RESPLITS = 1000


@pytest.fixture(scope="module")
def stored_scores() -> dict[str, np.ndarray]:
    """Nonconformities and predictions of the committed digits model on all 1,797 digits images
    (in distribution) and on 1,000 uniform-noise images (out of distribution)."""
    from snnl import Detector

    detector = Detector.load(MODELS, "digits-mlp")
    x = load_digits().data.astype(np.float32)
    noise = np.random.default_rng(0).uniform(0, 16, size=(1000, x.shape[1])).astype(np.float32)
    scored, ood = detector.score(x), detector.score(noise)
    return {
        "a": scored.nonconformity,
        "prediction": scored.prediction,
        "a_ood": ood.nonconformity,
        "prediction_ood": ood.prediction,
    }


def _resplit_rates(
    scores: dict[str, np.ndarray], rule: FlagRule, n_cal: int, seed: int
) -> tuple[np.ndarray, list[dict[int, float]]]:
    """Per re-split: the flag rate on the test part, and the rate per predicted class."""
    rng = np.random.default_rng(seed)
    a, prediction = scores["a"], scores["prediction"]
    rates, per_class = np.empty(RESPLITS), []
    for r in range(RESPLITS):
        order = rng.permutation(a.shape[0])
        cal, test = order[:n_cal], order[n_cal:]
        calibration = ConformalCalibration.fit(a[cal], prediction[cal])
        decision = calibration.decide(rule, a[test], prediction[test])
        rates[r] = decision.outlier.mean()
        per_class.append(
            {
                int(c): float(decision.outlier[prediction[test] == c].mean())
                for c in np.unique(prediction[test])
            }
        )
    return rates, per_class


def test_slots_agree_with_their_definitions() -> None:
    for n in (19, 20, 99, 199, 1000):
        for alpha in (0.01, 0.05, 0.1, 0.5):
            m = marginal_slots(n, alpha)
            r = np.arange(1, n + 2)
            assert m == int(np.sum(r / (n + 1) < alpha))
            for delta in (0.05, 0.1):
                k = pac_slots(n, alpha, delta)
                if k >= 1:
                    assert stats.beta.sf(alpha, k, n + 1 - k) <= delta
                if k < n:
                    assert stats.beta.sf(alpha, k + 1, n - k) > delta
    assert pac_slots(44, 0.05, 0.1) == 0  # (1 - 0.05)^44 = 0.105 > 0.1: no slot yet
    assert pac_slots(45, 0.05, 0.1) == 1


def test_default_calibration_size_reaches_nine_tenths_of_alpha() -> None:
    n = default_calibration_size(0.05, 0.1)
    assert pac_level(n, 0.05, 0.1) >= 0.9 * 0.05
    assert 1000 < n < 10_000
    assert pac_level(n // 2, 0.05, 0.1) < 0.9 * 0.05


def test_rank_counts_and_mondrian_p_values_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 8, size=60).astype(float)  # ties, where >= matters
    predicted = rng.integers(0, 3, size=60)
    queries, query_prediction = rng.integers(0, 9, size=25).astype(float), rng.integers(0, 3, 25)
    calibration = ConformalCalibration.fit(a, predicted)
    expected_r = [1 + sum(1 for ai in a if ai >= q) for q in queries]
    np.testing.assert_array_equal(rank_counts(calibration.nonconformity, queries), expected_r)
    rule = FlagRule(guarantee="class", alpha=0.2)
    decision = calibration.decide(rule, queries, query_prediction)
    for q, c, p, flagged in zip(
        queries, query_prediction, decision.p_value, decision.outlier, strict=True
    ):
        same = a[predicted == c]
        expected_p = (1 + np.sum(same >= q)) / (same.size + 1)
        assert p == pytest.approx(expected_p)
        assert flagged == (expected_p < 0.2)


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1])
def test_marginal_flag_rate_is_at_most_alpha_over_resplits(
    stored_scores: dict[str, np.ndarray], alpha: float
) -> None:
    rates, _ = _resplit_rates(stored_scores, FlagRule(alpha=alpha), n_cal=900, seed=1)
    standard_error = rates.std(ddof=1) / math.sqrt(RESPLITS)
    assert rates.mean() <= alpha + 2 * standard_error, (rates.mean(), standard_error)
    assert rates.mean() >= alpha - 0.01 - 2 * standard_error  # not vacuous: it does flag


def test_class_flag_rate_is_at_most_alpha_within_every_class(
    stored_scores: dict[str, np.ndarray],
) -> None:
    alpha = 0.1
    _, per_class = _resplit_rates(stored_scores, FlagRule("class", alpha), n_cal=900, seed=2)
    classes = sorted({c for split in per_class for c in split})
    assert len(classes) == 10
    for c in classes:
        rates = np.array([split[c] for split in per_class if c in split])
        standard_error = rates.std(ddof=1) / math.sqrt(rates.size)
        assert rates.mean() <= alpha + 2 * standard_error, (c, rates.mean(), standard_error)


def test_pac_rate_exceeds_alpha_in_at_most_delta_of_the_calibration_draws(
    stored_scores: dict[str, np.ndarray],
) -> None:
    """Calibration-conditional validity: the share of calibration draws whose flag rate on the
    rest (1,497 samples, so the rate is measured to about +-0.006) exceeds alpha is at most
    delta. The marginal rule, for contrast, exceeds alpha in about half of the draws."""
    alpha, delta = 0.05, 0.1
    rates, _ = _resplit_rates(stored_scores, FlagRule("pac", alpha, delta), n_cal=300, seed=3)
    exceed = (rates > alpha).astype(float)
    standard_error = max(exceed.std(ddof=1), 1e-3) / math.sqrt(RESPLITS)
    assert exceed.mean() <= delta + 2 * standard_error, (exceed.mean(), standard_error)
    marginal, _ = _resplit_rates(stored_scores, FlagRule(alpha=alpha), n_cal=300, seed=3)
    assert (marginal > alpha).mean() > 2 * delta


def test_batch_fdr_is_at_most_q_on_mixtures(stored_scores: dict[str, np.ndarray]) -> None:
    """BH over one batch of 200 samples, a tenth of them noise: the false discovery proportion
    (flagged in-distribution samples among all flagged) averages at most q."""
    q, batch, outliers = 0.1, 200, 20
    rng = np.random.default_rng(4)
    a, a_ood = stored_scores["a"], stored_scores["a_ood"]
    fdp, power = np.empty(RESPLITS), np.empty(RESPLITS)
    for r in range(RESPLITS):
        order = rng.permutation(a.shape[0])
        calibration = ConformalCalibration.fit(a[order[:900]])
        queries = np.concatenate([a[order[900 : 900 + batch - outliers]], rng.choice(a_ood, 20)])
        rejected = benjamini_hochberg(calibration.p_values(queries), q)
        false = rejected[: batch - outliers].sum()
        fdp[r] = false / max(rejected.sum(), 1)
        power[r] = rejected[batch - outliers :].mean()
    standard_error = fdp.std(ddof=1) / math.sqrt(RESPLITS)
    assert fdp.mean() <= q + 2 * standard_error, (fdp.mean(), standard_error)
    assert power.mean() > 0.5  # noise is found, so the bound is not met by flagging nothing


def test_decide_returns_the_fdr_flag_beside_the_per_sample_flag() -> None:
    calibration = ConformalCalibration.fit(np.arange(99.0))
    decision = calibration.decide(FlagRule(alpha=0.05, fdr=0.1), np.array([200.0, 50.0]), [0, 0])
    assert decision.outlier.tolist() == [True, False]
    assert decision.outlier_fdr is not None and decision.outlier_fdr.tolist() == [True, False]
    assert calibration.decide(FlagRule(), np.array([1.0]), [0]).outlier_fdr is None


def test_unsupportable_rules_are_refused_naming_the_value_and_the_size() -> None:
    calibration = ConformalCalibration.fit(np.arange(30.0), np.repeat([0, 1, 2], 10))
    with pytest.raises(InputError, match=r"alpha=0\.01 .* n_cal=30"):
        calibration.check(FlagRule(alpha=0.01), classes=3)
    with pytest.raises(InputError, match=r"alpha=0\.05 .* class 0 has n_cal=10"):
        calibration.check(FlagRule("class", 0.05), classes=3)
    with pytest.raises(InputError, match=r"class 3 has n_cal=0"):
        calibration.check(FlagRule("class", 0.2), classes=4)
    with pytest.raises(InputError, match=r"delta=0\.1 needs n_cal >= 45 .* n_cal=30"):
        calibration.check(FlagRule("pac", 0.05, 0.1), classes=3)
    with pytest.raises(InputError, match=r"fdr=0\.01 .* n_cal=30"):
        calibration.check(FlagRule(alpha=0.1, fdr=0.01), classes=3)
    with pytest.raises(InputError, match="per-class calibration"):
        ConformalCalibration.fit(np.arange(30.0)).check(FlagRule("class", 0.2), classes=3)
    with pytest.raises(InputError, match="guarantee must be one of"):
        FlagRule("bogus")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"alpha must be a number in \(0, 1\)"):
        FlagRule(alpha=1.5)
    calibration.check(FlagRule("class", 0.2), classes=3)  # 10 per class suffice at 0.2
