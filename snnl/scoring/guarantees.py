"""Guarantees of the outlier flag: which calibration set and which level decide it.

Calibration nonconformities a_1..a_n come from in-distribution data scored exactly like queries.
For a query with nonconformity a(x), its rank count against a calibration set S is

    r_S(x) = 1 + #{i in S : a_i >= a(x)},      p_S(x) = r_S(x) / (|S| + 1),

and every guarantee flags x iff r_S(x) <= m, for a number of *flag slots* m fixed by the rule:

``marginal``   S = all n calibration points, m = ceil(alpha (n + 1)) - 1, i.e. flag iff p < alpha.
               For x exchangeable with the calibration points, P(flag) = m / (n + 1) <= alpha,
               on average over calibration draws (split conformal; Vovk et al. 2005).
``class``      S = the n_c calibration points whose *predicted* class is c = prediction(x)
               (Mondrian conformal), m_c = ceil(alpha (n_c + 1)) - 1: P(flag | prediction = c)
               <= alpha for every class c, again on average over calibration draws.
``pac``        S = all n points, m = the largest m with P(Beta(m, n + 1 - m) > alpha) <= delta.
               Given the calibration set, the false-positive rate of the rule r <= m is the mass
               above the m-th largest calibration value, distributed Beta(m, n + 1 - m) over
               calibration draws (continuous scores; Vovk 2012, "Conditional validity of inductive
               conformal predictors"), so P_calibration(FPR > alpha) <= delta.
``fdr = q``    on top of any of them: Benjamini-Hochberg at level q over the marginal p-values of
               one batch. Conformal p-values against one calibration set are positively
               dependent (PRDS), so BH controls the false discovery rate at q (Bates, Candès, Lei,
               Romano & Sesia 2023, "Testing for outliers with conformal p-values").

A rule the calibration size cannot support (no flag slot: alpha < 1/(n + 1), a class with too few
calibration points, (1 - alpha)^n > delta for pac, q < 1/(n + 1)) is refused with an
``InputError`` naming the value and the size, never answered with a flag that cannot fire.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, get_args

import numpy as np
from scipy import stats

from snnl.errors import InputError

Guarantee = Literal["marginal", "class", "pac"]
GUARANTEES: tuple[str, ...] = get_args(Guarantee)
DEFAULT_DELTA = 0.1


@dataclass(frozen=True)
class FlagRule:
    """What decides the flag: ``guarantee`` at level ``alpha`` (``delta`` for ``pac``), and an
    optional batch false discovery rate ``fdr`` = q."""

    guarantee: Guarantee = "marginal"
    alpha: float = 0.05
    delta: float | None = None
    fdr: float | None = None

    def __post_init__(self) -> None:
        if self.guarantee not in GUARANTEES:
            raise InputError(
                f"guarantee must be one of {', '.join(GUARANTEES)}, got {self.guarantee!r}"
            )
        _check_level("alpha", self.alpha)
        if self.delta is not None:
            _check_level("delta", self.delta)
        if self.fdr is not None:
            _check_level("fdr", self.fdr)

    @property
    def pac_delta(self) -> float:
        """delta of a ``pac`` rule (DEFAULT_DELTA when none was given)."""
        return DEFAULT_DELTA if self.delta is None else self.delta


def _check_level(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and 0 < value < 1):
        raise InputError(f"{name} must be a number in (0, 1), got {value!r}")


def marginal_slots(n: int, alpha: float) -> int:
    """m = ceil(alpha (n + 1)) - 1: r <= m  <=>  p = r / (n + 1) < alpha."""
    return max(math.ceil(alpha * (n + 1)) - 1, 0)


@lru_cache(maxsize=256)  # a served model asks for the same few (n, alpha, delta) every batch
def pac_slots(n: int, alpha: float, delta: float) -> int:
    """The largest m in [0, n] with P(Beta(m, n + 1 - m) > alpha) <= delta (0 when even m = 1,
    whose tail is (1 - alpha)^n, fails). The tail grows with m, so a bisection finds it."""
    low, high = 0, n
    while low < high:
        mid = (low + high + 1) // 2
        if stats.beta.sf(alpha, mid, n + 1 - mid) <= delta:
            low = mid
        else:
            high = mid - 1
    return low


def pac_level(n: int, alpha: float, delta: float) -> float:
    """The corrected level m / (n + 1) of a ``pac`` rule: the flag rate on in-distribution data
    on average, at most alpha with probability 1 - delta over calibration draws."""
    return pac_slots(n, alpha, delta) / (n + 1)


def default_calibration_size(
    alpha: float = 0.05, delta: float = DEFAULT_DELTA, efficiency: float = 0.9
) -> int:
    """The smallest n whose ``pac`` level reaches ``efficiency`` * alpha: past it, more
    calibration points buy little (the level approaches alpha as 1 / sqrt(n)) but cost a full
    scoring pass each at build time. 3,000 points at the defaults (alpha 0.05, delta 0.1)."""
    n = 16
    while pac_level(n, alpha, delta) < efficiency * alpha:
        n *= 2
    low, high = n // 2, n
    while low < high:
        mid = (low + high) // 2
        if pac_level(mid, alpha, delta) >= efficiency * alpha:
            high = mid
        else:
            low = mid + 1
    return low


def rank_counts(sorted_nonconformity: np.ndarray, a: np.ndarray) -> np.ndarray:
    """r = 1 + #{i : a_i >= a} (B,) int64 for queries ``a`` (B,), calibration sorted ascending."""
    n = sorted_nonconformity.shape[0]
    below = np.searchsorted(sorted_nonconformity, np.asarray(a, dtype=np.float64), side="left")
    return (1 + n - below).astype(np.int64)


