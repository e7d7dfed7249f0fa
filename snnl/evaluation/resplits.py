"""The outlier flag's false-positive rate over random calibration/test re-splits of ID scores.

The ID set's nonconformities a(x) (scored once, ``Evaluation.id_scores``) are split at random,
``repeats`` times, into a calibration half and a test half; the marginal flag (p < alpha,
snnl.scoring.guarantees) is calibrated on the first and its flag rate measured on the second.
Split conformal promises a mean flag rate of at most alpha over such draws (exchangeable data):
the plot shows the mean and the 5-95% band of the rate against alpha, with the line y = x.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from snnl.scoring.guarantees import ConformalCalibration, FlagRule

ALPHAS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
FILE = "fpr_resplits.png"


def resplit_fpr(
    nonconformity: np.ndarray,
    alphas: Sequence[float] = ALPHAS,
    *,
    repeats: int = 200,
    calibration_share: float = 0.5,
    seed: int = 0,
) -> np.ndarray:
    """Flag rates (repeats, len(alphas)) on the test part of random re-splits of the ID
    nonconformities (N,); alphas below 1/(n_cal + 1) get NaN (the flag cannot fire)."""
    a = np.asarray(nonconformity, dtype=np.float64)
    n_cal = round(calibration_share * a.shape[0])
    rng = np.random.default_rng(seed)
    rates = np.full((repeats, len(alphas)), np.nan)
    for r in range(repeats):
        order = rng.permutation(a.shape[0])
        calibration = ConformalCalibration.fit(a[order[:n_cal]])
        test = a[order[n_cal:]]
        for j, alpha in enumerate(alphas):
            if alpha * (n_cal + 1) > 1:
                rule = FlagRule("marginal", alpha)
                rates[r, j] = calibration.decide(rule, test, np.zeros(len(test))).outlier.mean()
    return rates


def plot_resplits(nonconformity: np.ndarray, folder: str | Path, **options: object) -> Path:
    """Write ``folder/fpr_resplits.png``: the mean flag rate and its 5-95% band over re-splits
    against alpha, and y = x; returns its path."""
    alphas = np.asarray(ALPHAS)
    rates = resplit_fpr(nonconformity, ALPHAS, **options)  # type: ignore[arg-type]
    mean = np.nanmean(rates, axis=0)
    low, high = np.nanpercentile(rates, [5, 95], axis=0)
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.plot([0, alphas.max()], [0, alphas.max()], color="0.5", ls="--", lw=1, label="y = alpha")
    ax.fill_between(alphas, low, high, color="tab:blue", alpha=0.25, label="5-95% of re-splits")
    ax.plot(alphas, mean, "o-", color="tab:blue", label=f"mean of {rates.shape[0]} re-splits")
    ax.set_xlabel("alpha")
    ax.set_ylabel("flag rate on held-out ID samples (FPR)")
    ax.set_title(
        f"Marginal flag, calibration/test re-splits of {len(nonconformity)} ID", fontsize=10
    )
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(folder) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
