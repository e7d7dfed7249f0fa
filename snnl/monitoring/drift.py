"""The drift monitor: a calibration-conditional conformal CUSUM over the served p-values.

The served p-values are split-conformal p-values against one fixed calibration set of n points,
p = k / (n + 1), k in 1..n+1 (small = unusual). On in-distribution data they are uniform only on
average over calibration draws; *given* the calibration set, the indicator 1{p <= k / (n + 1)} is
Bernoulli(q_k) with q_k = U_(k), the k-th smallest of n uniforms, q_k ~ Beta(k, n + 1 - k).
A martingale that bets as if q_k were k / (n + 1) drifts upward on an unlucky calibration set and
turns that into false alarms on a long stream. This monitor bets against the upper quantile q̄_k
of that Beta law instead (docs/method.md, "Drift monitor"):

    q̄_k   = BetaInv(1 - delta / K; k, n + 1 - k)            K = the number of levels
    f_j(p) = q1_j / q̄_k        if p <= k / (n + 1)            q1_j = q̄_k + eta (1 - q̄_k)
             1 - eta            otherwise                      (a likelihood ratio, E[f_j] <= 1
                                                                whenever q_k <= q̄_k)
    W_j    = max(0, W_j + log f_j(p))                          one CUSUM per (level, eta)
    M      = sum_j w_j exp(W_j),  w_j = 1 / J                 alarm when M >= ert; restart

With probability >= 1 - delta over the calibration draw (a union bound over the K levels), every
f_j has conditional expectation <= 1 on in-distribution data, the mixture Shiryaev-Roberts
statistic sum_j w_j R_j dominates M, and (Pollak; Vovk's conformal change detection) the expected
number of false alarms in any N samples is at most N / ert: the expected run time between false
alarms is at least ``ert``. The estimated change point is the first sample after the last time
the dominating CUSUM sat at its floor of 0.

Cost: O(J) state, O(B J) numpy work per batch of B p-values (a cumulative sum and a running
minimum per component, time along the contiguous axis; Python loops only over the alarms inside
a batch).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from snnl.errors import InputError

__all__ = [
    "COMBINED",
    "DEFAULT_CALIBRATION_RISK",
    "DEFAULT_ERT",
    "DEFAULT_LEVELS",
    "DEFAULT_SHIFTS",
    "MAX_CALIBRATION_RISK",
    "MIN_ERT",
    "Alarm",
    "DriftMonitor",
    "DriftSettings",
    "DriftState",
    "ModelDriftMonitor",
    "ModelDriftState",
]

DEFAULT_ERT = 1_000_000.0
"""Default expected run time: samples between false alarms on in-distribution traffic."""
MIN_ERT = 10_000.0
"""Smallest ``ert`` accepted: below it, false alarms come every few minutes at modest traffic."""
DEFAULT_CALIBRATION_RISK = 0.001
"""Default delta: the probability that the calibration set is too unlucky for the guarantee."""
MAX_CALIBRATION_RISK = 0.1
DEFAULT_LEVELS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 5e-2, 0.2)
"""p-value levels watched (each rounded down to the calibration grid k / (n + 1), k >= 1)."""
DEFAULT_SHIFTS: tuple[float, ...] = (0.01, 0.05, 0.25)
"""Shares eta of contaminating inputs (all below the level) that the CUSUMs are tuned for."""
MAX_LEVEL = 0.5
COMBINED = "combined"
"""The layer label of the model's combined p-value (``snnl_drift_statistic{layer="combined"}``)."""

LN10 = math.log(10.0)
MIN_WINDOW = 64  # samples processed at once after an alarm (then growing)


