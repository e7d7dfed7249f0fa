"""The drift monitor against synthetic conformal p-value streams.

In-distribution streams are generated exactly as the service produces them: n uniform calibration
scores drawn once per "model", then p = (1 + #{cal >= s}) / (n + 1) for fresh uniform scores s, so
the p-values carry the calibration set's step-function law, not an idealized uniform one.
Every stream has a fixed seed: the counts asserted here are reproducible, not a flaky tail.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields

import numpy as np
import pytest
from scipy.special import betaincinv

from snnl.errors import InputError
from snnl.monitoring import (
    COMBINED,
    MIN_ERT,
    DriftMonitor,
    DriftSettings,
    DriftState,
    ModelDriftMonitor,
)

N_CAL = 2000


def conformal_p(cal: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """p = (1 + #{cal >= s}) / (n + 1) against the sorted calibration scores ``cal``."""
    n = cal.shape[0]
    return (1.0 + n - np.searchsorted(cal, scores, side="left")) / (n + 1.0)


def shifted_stream(
    rng: np.random.Generator, cal: np.ndarray, size: int, start: int, share: float
) -> np.ndarray:
    """In-distribution until ``start``, then a ``share`` of the samples scores beyond every
    calibration point (an input unlike the training data: p = 1 / (n + 1))."""
    scores = rng.random(size)
    ood = (np.arange(size) >= start) & (rng.random(size) < share)
    scores[ood] = 2.0
    return conformal_p(cal, scores)


def reference_alarms(
    p: np.ndarray, n: int, settings: DriftSettings
) -> tuple[list[tuple[int, int]], float]:
    """A slow per-sample loop written from the formulas (not from the module's code): the
    alarms (sample, change point) and the final statistic (log10)."""
    ks = sorted({max(1, min(n, math.floor(t * (n + 1) + 1e-9))) for t in settings.levels})
    bets = []
    for k in ks:
        upper = float(betaincinv(k, n + 1 - k, 1 - settings.calibration_risk / len(ks)))
        for eta in settings.shifts:
            q1 = upper + eta * (1 - upper)
            bets.append((k, math.log(q1 / upper), math.log(1 - eta)))
    w = [0.0] * len(bets)
    floor = [-1] * len(bets)
    alarms = []
    log_a = math.log(settings.ert)

    def mixture() -> float:
        return math.log(sum(math.exp(v) for v in w) / len(w))

    for i, value in enumerate(p.tolist()):
        grid = round(value * (n + 1))
        for j, (k, up, down) in enumerate(bets):
            w[j] = max(0.0, w[j] + (up if grid <= k else down))
            if w[j] == 0.0:
                floor[j] = i
        if mixture() >= log_a:
            top = max(range(len(w)), key=lambda j: w[j])
            alarms.append((i, floor[top] + 1))
            w = [0.0] * len(bets)
            floor = [i] * len(bets)
    return alarms, max(mixture(), 0.0) / math.log(10)


def test_vectorized_update_equals_the_per_sample_loop() -> None:
    rng = np.random.default_rng(1)
    cal = np.sort(rng.random(300))
    p = np.concatenate(
        [shifted_stream(rng, cal, 3000, 1000, 0.3), shifted_stream(rng, cal, 3000, 2000, 1.0)]
    )
    settings = DriftSettings(ert=MIN_ERT)
    expected, statistic = reference_alarms(p, 300, settings)
    assert len(expected) >= 3
    monitor = DriftMonitor(300, settings)
    cuts = np.sort(rng.choice(np.arange(1, p.size), size=40, replace=False))
    got = []
    for batch in np.split(p, cuts):
        got += [(a.sample, a.change_point) for a in monitor.update(batch).new_alarms]
    assert got == expected
    assert monitor.state.statistic == pytest.approx(statistic, abs=1e-9)
    assert monitor.state.alarms == len(expected)
    assert monitor.state.samples == p.size


def test_batching_does_not_change_anything() -> None:
    rng = np.random.default_rng(2)
    cal = np.sort(rng.random(N_CAL))
    p = shifted_stream(rng, cal, 20_000, 8000, 0.1)
    whole = DriftMonitor(N_CAL)
    state = whole.update(p, now=5.0)
    pieces = DriftMonitor(N_CAL)
    alarms = []
    for batch in np.array_split(p, 97):
        alarms += pieces.update(batch, now=5.0).new_alarms
    # the same alarms; the statistic equal up to the rounding of a different summation order
    assert [(a.sample, a.change_point) for a in alarms] == [
        (a.sample, a.change_point) for a in state.new_alarms
    ]
    assert [a.statistic for a in alarms] == pytest.approx([a.statistic for a in state.new_alarms])
    assert pieces.state.statistic == pytest.approx(whole.state.statistic, abs=1e-9)
    assert pieces.state.change_point == whole.state.change_point
    assert pieces.state.alarms == whole.state.alarms >= 10


def test_no_false_alarm_on_long_in_distribution_streams_across_calibration_draws() -> None:
    """40 calibration sets, 10^5 samples each (4 * 10^6 samples) at the default ert = 10^6:
    no alarm. On the same streams a monitor without the calibration-conditional correction (bets
    sized for exactly uniform p-values) breaks its own bound, E[alarms] <= N / ert = 4, several
    times over: the fixed calibration set's law is what it bets on, and it is not uniform."""
    rng = np.random.default_rng(3)
    corrected = DriftMonitor(N_CAL)
    naive = DriftMonitor(None)
    counts = {"corrected": 0, "naive": 0}
    for _ in range(40):
        cal = np.sort(rng.random(N_CAL))
        corrected.reset()
        naive.reset()
        for _ in range(2):
            p = conformal_p(cal, rng.random(50_000))
            corrected.update(p)
            naive.update(p)
        counts["corrected"] += corrected.state.alarms
        counts["naive"] += naive.state.alarms
    assert counts["corrected"] == 0
    assert counts["naive"] >= 3 * 4, counts


def test_alarm_soon_after_a_shift_and_the_change_point_near_the_truth() -> None:
    rng = np.random.default_rng(4)
    for draw in range(10):
        cal = np.sort(rng.random(N_CAL))
        start = 5000 + 137 * draw
        state = DriftMonitor(N_CAL).update(shifted_stream(rng, cal, 20_000, start, 0.1))
        assert state.new_alarms, draw
        first = state.new_alarms[0]
        assert start <= first.sample < start + 1000, (draw, first)
        assert abs(first.change_point - start) <= 150, (draw, first)
        full = DriftMonitor(N_CAL).update(shifted_stream(rng, cal, 8000, start, 1.0))
        assert full.new_alarms[0].sample - start < 20
        assert full.new_alarms[0].change_point == start
        # alarms go on (restarting each time) while the shift lasts
        assert full.alarms >= 100


def test_state_is_constant_size_and_the_current_excursion_has_a_start() -> None:
    rng = np.random.default_rng(5)
    cal = np.sort(rng.random(N_CAL))
    monitor = DriftMonitor(N_CAL)
    sizes = []
    for size in (10, 100_000):
        monitor.update(conformal_p(cal, rng.random(size)))
        sizes.append(sum(v.nbytes for v in vars(monitor).values() if isinstance(v, np.ndarray)))
    # W and the floor index per component, and the (levels + 1, J) table of log-bets
    assert sizes[0] == sizes[1] == 8 * monitor.components * (2 + len(monitor.upper_rates) + 1)
    state = monitor.state
    assert {f.name for f in fields(DriftState)} == {
        "samples", "statistic", "threshold", "alarms", "last_alarm", "change_point", "new_alarms"
    }  # fmt: skip
    assert state.new_alarms == ()
    # a few OOD samples raise the statistic without an alarm: the excursion's start is known
    state = monitor.update(np.full(3, 1.0 / (N_CAL + 1)))
    assert 0 < state.statistic < state.threshold
    assert state.change_point == 100_010
    assert state.samples == 100_013


def test_reset_forgets_everything() -> None:
    rng = np.random.default_rng(6)
    cal = np.sort(rng.random(N_CAL))
    monitor = DriftMonitor(N_CAL)
    fresh = monitor.state
    state = monitor.update(shifted_stream(rng, cal, 2000, 0, 1.0))
    assert state.alarms > 0 and state.last_alarm is not None
    monitor.reset()
    assert monitor.state == fresh
    assert fresh.samples == 0 and fresh.statistic == 0.0 and fresh.change_point is None


def test_trace_gives_the_statistic_per_sample() -> None:
    rng = np.random.default_rng(7)
    cal = np.sort(rng.random(N_CAL))
    p = shifted_stream(rng, cal, 3000, 1000, 1.0)
    state, path = DriftMonitor(N_CAL).trace(p)
    assert path.shape == (3000,)
    assert np.all(path >= 0.0)
    at = [a.sample for a in state.new_alarms]
    assert np.all(path[at] >= state.threshold)
    below = np.ones(3000, dtype=bool)
    below[at] = False
    assert np.all(path[below] < state.threshold)
    if at[-1] == 2999:  # the state holds the restarted statistic, the path the crossing value
        assert state.statistic == 0.0
    else:
        assert path[-1] == pytest.approx(state.statistic)


def test_the_bets_are_fair_at_the_upper_quantile() -> None:
    """E[f_j(p)] = 1 exactly when P(p <= level) = q̄: each bet is a likelihood ratio."""
    monitor = DriftMonitor(N_CAL)
    bets = monitor._bets
    q = bets.upper[bets.level]
    assert np.allclose(q * np.exp(bets.up) + (1 - q) * np.exp(bets.down), 1.0)
    for threshold, upper in monitor.upper_rates.items():
        k = round(threshold * (N_CAL + 1) - 0.5)
        assert k / (N_CAL + 1) < upper < 1  # above the nominal rate
    exact = DriftMonitor(None)
    assert list(exact.upper_rates.values()) == list(DriftSettings().levels)


def test_small_calibration_sets_merge_levels() -> None:
    monitor = DriftMonitor(99)  # 1e-4, 1e-3 and 1e-2 all round down to k = 1 of 100
    assert [round(t * 100 - 0.5) for t in monitor.upper_rates] == [1, 5, 20]
    assert monitor.components == 3 * len(DriftSettings().shifts)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ert": 100}, "ert"),
        ({"ert": float("nan")}, "ert"),
        ({"ert": "1e6"}, "ert"),
        ({"calibration_risk": 0.0}, "calibration_risk"),
        ({"calibration_risk": 0.5}, "calibration_risk"),
        ({"levels": ()}, "levels"),
        ({"levels": (0.01, 0.001)}, "levels"),
        ({"levels": (0.0, 0.1)}, "levels"),
        ({"levels": (0.1, 0.9)}, "levels"),
        ({"shifts": (0.1, 1.0)}, "shifts"),
        ({"shifts": "0.1"}, "shifts"),
    ],
)
def test_unsafe_settings_are_refused_with_the_field_named(
    kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(InputError, match=rf"^{field}: expected"):
        DriftSettings(**kwargs)  # type: ignore[arg-type]


def test_settings_threshold_and_accepted_values() -> None:
    settings = DriftSettings(ert=1e7, calibration_risk=0.01, levels=[0.01, 0.1], shifts=[0.5])
    assert settings.threshold == pytest.approx(7.0)
    assert settings.levels == (0.01, 0.1)
    assert DriftMonitor(1000, settings).components == 2


@pytest.mark.parametrize("bad", [[0.0], [1.5], [float("nan")], [[0.5, 0.5]], ["x"]])
def test_bad_p_values_are_refused(bad: list[object]) -> None:
    monitor = DriftMonitor(N_CAL)
    with pytest.raises(InputError, match=r"^p_values: expected"):
        monitor.update(np.asarray(bad, dtype=object))
    assert monitor.state.samples == 0


def test_bad_calibration_size_is_refused() -> None:
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InputError, match=r"^n_calibration: expected"):
            DriftMonitor(bad)  # type: ignore[arg-type]


