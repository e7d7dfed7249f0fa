"""The kinds of nonconformity a(x) a model can serve, as plain (frozen) dataclasses.

The model manifest stores one of these (``kind`` tells which); the math that fits and applies
them (snnl.scoring.neighbor_mass, snnl.scoring.conformal) works on these plain values and never
sees the manifest. Each checks its own values on construction (ValueError), so a manifest that
holds an invalid one fails to validate. The method is described in docs/method.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from snnl.core.distances import Distance

NONCONFORMITY_KINDS: tuple[str, ...] = ("neighbor-mass", "neg-log-score")


@dataclass(frozen=True)
class MassTerm:
    """One term of the neighbor-mass nonconformity: m of ``layer`` under ``distance`` at
    ``temperature`` (> 0), standardized as (m - mean) / std (std > 0)."""

    layer: str
    distance: Distance
    temperature: float
    mean: float
    std: float

    def __post_init__(self) -> None:
        if not self.layer:
            raise ValueError("layer: expected a non-empty layer name")
        for name in ("temperature", "mean", "std"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name}: expected a finite number, got {getattr(self, name)}")
        if not self.temperature > 0 or not self.std > 0:
            raise ValueError(f"temperature and std must be > 0, got {self.temperature}, {self.std}")


@dataclass(frozen=True)
class NeighborMass:
    """a(x) = -sum_terms (m_t(x) - mean_t) / std_t, m_t the soft-neighbor mass of the predicted
    class (snnl.scoring.neighbor_mass); temperatures by the perplexity rule at ``perplexity``
    (> 1); at least one term."""

    perplexity: float
    terms: list[MassTerm]
    kind: Literal["neighbor-mass"] = "neighbor-mass"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.perplexity) and self.perplexity > 1):
            raise ValueError(f"perplexity: expected a finite number > 1, got {self.perplexity}")
        if not self.terms:
            raise ValueError("terms: expected at least one term")


@dataclass(frozen=True)
class NegLogScore:
    """a(x) = sum_l -log max(s_l(x), 1e-12) (snnl.scoring.conformal.nonconformity)."""

    kind: Literal["neg-log-score"] = "neg-log-score"