@dataclass(frozen=True)
class DriftSettings:
    """What the monitor watches and how rarely it may raise a false alarm.

    ert: the expected run time, in samples, between false alarms on in-distribution traffic
    (a lower bound; >= ``MIN_ERT``). calibration_risk: delta, the probability over calibration
    draws that the guarantee does not hold, in (0, ``MAX_CALIBRATION_RISK``]. levels: p-value
    levels in (0, 0.5], increasing. shifts: contamination shares eta in (0, 1), increasing.
    Every invalid value raises ``InputError`` naming the field and what is expected.
    """

    ert: float = DEFAULT_ERT
    calibration_risk: float = DEFAULT_CALIBRATION_RISK
    levels: tuple[float, ...] = DEFAULT_LEVELS
    shifts: tuple[float, ...] = DEFAULT_SHIFTS

    def __post_init__(self) -> None:
        ert = _number("ert", self.ert)
        if not ert >= MIN_ERT:
            raise InputError(
                f"ert: expected >= {MIN_ERT:.0f} samples between false alarms, got {self.ert!r} "
                "(a smaller expected run time raises false alarms every few minutes)"
            )
        risk = _number("calibration_risk", self.calibration_risk)
        if not 0.0 < risk <= MAX_CALIBRATION_RISK:
            raise InputError(
                f"calibration_risk: expected a probability in (0, {MAX_CALIBRATION_RISK}], "
                f"got {self.calibration_risk!r}"
            )
        levels = _increasing("levels", self.levels, 0.0, MAX_LEVEL, closed_high=True)
        shifts = _increasing("shifts", self.shifts, 0.0, 1.0, closed_high=False)
        object.__setattr__(self, "ert", ert)
        object.__setattr__(self, "calibration_risk", risk)
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "shifts", shifts)

    @property
    def threshold(self) -> float:
        """The alarm threshold of ``DriftState.statistic``: log10(ert)."""
        return math.log10(self.ert)


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{name}: expected a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise InputError(f"{name}: expected a finite number, got {value!r}")
    return number


def _increasing(
    name: str, values: Sequence[float], low: float, high: float, *, closed_high: bool
) -> tuple[float, ...]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
        raise InputError(f"{name}: expected a non-empty list of numbers, got {values!r}")
    numbers = tuple(_number(name, v) for v in values)
    bracket = "]" if closed_high else ")"
    for v in numbers:
        if not (low < v <= high if closed_high else low < v < high):
            raise InputError(f"{name}: expected values in ({low:g}, {high:g}{bracket}, got {v!r}")
    if any(b <= a for a, b in itertools.pairwise(numbers)):
        raise InputError(f"{name}: expected strictly increasing values, got {list(numbers)}")
    return numbers


@dataclass(frozen=True)
class Alarm:
    """One alarm: ``sample`` the 0-based index (since the last reset) of the sample at which the
    statistic crossed the threshold; ``change_point`` the estimated index of the first drifted
    sample; ``time`` the Unix time of the update that raised it; ``statistic`` its value
    (log10, >= the threshold)."""

    sample: int
    change_point: int
    time: float
    statistic: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "sample": self.sample,
            "change_point": self.change_point,
            "time": self.time,
            "statistic": self.statistic,
        }


