"""The committed default model (models/digits-mlp, built by `make models`) loads and scores the
digits test split as recorded in its manifest."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from snnl.model.detector import Detector
from snnl.training.data import load_dataset, split_dataset

REPOSITORY = Path(__file__).resolve().parents[1] / "models"


def test_default_model_scores_as_recorded() -> None:
    folder = REPOSITORY / "digits-mlp"
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5 * 2**20
    det = Detector.load(REPOSITORY, "digits-mlp", device="cpu")  # verifies every sha256
    run = det.manifest.provenance["run"]
    assert run["dataset"] == "digits" and run["classes"] is None and run["factor"] != 0
    assert det.class_names == tuple(str(c) for c in range(10))
    split = split_dataset(
        load_dataset("digits"),
        calibration_fraction=run["calibration_fraction"],
        test_fraction=run["test_fraction"],
        seed=run["seed"],
    )
    recorded = det.manifest.provenance["test"]
    n = len(split.y_test)
    assert recorded["size"] == n
    result = det.score(split.x_test)
    # Equal up to one sample (another CPU may round a borderline score differently).
    assert abs(np.mean(result.prediction == split.y_test) - recorded["accuracy"]) <= 1 / n
    assert abs(result.outlier.mean() - recorded["flag_rate"]) <= 1 / n
    assert recorded["accuracy"] > 0.95
    # One fixed split, so the check is deterministic: the flag rate lies within 3 standard
    # deviations of alpha (binomial noise of the test points and of the calibration set).
    alpha, n_cal = det.manifest.alpha, det.manifest.calibration_size
    sd = math.sqrt(alpha * (1 - alpha) * (1 / n + 1 / (n_cal + 2)))
    assert abs(recorded["flag_rate"] - alpha) <= 3 * sd
