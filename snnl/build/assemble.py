"""Assemble a model folder from a reference set, calibration data and (optionally) an ONNX model.

Shared by ``snnl export`` (a trained network) and ``snnl index`` (embeddings a user brings):

1. the reference set is converted to the requested storage dtype (``ReferenceSet.stored_as``),
   so everything below sees exactly the values that will be served (float16 rounding included);
   the file is written from these tensors (no in-memory copy of it);
2. each layer's temperature is chosen from the reference set alone
   (snnl.scoring.temperature_rule), and so are the terms of the neighbor-mass nonconformity
   (snnl.scoring.neighbor_mass), the default kind;
3. the calibration inputs are scored by the same Detector code a query goes through, and the
   sorted nonconformities a(x) of the chosen kind, their predicted classes and the per-layer
   scores are kept (snnl.scoring.conformal); the manifest's default flag rule (alpha,
   guarantee, delta) must be supportable by that calibration set (InputError otherwise);
4. optionally a labeled test set is scored and its accuracy and flag rate are recorded in the
   manifest's provenance;
5. the folder is written atomically with sha256s (snnl.model.store).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from snnl.core.distances import Distance
from snnl.core.temperature import entanglement
from snnl.errors import InputError
from snnl.model.detector import DEFAULT_BATCH_SIZE, Detector
from snnl.model.manifest import (
    CALIBRATION_FILE,
    ONNX_FILE,
    REFERENCE_FILE,
    LayerSpec,
    Manifest,
    Nonconformity,
    check_name,
)
from snnl.model.reference import ReferenceSet, StorageDtype
from snnl.model.runtime import OnnxRunner, resolve_device
from snnl.model.store import FileWriter, write_model
from snnl.scoring.batch import CheckedBatch, Samples, row_chunks
from snnl.scoring.conformal import Calibration
from snnl.scoring.guarantees import FlagRule, Guarantee
from snnl.scoring.neighbor_mass import (
    DEFAULT_FLOOR_QUANTILE,
    DEFAULT_PERPLEXITY,
    GEOMETRIES,
    fit_neighbor_mass,
)
from snnl.scoring.nonconformity import NONCONFORMITY_KINDS, NegLogScore
from snnl.scoring.temperature_rule import DEFAULT_RULE, check_rule, choose_temperature
from snnl.scoring.validation import check_embeddings, check_inputs

DEFAULT_NONCONFORMITY = "neighbor-mass"
ENTANGLEMENT_POINTS = 1000  # reference rows (stratified) for T* and the entanglement


@dataclass(frozen=True)
class ModelRecipe:
    """What the manifest says besides the data-derived fields."""

    name: str
    version: str = "1"
    created: str | None = None
    class_names: Sequence[str] = ()
    input_shape: Sequence[int] | None = None
    preprocessing: str = "none"
    distance: Distance = "cosine"
    temperature_rule: str = DEFAULT_RULE
    reference_dtype: StorageDtype = "float32"
    alpha: float = 0.05
    guarantee: Guarantee = "marginal"
    delta: float | None = None
    neighbors: int = 50
    nonconformity: str = DEFAULT_NONCONFORMITY
    mass_geometries: Sequence[Distance] = GEOMETRIES
    mass_perplexity: float = DEFAULT_PERPLEXITY
    mass_one_sided: Sequence[str] = ()
    mass_floor_quantile: float = DEFAULT_FLOOR_QUANTILE
    mass_layer_weights: Mapping[str, float] = field(default_factory=dict)
    mass_geometry_weights: Mapping[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)


def default_created() -> str:
    """``SOURCE_DATE_EPOCH`` (reproducible builds) when set, else now, as ISO 8601 UTC."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and not epoch.isdigit():
        raise InputError(f"SOURCE_DATE_EPOCH must be whole seconds since 1970, got {epoch!r}")
    seconds = int(epoch) if epoch else int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def calibration_scores(
    detector: Detector, inputs: CheckedBatch
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log s_l (n, L), a(x) (n,) and the predicted classes (n,) of ``inputs`` scored like
    queries (no calibration needed), in batches."""
    log_score, a, predicted = [], [], []
    reference_rows = max(detector.reference_sizes.values())
    for rows in row_chunks(inputs, calibration_batch_size(reference_rows)):
        scores = detector.uncalibrated_scores(rows)
        log_score.append(scores.log_score)
        a.append(detector.manifest.nonconformity.apply(scores))
        predicted.append(scores.predicted)
    return np.concatenate(log_score), np.concatenate(a), np.concatenate(predicted)


def calibration_batch_size(reference_rows: int) -> int:
    """Calibration rows per scoring call: DEFAULT_BATCH_SIZE, fewer against a large reference
    set (at most 2^26 query x reference pairs, at least 64 rows), since the scorer's pass over
    the neighbor-mass terms of every class holds B x N values at once: this bounds the build's
    memory in N."""
    return max(64, min(DEFAULT_BATCH_SIZE, (1 << 26) // max(reference_rows, 1)))


def class_floor(alpha: float) -> int:
    """Calibration rows per class that a stratified draw keeps where it can: twice the
    ceil(1 / alpha) - 1 that guarantee "class" needs per *predicted* class at ``alpha``, so that
    misclassified rows rarely push a predicted class below it."""
    return 2 * (math.ceil(1 / alpha) - 1)


def stratified_rows(
    labels: np.ndarray, size: int, *, floor: int, max_fraction: float, seed: int
) -> np.ndarray:
    """Sorted row indices of a seeded stratified draw of about ``size`` rows of ``labels``: each
    class gets its proportional share (largest remainders), raised to ``floor`` where the class
    has the rows, and at most ceil(``max_fraction`` x its rows) (below 1: always leaving at least
    one row of each class out)."""
    labels = np.asarray(labels)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    cap = np.minimum(np.ceil(max_fraction * counts).astype(np.int64), counts - (max_fraction < 1))
    exact = size * counts / counts.sum()
    quota = np.floor(exact).astype(np.int64)
    extra = int(min(size, cap.sum()) - quota.sum())
    if extra > 0:
        quota[np.argsort(quota - exact, kind="stable")[:extra]] += 1
    quota = np.minimum(np.maximum(quota, np.minimum(floor, cap)), cap)
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(np.flatnonzero(inverse == c))[: quota[c]] for c in range(len(classes))]
    return np.sort(np.concatenate(rows))


def _nonconformity(recipe: ModelRecipe, served: ReferenceSet, seed: int) -> Nonconformity:
    """The manifest's nonconformity section, fitted on the served reference set only."""
    if recipe.nonconformity == "neg-log-score":
        return NegLogScore()
    return fit_neighbor_mass(
        served.features,
        served.labels,
        perplexity=recipe.mass_perplexity,
        geometries=recipe.mass_geometries,
        one_sided=recipe.mass_one_sided,
        floor_quantile=recipe.mass_floor_quantile,
        layer_weights=recipe.mass_layer_weights,
        geometry_weights=recipe.mass_geometry_weights,
        seed=seed,
    )


def _manifest(
    recipe: ModelRecipe, served: ReferenceSet, calibration_size: int, seed: int
) -> Manifest:
    """The manifest (without files): one LayerSpec per layer with its chosen temperature and
    the reference set's optimal temperature and entanglement."""
    layers = []
    for name, dim in served.dims().items():
        features = served.features[name]
        t_star, entangled = entanglement(
            features, served.labels, recipe.distance, max_points=ENTANGLEMENT_POINTS, seed=seed
        )
        layers.append(
            LayerSpec(
                name=name,
                dim=dim,
                distance=recipe.distance,
                temperature=choose_temperature(
                    features, served.labels, recipe.distance, recipe.temperature_rule, seed=seed
                ),
                reference_size=served.size,
                optimal_temperature=t_star,
                entanglement=max(entangled, 0.0),
            )
        )
    return Manifest(
        name=recipe.name,
        version=recipe.version,
        created=recipe.created or default_created(),
        input_shape=None if recipe.input_shape is None else list(recipe.input_shape),
        input_dtype=None if recipe.input_shape is None else "float32",
        preprocessing=recipe.preprocessing,
        class_names=list(recipe.class_names),
        layers=layers,
        alpha=recipe.alpha,
        guarantee=recipe.guarantee,
        delta=recipe.delta,
        neighbors=recipe.neighbors,
        calibration_size=calibration_size,
        nonconformity=_nonconformity(recipe, served, seed),
        provenance={**recipe.provenance, "temperature_rule": recipe.temperature_rule},
    )


def build_model(
    repository: str | Path,
    recipe: ModelRecipe,
    *,
    reference: ReferenceSet,
    calibration_inputs: Samples,
    onnx_model: bytes | None = None,
    test: tuple[Samples, np.ndarray] | None = None,
    device: str = "auto",
    seed: int = 0,
) -> Manifest:
    """Build and write ``repository/<recipe.name>``; returns the written manifest."""
    check_name(recipe.name)
    check_rule(recipe.temperature_rule)
    default = FlagRule(recipe.guarantee, recipe.alpha, recipe.delta)  # refuses bad values now
    if recipe.nonconformity not in NONCONFORMITY_KINDS:
        raise InputError(
            f"nonconformity: expected one of {', '.join(NONCONFORMITY_KINDS)}, "
            f"got {recipe.nonconformity!r}"
        )
    target = resolve_device(device)
    stored = reference.stored_as(recipe.reference_dtype)
    served = ReferenceSet(
        {name: x.to(target) for name, x in stored.features.items()}, stored.labels.to(target)
    )
    calibration_batch = (
        check_embeddings(calibration_inputs, served.dims())
        if recipe.input_shape is None
        else check_inputs(calibration_inputs, tuple(recipe.input_shape))
    )
    try:
        manifest = _manifest(recipe, served, len(calibration_batch), seed)
    except ValidationError as err:
        lines = str(err).splitlines()
        raise InputError(f"manifest of {recipe.name!r}: {'; '.join(lines[:3])}") from err
    runner = None if onnx_model is None else OnnxRunner(onnx_model, served.layers, target)
    detector = Detector(manifest, reference=served, calibration=None, runner=runner, device=target)
    calibration = Calibration.fit(served.layers, *calibration_scores(detector, calibration_batch))
    try:
        calibration.check(default, len(recipe.class_names))
    except InputError as err:
        raise InputError(f"the model's default flag rule ({default.guarantee}): {err}") from err
    if test is not None:
        calibrated = copy.copy(detector)
        calibrated.calibration = calibration
        result = calibrated.score(detector.check(test[0]), batch_size=DEFAULT_BATCH_SIZE)
        manifest.provenance["test"] = {
            "size": len(result),
            "accuracy": float(np.mean(result.prediction == test[1])),
            "flag_rate": float(np.mean(result.outlier)),
        }
    files: dict[str, bytes | FileWriter] = {
        REFERENCE_FILE: stored.save,
        CALIBRATION_FILE: calibration.to_bytes(),
    }
    if onnx_model is not None:
        files[ONNX_FILE] = onnx_model
    return write_model(repository, manifest, files)
