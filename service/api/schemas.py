"""Request and response bodies of the HTTP API (docs/service.md), with OpenAPI examples that
are a real request to and response from the committed ``digits-mlp`` model
(service/api/examples.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.api.examples import (
    DRIFT_RESPONSE,
    EVALUATE_REQUEST,
    EVALUATE_RESPONSE,
    SCORE_REQUEST,
    SCORE_RESPONSE,
)
from snnl.evaluation.embeddings import LayerEvaluation


class ScoreOptions(BaseModel):
    """How to score: in a JSON body's fields, or as the query of an ``application/x-npy`` body."""

    alpha: float | None = Field(
        None, gt=0, lt=1, description="Flag outliers at p_value < alpha (default: the manifest's)."
    )
    guarantee: Literal["marginal", "class", "pac"] | None = Field(
        None,
        description="Guarantee of the flag (default: the manifest's): marginal (P(flag) <= alpha "
        "on average), class (within each predicted class; p_value is then the class's), pac "
        "(P(flag rate > alpha) <= delta over calibration draws).",
    )
    delta: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="delta of guarantee pac (default: the manifest's, else 0.1).",
    )
    fdr: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Also return outlier_fdr: Benjamini-Hochberg at this level over this "
        "request's p-values.",
    )
    neighbors: int = Field(
        0,
        ge=0,
        le=1000,
        description="Also return the ids of the k nearest reference points per layer.",
    )


class ScoreRequest(ScoreOptions):
    """Score a batch: ``inputs`` for a model, ``embeddings`` for an embedding-only model."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SCORE_REQUEST]})

    inputs: list[Any] | None = Field(
        None, description="Samples, each flat or nested to the model's input shape."
    )
    embeddings: dict[str, list[Any]] | None = Field(
        None, description="Embedding-only models: {layer: [[...], ...]}, every served layer."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ScoreRequest:
        if (self.inputs is None) == (self.embeddings is None):
            raise ValueError("give exactly one of 'inputs' and 'embeddings'")
        return self


class EvaluateRequest(BaseModel):
    """Evaluate a labeled batch: per-layer entanglement, k-NN accuracy, accuracy, outlier rate."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EVALUATE_REQUEST]})

    inputs: list[Any] | None = Field(None, description="Samples (models with model.onnx).")
    embeddings: dict[str, list[Any]] | None = Field(
        None, description="Embedding-only models: {layer: [[...], ...]}."
    )
    labels: list[int | str] = Field(
        description="One label per sample: a class index 0..C-1 or a class name.", min_length=2
    )

    @model_validator(mode="after")
    def _one_kind(self) -> EvaluateRequest:
        if (self.inputs is None) == (self.embeddings is None):
            raise ValueError("give exactly one of 'inputs' and 'embeddings'")
        return self


class LayerScore(BaseModel):
    """One layer's view of one sample."""

    name: str
    soft_neighbor_score: float = Field(description="P(soft neighbor is of the predicted class).")
    same_class_neighbors: int = Field(
        description="Of the k nearest reference points, how many share the predicted class."
    )
    p_value: float = Field(
        description="Conformal p-value of this layer's score ('fewer than normal')."
    )
    neighbors: list[int] | None = Field(
        None, description="Ids of the k nearest reference points (when asked)."
    )


class SampleScore(BaseModel):
    """One sample's prediction, scores and calibrated outlier flag."""

    prediction: int
    label: str
    confidence: float
    nonconformity: float
    p_value: float
    outlier: bool
    outlier_fdr: bool | None = Field(
        None, description="Benjamini-Hochberg rejection at the request's fdr (only with fdr)."
    )
    layers: list[LayerScore]


class ScoreResponse(BaseModel):
    """One result per input sample, in request order."""

    model_config = ConfigDict(json_schema_extra={"examples": [SCORE_RESPONSE]})

    model: str
    version: str
    results: list[SampleScore]


class EvaluateResponse(BaseModel):
    """The evaluation of one labeled batch."""

    model_config = ConfigDict(json_schema_extra={"examples": [EVALUATE_RESPONSE]})

    model: str
    version: str
    size: int
    accuracy: float | None = Field(
        description="Classification accuracy (None for embedding-only models)."
    )
    outlier_rate: float | None = Field(
        description="Fraction flagged as outliers at the model's alpha."
    )
    layers: list[LayerEvaluation]


class LayerInfo(BaseModel):
    """A served layer."""

    name: str
    dim: int
    distance: str
    temperature: float
    reference_size: int


