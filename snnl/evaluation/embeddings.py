"""Embedding evaluation (docs/method.md): how entangled each layer's representation of a
labeled set is.

Per layer, on a labeled set of N rows (h_i, y_i):

* ``snnl``: the batch SNNL over the whole set at the served temperature T_l (exact, computed
  in row chunks so memory stays O(chunk * N));
* ``optimal_temperature`` T* and ``entanglement`` SNNL(T*) (``snnl.core.temperature.entanglement``,
  on at most 2000 stratified rows);
* ``knn_accuracy``: leave-one-out k-NN accuracy within the set: each row is classified by the
  majority label of its k nearest other rows (ties: the smallest label id).

With a model (``evaluate_detector``) also the classification accuracy and the outlier rate (the
fraction of rows the calibrated flag marks). Works on raw embeddings with no model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from snnl.core.distances import Distance, check_distance, distance_of
from snnl.core.functional import per_row_snnl_from_distances
from snnl.core.temperature import entanglement
from snnl.errors import InputError
from snnl.scoring.batch import CheckedBatch, Samples

if TYPE_CHECKING:
    from snnl.model.detector import Detector

DEFAULT_K = 5
_ROW_CHUNK = 512


@dataclass(frozen=True)
class LayerEvaluation:
    """One layer's entanglement on a labeled set: ``temperature`` the served T_l and ``snnl``
    the set's SNNL at T_l (both None without a T_l); ``optimal_temperature`` T* = argmin_T
    SNNL(T) and ``entanglement`` SNNL(T*); ``knn_accuracy`` the leave-one-out k-NN accuracy
    within the set. Also the per-layer item of the HTTP /evaluate response."""

    name: str
    distance: str
    temperature: float | None
    snnl: float | None
    optimal_temperature: float
    entanglement: float
    knn_accuracy: float


@dataclass(frozen=True)
class EmbeddingEvaluation:
    """A labeled set's evaluation: per layer, plus model-level figures when a model is given."""

    size: int
    layers: list[LayerEvaluation]
    accuracy: float | None = None
    outlier_rate: float | None = None

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready dict: {"size", "accuracy", "outlier_rate", "layers": [{...}, ...]}."""
        return asdict(self)


def _check_labels(labels: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (n and y.min() < 0):
        raise InputError(
            f"labels: expected ({n},) integers >= 0, got shape {y.shape} dtype {y.dtype}"
        )
    return y.astype(np.int64)


def _check_embeddings(embeddings: Mapping[str, np.ndarray], n: int | None) -> dict[str, np.ndarray]:
    if not embeddings:
        raise InputError("embeddings: expected at least one layer")
    out: dict[str, np.ndarray] = {}
    for name, values in embeddings.items():
        arr = np.asarray(values)
        if arr.ndim < 2 or arr.shape[0] < 2 or not np.issubdtype(arr.dtype, np.number):
            raise InputError(
                f"embeddings.{name}: expected a numeric (N >= 2, d) array, got {arr.shape}"
            )
        arr = arr.reshape(arr.shape[0], -1).astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise InputError(f"embeddings.{name}: values must be finite (found NaN or inf)")
        if n is not None and arr.shape[0] != n:
            raise InputError(f"embeddings.{name}: expected {n} rows, got {arr.shape[0]}")
        n = arr.shape[0]
        out[name] = arr
    return out


def snnl_and_knn_accuracy(
    h: np.ndarray,
    y: np.ndarray,
    temperature: float | None,
    distance: Distance,
    k: int = DEFAULT_K,
) -> tuple[float | None, float]:
    """(SNNL at ``temperature`` or None, leave-one-out k-NN accuracy) of rows h (N, d), y (N,)."""
    n = h.shape[0]
    k = min(k, n - 1)
    metric = distance_of(distance)
    x = metric.prepare(torch.from_numpy(h))
    labels = torch.from_numpy(y)
    num_classes = int(labels.max()) + 1
    terms: list[torch.Tensor] = []
    correct = 0
    for start in range(0, n, _ROW_CHUNK):
        rows = torch.arange(start, min(start + _ROW_CHUNK, n))
        dist = metric.pairwise(x[rows], x)
        if temperature is not None:
            row_terms, has_partner = per_row_snnl_from_distances(
                dist, labels, temperature, rows=rows
            )
            terms.append(row_terms[has_partner])
        not_self = torch.ones_like(dist, dtype=torch.bool)
        not_self[torch.arange(len(rows)), rows] = False
        nearest = dist.masked_fill(~not_self, float("inf")).topk(k, dim=1, largest=False).indices
        votes = torch.zeros(len(rows), num_classes, dtype=torch.int64)
        votes.scatter_add_(1, labels[nearest], torch.ones_like(nearest))
        correct += int((votes.argmax(dim=1) == labels[rows]).sum())
    snnl: float | None = None
    if temperature is not None:
        all_terms = torch.cat(terms)
        snnl = float(all_terms.mean()) if all_terms.numel() else float("nan")
    return snnl, correct / n


def evaluate_embeddings(
    embeddings: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    temperatures: Mapping[str, float] | None = None,
    distances: Mapping[str, Distance] | None = None,
    k: int = DEFAULT_K,
) -> EmbeddingEvaluation:
    """Evaluate layers {name: (N, d)} of one labeled set (labels (N,) integers).

    ``temperatures`` maps a layer to its served T_l (layers without one get ``snnl`` None);
    ``distances`` maps a layer to its distance (default cosine).
    """
    if k < 1:
        raise InputError(f"k: expected >= 1, got {k}")
    layers = _check_embeddings(embeddings, None)
    n = next(iter(layers.values())).shape[0]
    y = _check_labels(labels, n)
    if np.bincount(y).max() < 2:
        raise InputError("labels: SNNL needs at least one class with two or more rows")
    results: list[LayerEvaluation] = []
    for name, h in layers.items():
        distance = check_distance((distances or {}).get(name, "cosine"))
        temperature = (temperatures or {}).get(name)
        if temperature is not None and not temperature > 0:
            raise InputError(f"temperatures.{name}: expected > 0, got {temperature}")
        snnl, knn_accuracy = snnl_and_knn_accuracy(h, y, temperature, distance, k)
        t_star, ent = entanglement(h, y, distance)
        results.append(
            LayerEvaluation(
                name=name,
                distance=distance,
                temperature=None if temperature is None else float(temperature),
                snnl=snnl,
                optimal_temperature=t_star,
                entanglement=ent,
                knn_accuracy=knn_accuracy,
            )
        )
    return EmbeddingEvaluation(size=n, layers=results)


def evaluate_detector(
    det: Detector,
    labels: np.ndarray,
    samples: Samples | CheckedBatch,
    *,
    alpha: float | None = None,
    k: int = DEFAULT_K,
) -> EmbeddingEvaluation:
    """Evaluate a labeled batch with a served model: ``samples`` are inputs (B, *input_shape)
    for a model with a network, embeddings {layer: (B, d_l)} for an embedding-only one, or a
    batch ``det.check`` returned.

    Per served layer as ``evaluate_embeddings`` at the manifest's temperature and distance, plus
    the accuracy (prediction == label) and the outlier rate (flag at ``alpha``) of ``det.score``.
    """
    batch = det.check(samples)
    y = _check_labels(labels, len(batch))
    if y.size and y.max() >= len(det.class_names):
        raise InputError(
            f"labels: expected class ids in 0..{len(det.class_names) - 1}, got {y.max()}"
        )
    result = det.score(batch, alpha=alpha, with_features=True)
    features = result.features
    assert features is not None  # asked for with_features
    specs = det.manifest.layers
    evaluation = evaluate_embeddings(
        {layer.name: features[layer.name] for layer in specs},
        y,
        temperatures={layer.name: layer.temperature for layer in specs},
        distances={layer.name: layer.distance for layer in specs},
        k=k,
    )
    return replace(
        evaluation,
        accuracy=float(np.mean(result.prediction == y)),
        outlier_rate=float(np.mean(result.outlier)),
    )
