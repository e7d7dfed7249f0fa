"""The OpenAPI examples are real: what the committed models/digits-mlp answers to them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from service.api.drift import drift_response
from service.api.examples import (
    DRIFT_NOISE,
    DRIFT_RESPONSE,
    DRIFT_TIME,
    EVALUATE_REQUEST,
    EVALUATE_RESPONSE,
    SAMPLES,
    SCORE_REQUEST,
    SCORE_RESPONSE,
)
from service.api.schemas import (
    DriftResponse,
    EvaluateRequest,
    EvaluateResponse,
    ScoreRequest,
    ScoreResponse,
)
from snnl.evaluation.embeddings import evaluate_detector
from snnl.model.detector import Detector
from snnl.monitoring import DriftSettings, ModelDriftMonitor

MODELS = Path(__file__).resolve().parents[2] / "models"

# The examples were recorded on one machine. ONNX Runtime and torch compute in float32 and may
# sum in another order on another CPU (other SIMD width, other thread split), so a recomputed
# float can differ in its last float32 digits (relative ~1e-7 per operation, a few 1e-6 after a
# log-sum over the reference set); every other value (ids, labels, flags, names) must be equal.
REL_TOL = 1e-4
ABS_TOL = 1e-6


def assert_close(actual: Any, expected: Any, where: str = "") -> None:
    """``actual`` equals the recorded ``expected``, floats within REL_TOL / ABS_TOL."""
    if isinstance(expected, float) and isinstance(actual, float):
        assert math.isclose(actual, expected, rel_tol=REL_TOL, abs_tol=ABS_TOL), (
            f"{where}: {actual!r} != recorded {expected!r}"
        )
    elif isinstance(expected, dict) and isinstance(actual, dict):
        assert actual.keys() == expected.keys(), f"{where}: keys {actual.keys()} != recorded"
        for key in expected:
            assert_close(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list) and isinstance(actual, list):
        assert len(actual) == len(expected), f"{where}: {len(actual)} items != recorded"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_close(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != recorded {expected!r}"


def test_examples_match_the_committed_default_model() -> None:
    detector = Detector.load(MODELS, "digits-mlp", device="cpu", threads=1)
    x = np.asarray(SCORE_REQUEST["inputs"], dtype=np.float32)
    result = detector.score(x, alpha=SCORE_REQUEST["alpha"], neighbors=SCORE_REQUEST["neighbors"])
    assert_close(
        {"model": detector.name, "version": detector.version, "results": result.to_records()},
        SCORE_RESPONSE,
    )
    x = np.asarray(EVALUATE_REQUEST["inputs"], dtype=np.float32)
    evaluation = evaluate_detector(detector, np.asarray(EVALUATE_REQUEST["labels"]), x)
    assert_close(
        {"model": detector.name, "version": detector.version, **evaluation.to_dict()},
        EVALUATE_RESPONSE,
    )


def test_drift_example_is_the_monitor_of_the_committed_model_on_its_stream() -> None:
    detector = Detector.load(MODELS, "digits-mlp", device="cpu", threads=1)
    rng = np.random.default_rng(DRIFT_NOISE["seed"])
    noise = rng.integers(DRIFT_NOISE["low"], DRIFT_NOISE["high"], size=(DRIFT_NOISE["samples"], 64))
    x = np.concatenate([np.asarray(SAMPLES, dtype=np.float32), noise.astype(np.float32)])
    result = detector.score(x)
    monitor = ModelDriftMonitor(
        detector.manifest.calibration_size, detector.layers, DriftSettings()
    )
    monitor.update(result.p_value, result.layer_p_value, now=DRIFT_TIME)
    assert_close(drift_response(detector.name, detector.version, monitor), DRIFT_RESPONSE)
    assert DRIFT_RESPONSE["alarms"] >= 1 and DRIFT_RESPONSE["last_alarm"]["change_point"] >= 10


def test_examples_fit_the_schemas() -> None:
    ScoreRequest.model_validate(SCORE_REQUEST)
    ScoreResponse.model_validate(SCORE_RESPONSE)
    EvaluateRequest.model_validate(EVALUATE_REQUEST)
    EvaluateResponse.model_validate(EVALUATE_RESPONSE)
    DriftResponse.model_validate(DRIFT_RESPONSE)