@dataclass(frozen=True)
class DriftState:
    """A monitor's state after an update.

    samples: p-values seen since the last reset. statistic: log10 of the mixture CUSUM
    sum_j w_j exp(W_j) (0 = no evidence, ``threshold`` = log10(ert) raises an alarm and restarts
    it). alarms: alarms since the last reset. last_alarm: the latest one (or None).
    change_point: where the current excursion of the statistic began (the estimated first drifted
    sample if it goes on to alarm; None while the statistic is at 0). new_alarms: the alarms raised
    by the ``update`` that returned this state (empty from ``monitor.state``).
    """

    samples: int
    statistic: float
    threshold: float
    alarms: int
    last_alarm: Alarm | None
    change_point: int | None
    new_alarms: tuple[Alarm, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what ``GET /v1/models/{model}/drift`` returns per monitor)."""
        return {
            "samples": self.samples,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "alarms": self.alarms,
            "last_alarm": None if self.last_alarm is None else self.last_alarm.to_dict(),
            "change_point": self.change_point,
        }


@dataclass(frozen=True)
class _Bets:
    """The J betting components: level index, threshold on p, log f when p is at or below it
    (``up``) and above it (``down``), and the upper Beta quantiles q̄ per level."""

    thresholds: np.ndarray  # (K,) p <= thresholds[k] means "at or below level k"
    upper: np.ndarray  # (K,) q̄_k
    level: np.ndarray  # (J,) int, the level of each component
    up: np.ndarray  # (J,)
    down: np.ndarray  # (J,)

    @classmethod
    def build(cls, n_calibration: int | None, settings: DriftSettings) -> _Bets:
        if n_calibration is None:  # exactly uniform p-values: q_k = level, no correction
            thresholds = np.asarray(settings.levels, dtype=np.float64)
            upper = thresholds.copy()
        else:
            from scipy.special import betaincinv

            n = n_calibration
            ks = sorted({max(1, min(n, math.floor(t * (n + 1) + 1e-9))) for t in settings.levels})
            k = np.asarray(ks, dtype=np.float64)
            # p = j / (n + 1) on the grid; half a step of slack keeps float rounding out of it.
            thresholds = (k + 0.5) / (n + 1)
            upper = betaincinv(k, n + 1 - k, 1.0 - settings.calibration_risk / len(ks))
        level, up, down = [], [], []
        for i, q in enumerate(upper):
            for eta in settings.shifts:
                q1 = q + eta * (1.0 - q)
                level.append(i)
                up.append(math.log(q1 / q))
                down.append(math.log1p(-eta))
        return cls(
            thresholds=thresholds,
            upper=np.asarray(upper, dtype=np.float64),
            level=np.asarray(level, dtype=np.intp),
            up=np.asarray(up),
            down=np.asarray(down),
        )

    @property
    def table(self) -> np.ndarray:
        """(J, K + 1): column r holds log f_j(p) for a p-value above exactly r of the thresholds
        (the thresholds increase, so p <= threshold k for every k >= r)."""
        columns = np.arange(len(self.thresholds) + 1)[None, :]
        return np.where(self.level[:, None] >= columns, self.up[:, None], self.down[:, None])

    def increments(self, p: np.ndarray, table: np.ndarray) -> np.ndarray:
        """log f_j(p_i), (J, B) (time along the contiguous axis), with ``table`` =
        ``self.table``: one gather per sample."""
        return table[:, np.searchsorted(self.thresholds, p, side="left")]


def check_p_values(p: object, name: str = "p_values") -> np.ndarray:
    """``p`` as a float64 array of values in (0, 1]; InputError naming ``name`` otherwise."""
    try:
        array = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name}: expected numbers in (0, 1], got {type(p).__name__}") from err
    if array.size and not (np.all(array > 0.0) and np.all(array <= 1.0)):
        bad = array[~((array > 0.0) & (array <= 1.0))].ravel()[0]
        raise InputError(f"{name}: expected p-values in (0, 1], got {bad!r}")
    return array


class DriftMonitor:
    """A change detector over one stream of conformal p-values (module docstring for the math).

    ``n_calibration``: the size n of the calibration set the p-values were computed against
    (p = k / (n + 1)); None for p-values that are exactly uniform on in-distribution data (no
    calibration-conditional correction). ``update`` and ``state`` may be called from any thread.
    """

    def __init__(self, n_calibration: int | None, settings: DriftSettings | None = None) -> None:
        if n_calibration is not None and (
            isinstance(n_calibration, bool) or not isinstance(n_calibration, int | np.integer)
        ):
            raise InputError(f"n_calibration: expected an integer, got {n_calibration!r}")
        if n_calibration is not None and n_calibration < 1:
            raise InputError(f"n_calibration: expected >= 1, got {n_calibration}")
        self.n_calibration = None if n_calibration is None else int(n_calibration)
        self.settings = settings if settings is not None else DriftSettings()
        self._bets = _Bets.build(self.n_calibration, self.settings)
        self._table = self._bets.table
        count = len(self._bets.level)
        self._log_weight = -math.log(count)
        self._log_threshold = math.log(self.settings.ert)
        self._lock = threading.Lock()
        self._w = np.zeros(count)
        self._floor_at = np.full(count, -1, dtype=np.int64)
        self._samples = 0
        self._alarms = 0
        self._last_alarm: Alarm | None = None

    @property
    def components(self) -> int:
        """J, the number of CUSUMs (distinct levels times shifts)."""
        return len(self._bets.level)

    @property
    def upper_rates(self) -> dict[float, float]:
        """{threshold on p: q̄}: the in-distribution rate of p <= threshold that the bets allow
        (the Beta upper quantile; the threshold itself when ``n_calibration`` is None)."""
        return dict(zip(self._bets.thresholds.tolist(), self._bets.upper.tolist(), strict=True))

    def reset(self) -> None:
        """Forget everything: statistic 0, no alarms, sample indices from 0 again."""
        with self._lock:
            self._w[:] = 0.0
            self._floor_at[:] = -1
            self._samples = 0
            self._alarms = 0
            self._last_alarm = None

    @property
    def state(self) -> DriftState:
        with self._lock:
            return self._state(())

    def update(self, p_values: np.ndarray, now: float | None = None) -> DriftState:
        """Feed the p-values (B,) of the next B samples, in stream order; returns the state,
        with the alarms this batch raised in ``new_alarms``. ``now``: the Unix time stamped on
        those alarms (default: the current time)."""
        return self._feed(p_values, now, None)

    def trace(
        self, p_values: np.ndarray, now: float | None = None
    ) -> tuple[DriftState, np.ndarray]:
        """``update``, and also the statistic after each of the B samples (B,) (at an alarm: the
        crossing value; the next sample starts again from the restarted CUSUMs), for plots."""
        path: list[np.ndarray] = []
        state = self._feed(p_values, now, path)
        values = np.concatenate(path) if path else np.zeros(0)
        return state, np.maximum(values, 0.0) / LN10

    def _feed(
        self, p_values: np.ndarray, now: float | None, path: list[np.ndarray] | None
    ) -> DriftState:
        p = check_p_values(p_values)
        if p.ndim != 1:
            raise InputError(f"p_values: expected a 1-d array (B,), got shape {p.shape}")
        stamp = time.time() if now is None else float(now)
        with self._lock:
            if not p.size:
                return self._state(())
            x = self._bets.increments(p, self._table)
            return self._state(self._advance(x, stamp, path))

    def _state(self, raised: tuple[Alarm, ...]) -> DriftState:
        statistic, top = self._statistic(self._w)
        return DriftState(
            samples=self._samples,
            statistic=statistic,
            threshold=self.settings.threshold,
            alarms=self._alarms,
            last_alarm=self._last_alarm,
            change_point=int(self._floor_at[top]) + 1 if self._w[top] > 0.0 else None,
            new_alarms=raised,
        )

    def _statistic(self, w: np.ndarray) -> tuple[float, int]:
        """log10 sum_j w_j exp(W_j) of one row of W, and the dominating component."""
        top = int(np.argmax(w))
        log_sum = w[top] + math.log(np.exp(w - w[top]).sum()) + self._log_weight
        return max(log_sum, 0.0) / LN10, top

    def _advance(
        self, x: np.ndarray, stamp: float, path: list[np.ndarray] | None
    ) -> tuple[Alarm, ...]:
        """Run the CUSUMs over the increments x (J, B), restarting after each alarm; append the
        mixture's natural log per sample to ``path`` if given."""
        raised: list[Alarm] = []
        size = x.shape[1]
        start, span = 0, size
        while start < size:
            # W_i = S_i - min(0, min_{m <= i} S_m) with S = W_0 + cumsum(x): the CUSUM recursion
            # W_i = max(0, W_{i-1} + x_i) in closed form. After an alarm the next window is a few
            # times the gap to it, so a stream that alarms every few samples costs O(B), not O(B^2).
            s = self._w[:, None] + np.cumsum(x[:, start : start + span], axis=1)
            w = s - np.minimum(np.minimum.accumulate(s, axis=1), 0.0)
            if path is not None:
                columns = np.arange(w.shape[1])
            else:  # the mixture is at most max_j W_j (weights sum to 1): only those can cross
                columns = np.flatnonzero(w.max(axis=0) >= self._log_threshold)
            mixture = self._mixture(w[:, columns])
            crossing = np.flatnonzero(mixture >= self._log_threshold)
            end = int(columns[crossing[0]]) if crossing.size else w.shape[1] - 1
            if path is not None:
                path.append(mixture[: end + 1])
            floor_at = self._floors(s[:, : end + 1], self._samples)
            if not crossing.size:
                self._w = w[:, end].copy()
                self._floor_at = floor_at
                self._samples += w.shape[1]
                start += w.shape[1]
                span *= 2
                continue
            at = self._samples + end
            component = int(np.argmax(w[:, end]))
            alarm = Alarm(
                sample=at,
                change_point=int(floor_at[component]) + 1,
                time=stamp,
                statistic=float(mixture[crossing[0]]) / LN10,
            )
            raised.append(alarm)
            self._alarms += 1
            self._last_alarm = alarm
            self._w = np.zeros_like(self._w)
            self._floor_at = np.full_like(self._floor_at, at)
            self._samples = at + 1
            start += end + 1
            span = max(MIN_WINDOW, 4 * (end + 1))
        return tuple(raised)

    def _mixture(self, w: np.ndarray) -> np.ndarray:
        """log sum_j w_j exp(W_j) per column of ``w`` (J, R)."""
        if not w.shape[1]:
            return np.zeros(0)
        top = w.max(axis=0)
        return top + np.log(np.exp(w - top).sum(axis=0)) + self._log_weight

    def _floors(self, s: np.ndarray, offset: int) -> np.ndarray:
        """Per component, the last stream index at which W was 0 within the columns of S ``s``
        (J, R) (column 0 is sample ``offset``), or the carried one if W never touched 0 there.
        W_i = 0 exactly where S_i is <= 0 and a running minimum, so the last such i is the last
        position of the minimum of S, if that minimum is <= 0."""
        backwards = s[:, ::-1]
        last = np.argmin(backwards, axis=1)
        low = backwards[np.arange(s.shape[0]), last]
        return np.where(low <= 0.0, offset + s.shape[1] - 1 - last, self._floor_at)


