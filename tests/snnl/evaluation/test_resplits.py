"""The re-split plot of the flag's false-positive rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from snnl.evaluation.resplits import FILE, plot_resplits, resplit_fpr


def test_mean_flag_rate_over_resplits_is_at_most_alpha(tmp_path: Path) -> None:
    a = np.random.default_rng(0).standard_exponential(2000)
    alphas = (0.0001, 0.05, 0.2)
    rates = resplit_fpr(a, alphas, repeats=100, seed=1)
    assert rates.shape == (100, 3) and np.isnan(rates[:, 0]).all()  # 1e-4 < 1/(n_cal + 1)
    # (ceil(alpha (n+1)) - 1) / (n+1) <= alpha on average; the sd of the mean is about 0.001.
    assert abs(rates[:, 1].mean() - 0.05) < 0.005 and abs(rates[:, 2].mean() - 0.2) < 0.01
    path = plot_resplits(a, tmp_path, repeats=20)
    assert path == tmp_path / FILE and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
