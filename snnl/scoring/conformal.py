"""The calibration of a served model: conformal p-values, per-layer p-values, the flag's rule.

With n calibration points scored exactly like queries (docs/method.md):

    a(x)   = the nonconformity of the manifest's kind (snnl.scoring.nonconformity)
    p(x)   = (1 + #{i : a_i >= a(x)}) / (n + 1)                  (marginal p-value)
    p_l(x) = (1 + #{i : s_l,i <= s_l(x)}) / (n + 1)              (per-layer p-values)

and the outlier flag is decided by a ``FlagRule`` (``marginal``, ``class``, ``pac``, optional
batch ``fdr``): the math of the flag lives in snnl.scoring.guarantees, which this module's
``Calibration`` delegates to; here are the per-layer scores and the file format.

calibration.safetensors holds ``nonconformity`` (n,) float64 sorted ascending, ``scores.<layer>``
(n,) float64 sorted ascending, and ``predicted`` (n,) int64: the predicted class of each
calibration point, aligned with ``nonconformity`` (the Mondrian calibration of ``class``). A file
without ``predicted`` (exported before it existed) serves every rule but ``class``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from snnl.errors import RepositoryError
from snnl.scoring.guarantees import (
    ConformalCalibration,
    FlagDecision,
    FlagRule,
    marginal_slots,
    pac_slots,
)
from snnl.scoring.nonconformity import neg_log_score


@dataclass(frozen=True)
class Calibration:
    """The conformal calibration (sorted nonconformities, per predicted class when known), the
    predicted class of each sorted calibration point (n,) int64 or None, and the sorted
    per-layer scores s_l (n,) float64 per layer."""

    layers: tuple[str, ...]
    conformal: ConformalCalibration
    predicted: np.ndarray | None
    scores: dict[str, np.ndarray]

    @classmethod
    def fit(
        cls,
        layers: Sequence[str],
        log_score: np.ndarray,
        a: np.ndarray | None = None,
        predicted: np.ndarray | None = None,
    ) -> Calibration:
        """Calibration from the log-scores (n, L) of the calibration points, layers in order,
        their nonconformities ``a`` (n,) (default: ``neg_log_score(log_score)``) and their
        predicted classes (n,) (None: no ``class`` guarantee)."""
        log_score = np.asarray(log_score, dtype=np.float64)
        if log_score.ndim != 2 or log_score.shape[1] != len(layers) or log_score.shape[0] < 1:
            raise ValueError(f"log_score must be (n >= 1, L={len(layers)}), got {log_score.shape}")
        a = neg_log_score(log_score) if a is None else np.asarray(a, dtype=np.float64)
        if a.shape != (log_score.shape[0],) or not np.all(np.isfinite(a)):
            raise ValueError(f"a must be ({log_score.shape[0]},) finite, got {a.shape}")
        order = np.argsort(a, kind="stable")
        if predicted is not None:
            predicted = np.asarray(predicted, dtype=np.int64)
            if predicted.shape != a.shape:
                raise ValueError(f"predicted must be {a.shape}, got {predicted.shape}")
            predicted = predicted[order]
        return cls._sorted(
            layers,
            a[order],
            predicted,
            {name: np.sort(np.exp(log_score[:, i])) for i, name in enumerate(layers)},
        )

    @classmethod
    def _sorted(
        cls,
        layers: Sequence[str],
        nonconformity: np.ndarray,
        predicted: np.ndarray | None,
        scores: dict[str, np.ndarray],
    ) -> Calibration:
        return cls(
            layers=tuple(layers),
            conformal=ConformalCalibration.fit(nonconformity, predicted),
            predicted=predicted,
            scores=scores,
        )

    @property
    def nonconformity(self) -> np.ndarray:
        """The calibration nonconformities (n,) float64, sorted ascending."""
        return self.conformal.nonconformity

    @property
    def size(self) -> int:
        """n, the number of calibration points."""
        return self.conformal.size

    def p_value(self, a: np.ndarray) -> np.ndarray:
        """The marginal p = (1 + #{a_i >= a}) / (n + 1) for each nonconformity in ``a`` (B,)."""
        return self.conformal.p_values(a)

    def check(self, rule: FlagRule, classes: int) -> None:
        """InputError (naming the value and n_cal) for a rule this calibration cannot support."""
        self.conformal.check(rule, classes)

    def decide(self, rule: FlagRule, a: np.ndarray, prediction: np.ndarray) -> FlagDecision:
        """p-values and flags of nonconformities ``a`` (B,) predicted as ``prediction`` (B,)
        under a checked ``rule``."""
        return self.conformal.decide(rule, a, prediction)

    def layer_p_values(self, log_score: np.ndarray) -> np.ndarray:
        """p_l = (1 + #{s_l,i <= s_l}) / (n + 1), (B, L) from log s_l (B, L)."""
        s = np.exp(np.asarray(log_score, dtype=np.float64))
        columns = [
            np.searchsorted(self.scores[name], s[:, i], side="right")
            for i, name in enumerate(self.layers)
        ]
        return (1.0 + np.stack(columns, axis=1)) / (self.size + 1.0)

    def class_sizes(self, classes: int) -> list[int]:
        """Calibration points per predicted class 0..classes-1 (empty: not stored)."""
        if self.predicted is None:
            return []
        return np.bincount(self.predicted, minlength=classes)[:classes].tolist()

    def summary(self, rule: FlagRule, classes: int) -> dict[str, object]:
        """JSON-ready description: n, the rule, calibration points per predicted class,
        nonconformity quantiles (5, 50, 95%), per-layer score quantiles, and ``flag_threshold``:
        a is flagged under ``rule`` iff a > flag_threshold (None when the flag does not depend
        on a alone: never or always set, or guarantee "class")."""
        n = self.size
        # flag  <=>  r = 1 + #{a_i >= a} <= m  <=>  a > the m-th largest a_i.
        m = (
            pac_slots(n, rule.alpha, rule.pac_delta)
            if rule.guarantee == "pac"
            else marginal_slots(n, rule.alpha)
        )
        if rule.guarantee == "class":
            m = 0
        threshold = float(self.nonconformity[n - m]) if 1 <= m <= n else None

        def quantiles(values: np.ndarray) -> dict[str, float]:
            q = np.quantile(values, [0.05, 0.5, 0.95])
            return {"p05": float(q[0]), "p50": float(q[1]), "p95": float(q[2])}

        return {
            "size": n,
            "alpha": rule.alpha,
            "guarantee": rule.guarantee,
            "delta": rule.pac_delta if rule.guarantee == "pac" else None,
            "class_sizes": self.class_sizes(classes),
            "nonconformity": quantiles(self.nonconformity),
            "flag_threshold": threshold,
            "layers": {name: quantiles(self.scores[name]) for name in self.layers},
        }

    def to_bytes(self) -> bytes:
        """calibration.safetensors: ``nonconformity`` and ``scores.<layer>`` sorted, float64,
        and ``predicted`` int64 aligned with ``nonconformity`` when known."""
        tensors = {"nonconformity": torch.from_numpy(self.nonconformity.copy())}
        if self.predicted is not None:
            tensors["predicted"] = torch.from_numpy(self.predicted.astype(np.int64))
        for name in self.layers:
            tensors[f"scores.{name}"] = torch.from_numpy(self.scores[name].copy())
        return save_safetensors(tensors)

    @classmethod
    def from_bytes(cls, data: bytes, layers: Sequence[str], source: str | Path) -> Calibration:
        """Parse calibration.safetensors for ``layers``; RepositoryError names ``source``."""
        try:
            tensors = load_safetensors(data)
        except Exception as err:
            raise RepositoryError(f"{source}: not a readable safetensors file ({err})") from err
        names = ["nonconformity", *(f"scores.{name}" for name in layers)]
        arrays = {}
        for key in names:
            if key not in tensors:
                raise RepositoryError(f"{source}: missing tensor {key!r}")
            value = tensors[key].numpy()
            if (
                value.ndim != 1
                or value.dtype != np.float64
                or not np.all(np.isfinite(value))
                or np.any(np.diff(value) < 0)
            ):
                raise RepositoryError(
                    f"{source}: {key!r} must be (n,) finite float64 sorted ascending"
                )
            arrays[key] = value
        n = arrays["nonconformity"].shape[0]
        if len({a.shape[0] for a in arrays.values()}) != 1 or n == 0:
            raise RepositoryError(f"{source}: calibration arrays must share one length n >= 1")
        predicted = None
        if "predicted" in tensors:
            predicted = tensors["predicted"].numpy()
            if predicted.shape != (n,) or predicted.dtype != np.int64 or np.any(predicted < 0):
                raise RepositoryError(
                    f"{source}: 'predicted' must be ({n},) int64 class indices >= 0"
                )
        return cls._sorted(
            layers,
            arrays["nonconformity"],
            predicted,
            {name: arrays[f"scores.{name}"] for name in layers},
        )
