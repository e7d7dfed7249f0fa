"""``ScoreResult``: the scores of a batch, as numpy arrays, sliceable and concatenable."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from snnl.scoring.guarantees import benjamini_hochberg

STAGES: tuple[str, ...] = ("forward", "neighbors", "calibrate")
_PER_SAMPLE = (
    "prediction",
    "confidence",
    "nonconformity",
    "p_value",
    "outlier",
    "soft_neighbor_score",
    "same_class_neighbors",
    "layer_p_value",
    "neighbor_ids",
    "logits",
    "marginal_p_value",
    "outlier_fdr",
)


@dataclass(frozen=True)
class ScoreResult:
    """Scores of B samples over the L served ``layers`` (docs/method.md).

    prediction (B,) int64; confidence, nonconformity, p_value (B,) float64; outlier (B,) bool;
    soft_neighbor_score, layer_p_value (B, L) float64; same_class_neighbors (B, L) int64;
    neighbor_ids (B, L, m) int64 or None; ``alpha`` the flag level used and ``guarantee`` (with
    ``delta`` for "pac") the rule that set ``outlier`` (snnl.scoring.guarantees): ``p_value`` is
    the Mondrian p-value within the predicted class for "class", else the marginal one, and
    ``marginal_p_value`` (B,) float64 is always the marginal p-value (None only in results built
    by hand: then ``p_value`` is marginal). ``fdr`` and ``outlier_fdr`` (B,) bool: the
    Benjamini-Hochberg rejections at level ``fdr`` over the marginal p-values of this batch
    (``with_fdr``), None when not asked for. ``timings`` seconds spent
    per stage (forward, neighbors, calibrate) on the whole batch. Only when asked for
    (``Detector.score(..., with_features=True)``): ``logits`` (B, C) float32 (None for an
    embedding-only model) and ``features`` {layer: (B, d_l)}, the representations that were scored.
    """

    layers: tuple[str, ...]
    class_names: tuple[str, ...]
    prediction: np.ndarray
    confidence: np.ndarray
    nonconformity: np.ndarray
    p_value: np.ndarray
    outlier: np.ndarray
    soft_neighbor_score: np.ndarray
    same_class_neighbors: np.ndarray
    layer_p_value: np.ndarray
    neighbor_ids: np.ndarray | None
    alpha: float
    timings: dict[str, float] = field(default_factory=dict)
    logits: np.ndarray | None = None
    features: dict[str, np.ndarray] | None = None
    marginal_p_value: np.ndarray | None = None
    guarantee: str = "marginal"
    delta: float | None = None
    fdr: float | None = None
    outlier_fdr: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.prediction.shape[0])

    def __getitem__(self, index: slice) -> ScoreResult:
        """Rows ``index`` (a slice) of every per-sample array; timings stay the batch's."""
        if not isinstance(index, slice):
            raise TypeError(f"ScoreResult supports slices only, got {type(index).__name__}")
        features = None
        if self.features is not None:
            features = {layer: values[index] for layer, values in self.features.items()}
        rows: dict[str, Any] = {
            name: None if getattr(self, name) is None else getattr(self, name)[index]
            for name in _PER_SAMPLE
        }
        return replace(self, features=features, **rows)

    @classmethod
    def concatenate(cls, results: Sequence[ScoreResult]) -> ScoreResult:
        """Rows of ``results`` in order (same layers, classes and rule); timings are summed.
        Batch FDR decisions do not concatenate (BH runs over one batch): apply ``with_fdr`` to
        the concatenated rows instead."""
        if not results:
            raise ValueError("concatenate needs at least one ScoreResult")
        first = results[0]
        if any(r.outlier_fdr is not None for r in results):
            raise ValueError("results with outlier_fdr do not concatenate: call with_fdr after")
        for other in results[1:]:
            if (other.layers, other.class_names, other.alpha, other.guarantee, other.delta) != (
                first.layers,
                first.class_names,
                first.alpha,
                first.guarantee,
                first.delta,
            ):
                raise ValueError("results to concatenate differ in layers, classes or flag rule")
            if (other.neighbor_ids is None) != (first.neighbor_ids is None) or (
                other.neighbor_ids is not None
                and first.neighbor_ids is not None
                and other.neighbor_ids.shape[2] != first.neighbor_ids.shape[2]
            ):
                raise ValueError("results to concatenate differ in the number of neighbor ids")
        arrays: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in _PER_SAMPLE:
                parts = [getattr(r, f.name) for r in results]
                arrays[f.name] = None if parts[0] is None else np.concatenate(parts)
        timings = {s: sum(r.timings.get(s, 0.0) for r in results) for s in first.timings}
        features = None
        if all(r.features is not None for r in results) and first.features is not None:
            features = {
                layer: np.concatenate([r.features[layer] for r in results if r.features])
                for layer in first.features
            }
        return replace(first, timings=timings, features=features, **arrays)

    def with_fdr(self, fdr: float | None) -> ScoreResult:
        """This result with ``outlier_fdr``: Benjamini-Hochberg at level ``fdr`` over the
        marginal p-values of exactly these rows (``fdr`` None: unchanged). The level must have
        passed the calibration's check (``Detector.flag_rule``)."""
        if fdr is None:
            return self
        marginal = self.p_value if self.marginal_p_value is None else self.marginal_p_value
        return replace(self, fdr=fdr, outlier_fdr=benjamini_hochberg(marginal, fdr))

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per sample, the HTTP API's "results" item (plain Python types, JSON-ready).

        Each column is converted once with ``tolist`` (the same Python floats, ints and bools as
        converting element by element), then the records are zipped from the columns.
        """
        scores = self.soft_neighbor_score.tolist()
        same = self.same_class_neighbors.tolist()
        layer_p = self.layer_p_value.tolist()
        ids = None if self.neighbor_ids is None else self.neighbor_ids.tolist()
        fdr = None if self.outlier_fdr is None else self.outlier_fdr.tolist()
        records = []
        for i, (prediction, confidence, a, p, outlier) in enumerate(
            zip(
                self.prediction.tolist(),
                self.confidence.tolist(),
                self.nonconformity.tolist(),
                self.p_value.tolist(),
                self.outlier.tolist(),
                strict=True,
            )
        ):
            layers = []
            for j, name in enumerate(self.layers):
                layer: dict[str, Any] = {
                    "name": name,
                    "soft_neighbor_score": scores[i][j],
                    "same_class_neighbors": same[i][j],
                    "p_value": layer_p[i][j],
                }
                if ids is not None:
                    layer["neighbors"] = ids[i][j]
                layers.append(layer)
            record: dict[str, Any] = {
                "prediction": prediction,
                "label": self.class_names[prediction],
                "confidence": confidence,
                "nonconformity": a,
                "p_value": p,
                "outlier": outlier,
            }
            if fdr is not None:
                record["outlier_fdr"] = fdr[i]
            record["layers"] = layers
            records.append(record)
        return records
