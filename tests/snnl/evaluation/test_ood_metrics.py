"""OOD metrics against slow float64 formulas (pairwise AUROC, threshold sweep for FPR95 and AP)."""

from __future__ import annotations

import numpy as np
import pytest

from snnl.errors import InputError
from snnl.evaluation.ood_metrics import HIGHER, OODMetrics, ood_metrics


def slow_auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """P(score_id > score_ood) + 0.5 P(tie), over all pairs."""
    total = 0.0
    for a in id_scores:
        for b in ood_scores:
            total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / (len(id_scores) * len(ood_scores))


def slow_fpr95(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Smallest FPR over thresholds t (accept score >= t) that keep >= 95% of ID."""
    best = 1.0
    for t in np.concatenate([id_scores, ood_scores]):
        tpr = np.mean(id_scores >= t)
        if tpr >= 0.95:
            best = min(best, float(np.mean(ood_scores >= t)))
    return best


def slow_aupr(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Average precision, ID positive: sum over distinct thresholds of (R_n - R_{n-1}) P_n."""
    total, prev_recall = 0.0, 0.0
    for t in sorted(set(np.concatenate([id_scores, ood_scores]).tolist()), reverse=True):
        tp = np.sum(id_scores >= t)
        fp = np.sum(ood_scores >= t)
        recall = tp / len(id_scores)
        total += (recall - prev_recall) * tp / (tp + fp)
        prev_recall = recall
    return float(total)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_slow_formulas(seed: int) -> None:
    rng = np.random.default_rng(seed)
    id_scores = np.round(rng.normal(1.0, 1.0, 60), 1)  # rounding makes ties
    ood_scores = np.round(rng.normal(0.0, 1.0, 45), 1)
    m = ood_metrics(id_scores, ood_scores)
    assert m.auroc == pytest.approx(slow_auroc(id_scores, ood_scores), abs=1e-12)
    assert m.fpr95 == pytest.approx(slow_fpr95(id_scores, ood_scores), abs=1e-12)
    assert m.aupr == pytest.approx(slow_aupr(id_scores, ood_scores), abs=1e-12)
    # AUPR-Out: OOD is the positive class, ranked by the negated score.
    assert m.aupr_out == pytest.approx(slow_aupr(-ood_scores, -id_scores), abs=1e-12)


def test_id_is_the_positive_class() -> None:
    m = ood_metrics(np.array([2.0, 3.0, 4.0]), np.array([0.0, 1.0]))
    assert (m.auroc, m.fpr95, m.aupr, m.aupr_out) == (1.0, 0.0, 1.0, 1.0)
    flipped = ood_metrics(np.array([0.0, 1.0]), np.array([2.0, 3.0, 4.0]))
    assert flipped.auroc == 0.0
    assert flipped.fpr95 == 1.0
    assert flipped.as_dict().keys() == {"auroc", "fpr95", "aupr", "aupr_out"}


def test_mean_of_a_group() -> None:
    a = OODMetrics(auroc=0.9, fpr95=0.2, aupr=0.8, aupr_out=0.7)
    b = OODMetrics(auroc=0.7, fpr95=0.4, aupr=0.6, aupr_out=0.5)
    mean = OODMetrics.mean([a, b]).as_dict()
    assert mean == pytest.approx({"auroc": 0.8, "fpr95": 0.3, "aupr": 0.7, "aupr_out": 0.6})
    assert set(HIGHER) == set(a.as_dict()) and HIGHER["fpr95"] is False
    with pytest.raises(InputError, match="at least one"):
        OODMetrics.mean([])


@pytest.mark.parametrize(
    ("id_scores", "ood_scores", "field"),
    [
        (np.array([]), np.array([1.0]), "id_scores"),
        (np.array([1.0]), np.array([]), "ood_scores"),
        (np.array([1.0, np.nan]), np.array([0.0]), "id_scores"),
        (np.array([1.0]), np.array([-np.inf]), "ood_scores"),
        (np.ones((2, 2)), np.array([0.0]), "id_scores"),
    ],
)
def test_refuses_bad_inputs(id_scores: np.ndarray, ood_scores: np.ndarray, field: str) -> None:
    with pytest.raises(InputError, match=field):
        ood_metrics(id_scores, ood_scores)