class ModelInfo(BaseModel):
    """A loaded model, as listed by ``GET /v1/models``."""

    name: str
    version: str
    embedding_only: bool
    input_shape: list[int] | None
    classes: list[str]
    layers: list[LayerInfo]
    reference_size: int
    alpha: float
    guarantee: Literal["marginal", "class", "pac"] = "marginal"
    delta: float | None = Field(None, description="delta of guarantee pac (None: 0.1).")
    device: str
    backend: str


class ModelStatus(BaseModel):
    """A model of the repository and whether it serves: ``READY``, ``LOADING``, ``UNAVAILABLE``
    (failed to load: ``reason`` names the file and what is wrong; or unloaded)."""

    name: str
    version: str | None = None
    state: Literal["READY", "LOADING", "UNAVAILABLE"]
    reason: str = ""


class RepositoryIndex(BaseModel):
    """Every model of the repository with its state, after a reload."""

    models: list[ModelStatus]


class ModelList(BaseModel):
    """Every loaded model, and the models of the repository that do not serve (with why)."""

    models: list[ModelInfo]
    unavailable: list[ModelStatus] = []


class CalibrationSummary(BaseModel):
    """The calibration a model's p-values come from
    (``snnl.scoring.conformal.Calibration.summary``)."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(description="n_cal: calibration samples.")
    alpha: float = Field(description="Default alpha of the flag.")
    guarantee: Literal["marginal", "class", "pac"] = Field(
        description="Default guarantee of the flag."
    )
    delta: float | None = Field(description="Default delta of guarantee pac (None: not pac).")
    class_sizes: list[int] = Field(
        description="Calibration samples per predicted class (empty: not stored, no class "
        "guarantee)."
    )
    nonconformity: dict[str, float] = Field(
        description="Quantiles p05, p50, p95 of the calibration nonconformity."
    )
    flag_threshold: float | None = Field(
        description="Under the default rule a sample is flagged iff its nonconformity exceeds "
        "this (None when the flag does not depend on it, or depends on the predicted class)."
    )
    layers: dict[str, dict[str, float]] = Field(
        description="Per served layer: quantiles p05, p50, p95 of the calibration soft-neighbor "
        "scores."
    )


class ModelDetail(BaseModel):
    """One model: its manifest and calibration summary."""

    manifest: dict[str, Any]
    calibration: CalibrationSummary


class DriftAlarm(BaseModel):
    """One alarm of a drift monitor (``snnl.monitoring.Alarm``)."""

    sample: int = Field(
        description="Index of the sample (since the last reset) at which the statistic crossed "
        "the threshold."
    )
    change_point: int = Field(description="Estimated index of the first drifted sample.")
    time: float = Field(description="Unix time of the batch that raised it.")
    statistic: float = Field(description="The statistic at the crossing (>= the threshold).")


class DriftMonitorState(BaseModel):
    """One monitor's state (``snnl.monitoring.DriftState``); indices count samples since the
    last reset (an admin reset or a model reload) of this replica."""

    samples: int = Field(description="p-values seen since the last reset.")
    statistic: float = Field(
        description="log10 of the evidence against 'no drift' (0: none); restarts at 0 after "
        "an alarm."
    )
    threshold: float = Field(description="The alarm threshold, log10(SNNL_DRIFT_ERT).")
    alarms: int = Field(description="Alarms since the last reset.")
    last_alarm: DriftAlarm | None = Field(description="The latest alarm, if any.")
    change_point: int | None = Field(
        description="Where the statistic's current excursion began (the estimated first drifted "
        "sample if it goes on to alarm); None while the statistic is 0."
    )


class DriftSettingsInfo(BaseModel):
    """The monitor's settings (``SNNL_DRIFT_*``)."""

    ert: float = Field(description="Expected samples between false alarms, per replica.")
    calibration_risk: float = Field(
        description="Probability that the calibration set is too unlucky for that guarantee."
    )
    levels: list[float] = Field(description="p-value levels watched.")
    shifts: list[float] = Field(description="Contamination shares the bets are tuned for.")


class DriftResponse(DriftMonitorState):
    """A model's drift monitor on this replica: the state over the model's p-value (its alarms
    are the model's alarms, counted by ``snnl_drift_alarms_total``) and one per served layer."""

    model_config = ConfigDict(json_schema_extra={"examples": [DRIFT_RESPONSE]})

    model: str
    version: str
    n_calibration: int = Field(description="Calibration samples the p-values are computed against.")
    settings: DriftSettingsInfo
    layers: dict[str, DriftMonitorState] = Field(
        description="Per served layer, the monitor over that layer's p-value (which layer moved)."
    )
