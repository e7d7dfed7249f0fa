"""The OpenAPI examples are real: what the committed models/digits-mlp answers to them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.examples import (
    EVALUATE_REQUEST,
    EVALUATE_RESPONSE,
    SCORE_REQUEST,
    SCORE_RESPONSE,
)
from service.schemas import EvaluateRequest, EvaluateResponse, ScoreRequest, ScoreResponse
from snnl.evaluation.embeddings import evaluate_detector
from snnl.model.detector import Detector

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_examples_match_the_committed_default_model() -> None:
    detector = Detector.load(MODELS, "digits-mlp", device="cpu", threads=1)
    x = np.asarray(SCORE_REQUEST["inputs"], dtype=np.float32)
    result = detector.score(x, alpha=SCORE_REQUEST["alpha"], neighbors=SCORE_REQUEST["neighbors"])
    assert {
        "model": detector.name, "version": detector.version, "results": result.to_records(),
    } == SCORE_RESPONSE  # fmt: skip
    x = np.asarray(EVALUATE_REQUEST["inputs"], dtype=np.float32)
    evaluation = evaluate_detector(detector, np.asarray(EVALUATE_REQUEST["labels"]), inputs=x)
    assert {
        "model": detector.name, "version": detector.version, **evaluation.to_dict(),
    } == EVALUATE_RESPONSE  # fmt: skip


def test_examples_fit_the_schemas() -> None:
    ScoreRequest.model_validate(SCORE_REQUEST)
    ScoreResponse.model_validate(SCORE_RESPONSE)
    EvaluateRequest.model_validate(EVALUATE_REQUEST)
    EvaluateResponse.model_validate(EVALUATE_RESPONSE)