@dataclass(frozen=True)
class ConformalCalibration:
    """The calibration nonconformities, sorted ascending (n,) float64, and per predicted class
    the sorted nonconformities of the calibration points predicted as that class (Mondrian
    calibration; empty when the predictions were not stored)."""

    nonconformity: np.ndarray
    by_class: Mapping[int, np.ndarray]

    @classmethod
    def fit(cls, a: np.ndarray, predicted: np.ndarray | None = None) -> ConformalCalibration:
        """From the calibration nonconformities ``a`` (n,) and their predicted classes (n,)."""
        a = np.asarray(a, dtype=np.float64)
        by_class: dict[int, np.ndarray] = {}
        if predicted is not None:
            predicted = np.asarray(predicted)
            if predicted.shape != a.shape:
                raise ValueError(f"predicted must be {a.shape}, got {predicted.shape}")
            by_class = {int(c): np.sort(a[predicted == c]) for c in np.unique(predicted)}
        return cls(nonconformity=np.sort(a), by_class=by_class)

    @property
    def size(self) -> int:
        """n, the number of calibration points."""
        return int(self.nonconformity.shape[0])

    def check(self, rule: FlagRule, classes: int) -> None:
        """Refuse (InputError) a rule that this calibration set cannot support; ``classes`` is
        the model's number of classes (every class must be supportable for ``class``)."""
        n = self.size
        if rule.guarantee == "marginal" and marginal_slots(n, rule.alpha) < 1:
            raise InputError(
                f"alpha={rule.alpha:g} is below 1/(n_cal + 1) = {1 / (n + 1):.3g} with n_cal={n} "
                "calibration samples: the flag could never fire; use a larger alpha or calibrate "
                "on more samples"
            )
        if rule.guarantee == "class":
            if not self.by_class:
                raise InputError(
                    "guarantee='class' needs per-class calibration, which this model does not "
                    "store: export it again"
                )
            for c in range(classes):
                n_c = int(self.by_class.get(c, np.empty(0)).shape[0])
                if marginal_slots(n_c, rule.alpha) < 1:
                    raise InputError(
                        f"alpha={rule.alpha:g} needs at least {math.ceil(1 / rule.alpha) - 1} "
                        f"calibration samples per predicted class for guarantee='class', but "
                        f"class {c} has n_cal={n_c}"
                    )
        if rule.guarantee == "pac" and pac_slots(n, rule.alpha, rule.pac_delta) < 1:
            raise InputError(
                f"alpha={rule.alpha:g} with delta={rule.pac_delta:g} needs n_cal >= "
                f"{math.ceil(math.log(rule.pac_delta) / math.log1p(-rule.alpha))} calibration "
                f"samples for guarantee='pac', but n_cal={n}"
            )
        if rule.fdr is not None and rule.fdr < 1 / (n + 1):
            raise InputError(
                f"fdr={rule.fdr:g} is below 1/(n_cal + 1) = {1 / (n + 1):.3g} with n_cal={n}: "
                "no sample could ever be flagged"
            )

    def p_values(self, a: np.ndarray) -> np.ndarray:
        """The marginal p-values p = r / (n + 1) (B,) of nonconformities ``a`` (B,)."""
        return rank_counts(self.nonconformity, a) / (self.size + 1.0)

    def decide(self, rule: FlagRule, a: np.ndarray, prediction: np.ndarray) -> FlagDecision:
        """The served p-values and flags of a batch: nonconformities ``a`` (B,) and predicted
        classes (B,). The rule must have passed ``check``."""
        a = np.asarray(a, dtype=np.float64)
        n = self.size
        r = rank_counts(self.nonconformity, a)
        marginal = r / (n + 1.0)
        if rule.guarantee == "class":
            p_value = np.empty_like(marginal)
            outlier = np.empty(a.shape, dtype=bool)
            for c in np.unique(prediction):
                rows = prediction == c
                sorted_c = self.by_class[int(c)]
                r_c = rank_counts(sorted_c, a[rows])
                p_value[rows] = r_c / (sorted_c.shape[0] + 1.0)
                outlier[rows] = r_c <= marginal_slots(sorted_c.shape[0], rule.alpha)
        else:
            slots = (
                pac_slots(n, rule.alpha, rule.pac_delta)
                if rule.guarantee == "pac"
                else marginal_slots(n, rule.alpha)
            )
            p_value = marginal
            outlier = r <= slots
        outlier_fdr = None
        if rule.fdr is not None:
            outlier_fdr = benjamini_hochberg(marginal, rule.fdr)
        return FlagDecision(
            p_value=p_value, outlier=outlier, outlier_fdr=outlier_fdr, marginal_p_value=marginal
        )


@dataclass(frozen=True)
class FlagDecision:
    """p_value (B,) float64 (Mondrian for ``class``, else marginal), outlier (B,) bool,
    outlier_fdr (B,) bool when a batch FDR level was asked for, and the marginal p-values (B,)
    float64 (the same array as p_value unless ``class``)."""

    p_value: np.ndarray
    outlier: np.ndarray
    outlier_fdr: np.ndarray | None
    marginal_p_value: np.ndarray


def benjamini_hochberg(p_value: np.ndarray, q: float) -> np.ndarray:
    """Rejections (B,) bool of Benjamini-Hochberg at level q: adjusted p-values (scipy's
    ``false_discovery_control``) at most q."""
    p = np.asarray(p_value, dtype=np.float64)
    if p.size == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(stats.false_discovery_control(p, method="bh") <= q)
