"""snnl: the Soft Nearest Neighbor Loss, SNNL training, and soft-neighbor OOD detection.

Public names are imported on first use, so ``import snnl`` is cheap, and a program that uses
only the loss (``snnl.soft_nearest_neighbor_loss``, ``snnl.SNNLoss``) never loads ONNX Runtime
or the scoring code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC: dict[str, str] = {
    "Detector": "snnl.model.detector",
    "LayerTaps": "snnl.core.taps",
    "SNNLoss": "snnl.training.loss",
    "ScoreResult": "snnl.scoring.results",
    "entanglement": "snnl.core.temperature",
    "optimal_temperature": "snnl.core.temperature",
    "pairwise_distances": "snnl.core.distances",
    "soft_nearest_neighbor_loss": "snnl.core.functional",
}

__all__ = [
    "Detector",
    "LayerTaps",
    "SNNLoss",
    "ScoreResult",
    "__version__",
    "entanglement",
    "optimal_temperature",
    "pairwise_distances",
    "soft_nearest_neighbor_loss",
]

if TYPE_CHECKING:
    from snnl.core.distances import pairwise_distances
    from snnl.core.functional import soft_nearest_neighbor_loss
    from snnl.core.taps import LayerTaps
    from snnl.core.temperature import entanglement, optimal_temperature
    from snnl.model.detector import Detector
    from snnl.scoring.results import ScoreResult
    from snnl.training.loss import SNNLoss


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access (PEP 562)."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'snnl' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