@dataclass(frozen=True)
class ModelDriftState:
    """The states of one model's monitors: the combined p-value's and each layer's."""

    combined: DriftState
    layers: dict[str, DriftState] = field(default_factory=dict)

    @property
    def new_alarms(self) -> tuple[Alarm, ...]:
        """The model's alarms from the last update (the combined p-value's)."""
        return self.combined.new_alarms

    def statistics(self) -> dict[str, float]:
        """{layer label: statistic}, the combined one as ``COMBINED`` (the metric's labels)."""
        return {COMBINED: self.combined.statistic} | {
            name: state.statistic for name, state in self.layers.items()
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the combined state's fields, plus ``layers`` {name: state}."""
        return self.combined.to_dict() | {
            "layers": {name: state.to_dict() for name, state in self.layers.items()}
        }


class ModelDriftMonitor:
    """One model's monitors: one over the served p-value (its alarms are the model's alarms) and
    one per served layer over the layer p-values (which layer moved; their alarms are reported in
    their states, not counted as the model's). All share ``n_calibration`` and ``settings``."""

    def __init__(
        self,
        n_calibration: int | None,
        layers: Sequence[str] = (),
        settings: DriftSettings | None = None,
    ) -> None:
        if len(set(layers)) != len(layers):
            raise InputError(f"layers: expected distinct names, got {list(layers)}")
        self.settings = settings if settings is not None else DriftSettings()
        self.layers = tuple(layers)
        self.combined = DriftMonitor(n_calibration, self.settings)
        self.per_layer: dict[str, DriftMonitor] = {
            name: DriftMonitor(n_calibration, self.settings) for name in self.layers
        }
        self._lock = threading.Lock()

    def update(
        self, p_value: np.ndarray, layer_p_value: np.ndarray | None = None, now: float | None = None
    ) -> ModelDriftState:
        """Feed one batch: p_value (B,) and, when the model has layers, layer_p_value (B, L) in
        the order of ``layers`` (None: the layer monitors are left as they are)."""
        p = check_p_values(p_value, "p_value")
        if p.ndim != 1:
            raise InputError(f"p_value: expected a 1-d array (B,), got shape {p.shape}")
        columns: Mapping[str, np.ndarray] = {}
        if layer_p_value is not None and self.layers:
            lp = check_p_values(layer_p_value, "layer_p_value")
            if lp.shape != (p.shape[0], len(self.layers)):
                raise InputError(
                    f"layer_p_value: expected shape ({p.shape[0]}, {len(self.layers)}), "
                    f"got {lp.shape}"
                )
            columns = {name: lp[:, i] for i, name in enumerate(self.layers)}
        stamp = time.time() if now is None else float(now)
        with self._lock:
            combined = self.combined.update(p, stamp)
            layers = {
                name: (
                    self.per_layer[name].update(columns[name], stamp)
                    if name in columns
                    else self.per_layer[name].state
                )
                for name in self.layers
            }
            return ModelDriftState(combined, layers)

    @property
    def state(self) -> ModelDriftState:
        with self._lock:
            return ModelDriftState(
                self.combined.state, {name: m.state for name, m in self.per_layer.items()}
            )

    def reset(self) -> None:
        """Reset every monitor of the model (an admin reset, a model reload)."""
        with self._lock:
            self.combined.reset()
            for monitor in self.per_layer.values():
                monitor.reset()
