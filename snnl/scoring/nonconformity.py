"""The kinds of nonconformity a(x) a model can serve, as plain (frozen) dataclasses.

The model manifest stores one of these (``kind`` tells which); each computes its a(x) from a
batch's scores (``apply``) and names the neighbor-mass terms the scorer must sum for it
(``mass_terms``). Fitting the neighbor-mass kind is snnl.scoring.neighbor_mass; p-values from
the calibration's sorted a(x) are snnl.scoring.conformal. Each checks its own values on
construction (ValueError), so a manifest that holds an invalid one fails to validate. The method
is described in docs/method.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from snnl.core.distances import Distance
from snnl.scoring.scorer import BatchScores, MassTermKey

NONCONFORMITY_KINDS: tuple[str, ...] = ("neighbor-mass", "neg-log-score")
SCORE_FLOOR = 1e-12
_LOG_FLOOR = math.log(SCORE_FLOOR)


def neg_log_score(log_score: np.ndarray) -> np.ndarray:
    """a = sum_l -log max(s_l, 1e-12) (B,) from log s_l (B, L); -inf (s = 0) counts as 1e-12."""
    floored = np.maximum(np.asarray(log_score, dtype=np.float64), _LOG_FLOOR)
    return 0.0 - floored.sum(axis=1)  # 0.0 - x: no negative zero when every s_l = 1


@dataclass(frozen=True)
class MassTerm:
    """One term of the neighbor-mass nonconformity: m of ``layer`` under ``distance`` at
    ``temperature`` (> 0), standardized as z = (m - mean) / std (std > 0). It adds -w z to
    a(x), w = ``weight`` (> 0); a one-sided term (``floor`` set) adds w max(0, floor - z)
    instead: nothing while z stays at or above the floor, the shortfall below it otherwise."""

    layer: str
    distance: Distance
    temperature: float
    mean: float
    std: float
    floor: float | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.layer:
            raise ValueError("layer: expected a non-empty layer name")
        for name in ("temperature", "mean", "std", "weight"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name}: expected a finite number, got {getattr(self, name)}")
        if not self.temperature > 0 or not self.std > 0 or not self.weight > 0:
            raise ValueError(
                "temperature, std and weight must be > 0, got "
                f"{self.temperature}, {self.std}, {self.weight}"
            )
        if self.floor is not None and not math.isfinite(self.floor):
            raise ValueError(f"floor: expected a finite number or null, got {self.floor}")


@dataclass(frozen=True)
class NeighborMass:
    """a(x) = sum_t w_t c_t(x) over the terms, c_t = -z_t or, for a one-sided term, max(0,
    floor_t - z_t), with w_t the term's weight (1 unless chosen at export), z_t = (m_t(x) -
    mean_t) / std_t and m_t the soft-neighbor mass of the predicted class
    (snnl.scoring.neighbor_mass); temperatures by the perplexity rule at ``perplexity`` (> 1);
    at least one term that is not one-sided."""

    perplexity: float
    terms: list[MassTerm]
    kind: Literal["neighbor-mass"] = "neighbor-mass"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.perplexity) and self.perplexity > 1):
            raise ValueError(f"perplexity: expected a finite number > 1, got {self.perplexity}")
        if not self.terms:
            raise ValueError("terms: expected at least one term")
        if all(t.floor is not None for t in self.terms):
            raise ValueError("terms: expected at least one term without a floor (two-sided)")

    @property
    def mass_terms(self) -> tuple[MassTermKey, ...]:
        """(layer, distance, temperature) of each term, in order: what the scorer sums."""
        return tuple((t.layer, t.distance, t.temperature) for t in self.terms)

    def apply(self, scores: BatchScores) -> np.ndarray:
        """a (B,) of a batch from its neighbor masses at the predicted class."""
        return self.from_log_mass(scores.log_mass)

    def from_log_mass(self, log_mass: np.ndarray) -> np.ndarray:
        """a (B,) = sum_t w_t c_t from the terms' masses ``log_mass`` (B, K)."""
        m = np.asarray(log_mass, dtype=np.float64)
        if m.ndim != 2 or m.shape[1] != len(self.terms):
            raise ValueError(f"log_mass must be (B, {len(self.terms)}), got {m.shape}")
        mean = np.array([t.mean for t in self.terms])
        std = np.array([t.std for t in self.terms])
        floor = np.array([np.nan if t.floor is None else t.floor for t in self.terms])
        weight = np.array([t.weight for t in self.terms])
        z = (m - mean) / std
        one_sided = ~np.isnan(floor)
        contribution = np.where(one_sided, np.maximum(floor - z, 0.0), 0.0 - z)
        return (contribution * weight).sum(axis=1)


@dataclass(frozen=True)
class NegLogScore:
    """a(x) = sum_l -log max(s_l(x), 1e-12) (``neg_log_score``)."""

    kind: Literal["neg-log-score"] = "neg-log-score"

    @property
    def mass_terms(self) -> tuple[MassTermKey, ...]:
        """None: this kind needs the soft-neighbor scores only."""
        return ()

    def apply(self, scores: BatchScores) -> np.ndarray:
        """a (B,) of a batch from its per-layer scores."""
        return neg_log_score(scores.log_score)
