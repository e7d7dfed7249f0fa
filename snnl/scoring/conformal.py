"""Conformal calibration of the soft-neighbor scores: nonconformity, p-values, the outlier flag.

With n calibration points scored exactly like queries (docs/method.md):

    a(x)   = sum_l -log max(s_l(x), 1e-12)       (kind "neg-log-score"; the served default is
                                                  "neighbor-mass": snnl.scoring.nonconformity)
    p(x)   = (1 + #{i : a_i >= a(x)}) / (n + 1)
    p_l(x) = (1 + #{i : s_l,i <= s_l(x)}) / (n + 1)
    outlier(x) = p(x) < alpha

For a query exchangeable with the calibration points, P(p(x) < alpha) <= alpha: the rank of a(x)
among the n + 1 values is uniform, so the flag rate is (ceil(alpha (n+1)) - 1) / (n+1) exactly
when there are no ties.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from snnl.errors import RepositoryError
from snnl.scoring.nonconformity import neg_log_score


@dataclass(frozen=True)
class Calibration:
    """Sorted calibration nonconformities (n,) and per-layer scores s_l (n,) per layer, float64."""

    layers: tuple[str, ...]
    nonconformity: np.ndarray
    scores: dict[str, np.ndarray]

    @classmethod
    def fit(
        cls, layers: Sequence[str], log_score: np.ndarray, a: np.ndarray | None = None
    ) -> Calibration:
        """Calibration from the log-scores (n, L) of the calibration points, layers in order,
        and their nonconformities ``a`` (n,) (default: ``neg_log_score(log_score)``)."""
        log_score = np.asarray(log_score, dtype=np.float64)
        if log_score.ndim != 2 or log_score.shape[1] != len(layers) or log_score.shape[0] < 1:
            raise ValueError(f"log_score must be (n >= 1, L={len(layers)}), got {log_score.shape}")
        a = neg_log_score(log_score) if a is None else np.asarray(a, dtype=np.float64)
        if a.shape != (log_score.shape[0],) or not np.all(np.isfinite(a)):
            raise ValueError(f"a must be ({log_score.shape[0]},) finite, got {a.shape}")
        return cls(
            layers=tuple(layers),
            nonconformity=np.sort(a),
            scores={name: np.sort(np.exp(log_score[:, i])) for i, name in enumerate(layers)},
        )

    @property
    def size(self) -> int:
        """n, the number of calibration points."""
        return int(self.nonconformity.shape[0])

    def p_value(self, a: np.ndarray) -> np.ndarray:
        """p = (1 + #{a_i >= a}) / (n + 1) for each nonconformity in ``a`` (B,)."""
        n = self.size
        below = np.searchsorted(self.nonconformity, np.asarray(a, dtype=np.float64), side="left")
        return (1.0 + n - below) / (n + 1.0)

    def layer_p_values(self, log_score: np.ndarray) -> np.ndarray:
        """p_l = (1 + #{s_l,i <= s_l}) / (n + 1), (B, L) from log s_l (B, L)."""
        s = np.exp(np.asarray(log_score, dtype=np.float64))
        columns = [
            np.searchsorted(self.scores[name], s[:, i], side="right")
            for i, name in enumerate(self.layers)
        ]
        return (1.0 + np.stack(columns, axis=1)) / (self.size + 1.0)

    def summary(self, alpha: float) -> dict[str, object]:
        """JSON-ready description: n, nonconformity quantiles (5, 50, 95%), per-layer score
        quantiles, and ``flag_threshold``: a is flagged at ``alpha`` iff a > flag_threshold
        (None when the flag does not depend on a: never or always set)."""
        n = self.size
        # p < alpha  <=>  #{a_i >= a} <= m - 1, m = ceil(alpha (n+1) - 1)  <=>  a > m-th largest.
        m = math.ceil(alpha * (n + 1) - 1)
        threshold = float(self.nonconformity[n - m]) if 1 <= m <= n else None

        def quantiles(values: np.ndarray) -> dict[str, float]:
            q = np.quantile(values, [0.05, 0.5, 0.95])
            return {"p05": float(q[0]), "p50": float(q[1]), "p95": float(q[2])}

        return {
            "size": n,
            "alpha": alpha,
            "nonconformity": quantiles(self.nonconformity),
            "flag_threshold": threshold,
            "layers": {name: quantiles(self.scores[name]) for name in self.layers},
        }

    def to_bytes(self) -> bytes:
        """calibration.safetensors: ``nonconformity`` and ``scores.<layer>``, sorted, float64."""
        tensors = {"nonconformity": torch.from_numpy(self.nonconformity.copy())}
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
        if len({a.shape[0] for a in arrays.values()}) != 1 or arrays["nonconformity"].size == 0:
            raise RepositoryError(f"{source}: calibration arrays must share one length n >= 1")
        return cls(
            layers=tuple(layers),
            nonconformity=arrays["nonconformity"],
            scores={name: arrays[f"scores.{name}"] for name in layers},
        )


def flag(p_value: np.ndarray, alpha: float) -> np.ndarray:
    """outlier = p < alpha, (B,) bool."""
    return np.asarray(p_value) < alpha