def test_model_monitor_per_layer_and_combined() -> None:
    rng = np.random.default_rng(8)
    cal = np.sort(rng.random(N_CAL))
    monitor = ModelDriftMonitor(N_CAL, ["fc1", "fc2"])
    p = conformal_p(cal, rng.random(4000))
    fc1 = shifted_stream(rng, cal, 4000, 1000, 1.0)  # only fc1 moves
    state = monitor.update(p, np.stack([fc1, conformal_p(cal, rng.random(4000))], axis=1))
    assert state.new_alarms == ()
    assert state.combined.alarms == 0
    assert state.layers["fc1"].alarms > 0 and state.layers["fc2"].alarms == 0
    assert set(state.statistics()) == {COMBINED, "fc1", "fc2"}
    body = json.loads(json.dumps(state.to_dict()))
    assert body["samples"] == 4000 and body["layers"]["fc1"]["last_alarm"]["sample"] >= 1000
    # the model's alarms are the combined p-value's
    state = monitor.update(np.full(50, 1.0 / (N_CAL + 1)))
    assert len(state.new_alarms) >= 1 and state.layers["fc1"].samples == 4000
    assert monitor.state.combined.alarms == state.combined.alarms
    monitor.reset()
    assert monitor.state.combined.samples == 0 and monitor.state.layers["fc1"].alarms == 0


def test_model_monitor_refuses_wrong_shapes() -> None:
    monitor = ModelDriftMonitor(N_CAL, ["fc1", "fc2"])
    with pytest.raises(InputError, match=r"^layer_p_value: expected shape \(3, 2\)"):
        monitor.update(np.full(3, 0.5), np.full((3, 3), 0.5))
    with pytest.raises(InputError, match=r"^p_value: expected a 1-d array"):
        monitor.update(np.full((3, 1), 0.5))
    with pytest.raises(InputError, match=r"^layers: expected distinct names"):
        ModelDriftMonitor(N_CAL, ["fc1", "fc1"])
