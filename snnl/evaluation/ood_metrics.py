"""OOD detection metrics via scikit-learn, with in-distribution (ID) samples as the positive class.

Every detector here gives a score where higher means "more in-distribution". With ID = 1 and
OOD = 0:

* ``auroc``: area under the ROC curve (``roc_auc_score``); 0.5 is chance, 1 is perfect.
* ``fpr95``: the fraction of OOD samples accepted when the threshold keeps 95% of the ID
  samples (the smallest false-positive rate among ROC points with TPR >= 0.95).
* ``aupr``: average precision with ID as the positive class (``average_precision_score``),
  often called AUPR-In;
* ``aupr_out``: average precision with OOD as the positive class and the negated score
  (AUPR-Out, OpenOOD's second precision-recall figure).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from snnl.errors import InputError

TPR_LEVEL = 0.95


@dataclass(frozen=True)
class OODMetrics:
    """AUROC, FPR at 95% TPR, AUPR-In (``aupr``, ID positive) and AUPR-Out (OOD positive) of
    one detector on one ID/OOD pair."""

    auroc: float
    fpr95: float
    aupr: float
    aupr_out: float

    def as_dict(self) -> dict[str, float]:
        """{"auroc", "fpr95", "aupr", "aupr_out"} as plain floats."""
        return asdict(self)

    @classmethod
    def mean(cls, metrics: list[OODMetrics]) -> OODMetrics:
        """The field-wise mean of ``metrics`` (a group of OOD sets, OpenOOD's near/far rows)."""
        if not metrics:
            raise InputError("mean of OOD metrics: give at least one")
        return cls(**{k: float(np.mean([m.as_dict()[k] for m in metrics])) for k in HIGHER})


# Every metric field and whether a higher value is better (FPR95 is better when lower).
HIGHER: dict[str, bool] = {"auroc": True, "fpr95": False, "aupr": True, "aupr_out": True}


def _check_scores(scores: np.ndarray, field: str) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(
            f"{field}: expected a non-empty 1-D array of scores, got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise InputError(
            f"{field}: scores must be finite, found {int(np.sum(~np.isfinite(arr)))} NaN/inf"
        )
    return arr


def labels_and_scores(
    id_scores: np.ndarray, ood_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated labels (1 = ID, 0 = OOD) and float64 scores after validation."""
    id_arr = _check_scores(id_scores, "id_scores")
    ood_arr = _check_scores(ood_scores, "ood_scores")
    labels = np.concatenate(
        [np.ones(id_arr.size, dtype=np.int64), np.zeros(ood_arr.size, dtype=np.int64)]
    )
    return labels, np.concatenate([id_arr, ood_arr])


def fpr_at_tpr(labels: np.ndarray, scores: np.ndarray, tpr_level: float = TPR_LEVEL) -> float:
    """min FPR over ROC operating points with TPR >= ``tpr_level`` (labels 1 = positive)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.min(fpr[tpr >= tpr_level]))


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> OODMetrics:
    """Metrics of a detector from its scores (higher = more ID) on ID (n,) and OOD (m,) samples.

    Raises ``InputError`` when either side is empty or a score is NaN or infinite.
    """
    labels, scores = labels_and_scores(id_scores, ood_scores)
    return OODMetrics(
        auroc=float(roc_auc_score(labels, scores)),
        fpr95=fpr_at_tpr(labels, scores),
        aupr=float(average_precision_score(labels, scores)),
        aupr_out=float(average_precision_score(1 - labels, -scores)),
    )
