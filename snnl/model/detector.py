"""``Detector``: one served model = its inputs (ONNX graph or embeddings) + scorer + calibration.

    det = Detector.load("models", "digits-mlp")       # device "auto" | "cpu" | "cuda"
    res = det.score(x)                                 # x (B, *input_shape) or (B, prod(shape))
    res = det.score_features({"embedding": e})         # embedding-only models: {layer: (B, d_l)}

Two verbs, one path: the batch is checked once (``check``: a ``CheckedSamples`` or a
``CheckedFeatures``, snnl.scoring.batch, which the service and ``snnl score`` also pass along),
then a forward pass for a model with a graph (logits and the served layers), then per layer one
chunked matrix product against the reference set on the device (the scorer, snnl.scoring.scorer,
local, or sharded by snnl.sharding; it also sums the neighbor-mass terms of the manifest's
nonconformity), then a(x) of the manifest's kind and p-values from the sorted calibration arrays
(snnl.scoring.conformal). The object is read-only after loading: ``score`` may be called from
any thread.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load as load_safetensors

from snnl.errors import InputError, RepositoryError
from snnl.model.manifest import CALIBRATION_FILE, ONNX_FILE, REFERENCE_FILE, Manifest
from snnl.model.reference import ReferenceSet
from snnl.model.runtime import ForwardOutput, OnnxRunner, resolve_device
from snnl.model.store import map_verified, read_model_files, read_verified
from snnl.scoring.batch import CheckedBatch, CheckedFeatures, CheckedSamples, Samples, row_chunks
from snnl.scoring.conformal import Calibration
from snnl.scoring.guarantees import FlagRule
from snnl.scoring.results import ScoreResult
from snnl.scoring.scorer import BatchScores, Scorer, SoftNeighborScorer, default_chunk_size
from snnl.scoring.validation import check_alpha, check_embeddings, check_inputs, check_neighbors

__all__ = [
    "COMPUTE_DTYPES",
    "DEFAULT_BATCH_SIZE",
    "ComputeDtype",
    "Detector",
    "ForwardOutput",
    "ScoreResult",
]

DEFAULT_BATCH_SIZE = 1024
ComputeDtype = Literal["float32", "bfloat16", "float16"]
COMPUTE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class GraphInputs:
    """How a model with an ONNX graph takes a batch: raw samples (B, *input_shape), run through
    the graph to the logits and the served layers."""

    def __init__(self, name: str, input_shape: tuple[int, ...], runner: OnnxRunner) -> None:
        self.name = name
        self.input_shape = input_shape
        self.runner = runner

    def check(self, samples: Samples | CheckedBatch) -> CheckedSamples:
        """``samples`` as a checked batch of this model (already checked ones pass as they are)."""
        if isinstance(samples, CheckedSamples):
            return samples
        if isinstance(samples, (Mapping, CheckedFeatures)):
            raise InputError(f"model {self.name!r} has a network: send inputs, not embeddings")
        return check_inputs(samples, self.input_shape)

    def forward(self, batch: CheckedBatch) -> ForwardOutput:
        """Logits (B, C) and the served layers {layer: (B, d_l)} of a checked batch."""
        return self.runner.run(self.check(batch).x)


class FeatureInputs:
    """How an embedding-only model takes a batch: its layer representations {layer: (B, d_l)},
    scored as they are; the prediction comes from the soft neighbors (no logits)."""

    def __init__(self, name: str, dims: Mapping[str, int]) -> None:
        self.name = name
        self.input_shape = None
        self.dims = dict(dims)

    def check(self, samples: Samples | CheckedBatch) -> CheckedFeatures:
        """``samples`` as a checked batch of this model (already checked ones pass as they are)."""
        if isinstance(samples, CheckedFeatures):
            return samples
        if isinstance(samples, (np.ndarray, CheckedSamples)):
            raise InputError(f"model {self.name!r} is embedding-only: send embeddings, not inputs")
        return check_embeddings(samples, self.dims)

    def forward(self, batch: CheckedBatch) -> ForwardOutput:
        """Only a graph runs a forward pass."""
        raise InputError(f"model {self.name!r} is embedding-only: send embeddings, not inputs")


class Detector:
    """A loaded model of the repository. Build it with :meth:`load` (or, with the reference
    rows sharded over Ray actors, ``snnl.sharding.load_sharded_detector``).

    ``scorer``: any ``Scorer``; None builds the local ``SoftNeighborScorer`` over ``reference``
    on ``device`` (else ``reference`` need only hold the labels and the layers' shapes).
    ``calibration`` may be None only while a model is being exported (``uncalibrated_scores``
    works, ``score`` does not).
    """

    def __init__(
        self,
        manifest: Manifest,
        *,
        reference: ReferenceSet,
        calibration: Calibration | None,
        runner: OnnxRunner | None,
        device: torch.device,
        chunk_size: int | None = None,
        reference_path: Path | None = None,
        compute_dtype: ComputeDtype = "float32",
        scorer: Scorer | None = None,
    ) -> None:
        self.manifest = manifest
        self.calibration = calibration
        self.device = str(device)
        self.compute_dtype: ComputeDtype = compute_dtype
        self._reference_path = reference_path
        specs = {layer.name: layer for layer in manifest.layers}
        self.layers: tuple[str, ...] = tuple(specs)
        self.reference_labels: np.ndarray = reference.labels.cpu().numpy()
        self.reference_sizes: dict[str, int] = {name: reference.size for name in self.layers}
        self.inputs: GraphInputs | FeatureInputs
        if runner is None or manifest.input_shape is None:
            self.inputs = FeatureInputs(manifest.name, {n: x.dim for n, x in specs.items()})
        else:
            self.inputs = GraphInputs(manifest.name, tuple(manifest.input_shape), runner)
        if scorer is None:
            scorer = SoftNeighborScorer(
                {name: reference.features[name].to(device) for name in self.layers},
                reference.labels.to(device),
                num_classes=len(manifest.class_names),
                temperatures={name: layer.temperature for name, layer in specs.items()},
                distances={name: layer.distance for name, layer in specs.items()},
                mass_terms=manifest.nonconformity.mass_terms,
                chunk_size=chunk_size or default_chunk_size(device),
                compute_dtype=COMPUTE_DTYPES[compute_dtype],
            )
        self._scorer = scorer

    @classmethod
    def load(
        cls,
        repository: str | Path,
        name: str,
        device: str = "auto",
        *,
        threads: int | None = None,
        chunk_size: int | None = None,
        compute_dtype: ComputeDtype = "float32",
    ) -> Detector:
        """Load ``repository/<name>`` (checksums verified) onto ``device``.

        ``threads``: ONNX Runtime intra-op threads (None: its default). ``chunk_size``: reference
        rows per matrix product (None: 4096 on the CPU, 262144 on a GPU). ``compute_dtype``: the
        dtype of the reference products, "float32" (default), "bfloat16" or "float16" (rows and
        queries rounded to it, sums in float32: faster, see docs/performance.md for the measured
        error). RepositoryError names a missing, tampered or malformed file. The reference rows
        sharded over Ray actors: ``snnl.sharding.load_sharded_detector``.
        """
        check_compute_dtype(compute_dtype)
        target = resolve_device(device)
        folder = Path(repository) / name
        # The reference is memory-mapped (file-backed pages, shared between processes).
        manifest, files = read_model_files(repository, name, skip=(REFERENCE_FILE,))
        reference = ReferenceSet.from_bytes(
            map_verified(folder / REFERENCE_FILE, manifest.files[REFERENCE_FILE]),
            [layer.name for layer in manifest.layers],
            device=target,
            source=folder / REFERENCE_FILE,
        )
        return cls.from_files(
            folder,
            manifest,
            files,
            reference,
            device=target,
            threads=threads,
            chunk_size=chunk_size,
            compute_dtype=compute_dtype,
        )

    @classmethod
    def from_files(
        cls,
        folder: Path,
        manifest: Manifest,
        files: Mapping[str, bytes],
        reference: ReferenceSet,
        *,
        device: torch.device,
        threads: int | None = None,
        chunk_size: int | None = None,
        compute_dtype: ComputeDtype = "float32",
        scorer: Scorer | None = None,
    ) -> Detector:
        """The detector of a verified model folder: its manifest, the bytes of every file but
        the reference, and the reference set (or its outline and labels, with a ``scorer``
        holding the rows); RepositoryError when the files disagree with each other."""
        layers = [layer.name for layer in manifest.layers]
        calibration = Calibration.from_bytes(
            files[CALIBRATION_FILE], layers, source=folder / CALIBRATION_FILE
        )
        runner = None
        if not manifest.embedding_only:
            runner = OnnxRunner(
                files[ONNX_FILE], layers, device, threads=threads, source=str(folder / ONNX_FILE)
            )
        _check_consistency(manifest, reference, calibration, runner, folder)
        return cls(
            manifest,
            reference=reference,
            calibration=calibration,
            runner=runner,
            device=device,
            chunk_size=chunk_size,
            reference_path=folder / REFERENCE_FILE,
            compute_dtype=compute_dtype,
            scorer=scorer,
        )

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.manifest.class_names)

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The shape of one sample, or None for an embedding-only model."""
        return self.inputs.input_shape

    @property
    def backend(self) -> str:
        """ "onnxruntime" (with the execution provider in ``provider``) or "none"."""
        return "onnxruntime" if isinstance(self.inputs, GraphInputs) else "none"

    @property
    def provider(self) -> str | None:
        """The ONNX Runtime execution provider in use, None for an embedding-only model."""
        return self.inputs.runner.provider if isinstance(self.inputs, GraphInputs) else None

    def unavailable(self) -> str | None:
        """None when the scorer can answer now; else why not (a shard of a sharded model is down
        or restarting: snnl.sharding). Always None for a local scorer."""
        return self._scorer.unavailable()

    def check(self, samples: Samples | CheckedBatch) -> CheckedBatch:
        """``samples`` checked for this model, once: raw inputs (B, *input_shape) or
        (B, prod(input_shape)) -> ``CheckedSamples`` for a model with a network, {layer: (B,
        d_l)} -> ``CheckedFeatures`` for an embedding-only one; InputError names the field
        otherwise. A batch already checked for this model's kind is returned as it is."""
        return self.inputs.check(samples)

    def forward(self, x: np.ndarray | CheckedSamples) -> ForwardOutput:
        """Logits (B, C) and served-layer features {layer: (B, d_l)} of ``x``, all float32."""
        return self.inputs.forward(self.inputs.check(x))

    def reference_features(self, layer: str) -> np.ndarray:
        """The stored reference matrix (N, d) of ``layer`` as float32, rows in stored order,
        read again from the repository (sha256 checked: RepositoryError if it changed)."""
        if layer not in self.layers:
            raise InputError(f"layer: expected one of {list(self.layers)}, got {layer!r}")
        if self._reference_path is None:
            raise InputError(f"model {self.name!r} was not loaded from a repository")
        data = read_verified(self._reference_path, self.manifest.files[REFERENCE_FILE])
        return load_safetensors(data)[f"features.{layer}"].float().numpy()

    def uncalibrated_scores(self, samples: Samples | CheckedBatch) -> BatchScores:
        """Soft-neighbor scores, hard counts and neighbor masses of a batch, before calibration
        (what the builder calibrates on); a(x) of the manifest's kind is
        ``manifest.nonconformity.apply(scores)``."""
        features, logits, _ = self._features(self.check(samples))
        return self._neighbor_scores(features, logits, neighbors=0)

    def flag_rule(
        self,
        alpha: float | None = None,
        guarantee: str | None = None,
        delta: float | None = None,
        fdr: float | None = None,
    ) -> FlagRule:
        """The flag's rule of a call, each None taken from the manifest (``alpha``,
        ``guarantee``, ``delta``; no ``fdr``), checked against the calibration: InputError
        naming the field, the value and n_cal for a rule it cannot support (snnl.scoring.
        guarantees). ``delta`` is kept for "pac" only (default 0.1)."""
        if self.calibration is None:
            raise InputError(f"model {self.name!r} has no calibration yet")
        guarantee = self.manifest.guarantee if guarantee is None else guarantee
        delta = self.manifest.delta if delta is None else delta
        rule = FlagRule(
            guarantee,  # type: ignore[arg-type]  # FlagRule refuses an unknown name
            check_alpha(alpha, self.manifest.alpha),
            delta,
            fdr,
        )
        if rule.guarantee == "pac":
            rule = replace(rule, delta=rule.pac_delta)
        elif rule.delta is not None:
            rule = replace(rule, delta=None)
        self.calibration.check(rule, len(self.class_names))
        return rule

    def score(
        self,
        samples: np.ndarray | CheckedBatch,
        *,
        alpha: float | None = None,
        guarantee: str | None = None,
        delta: float | None = None,
        fdr: float | None = None,
        neighbors: int = 0,
        batch_size: int | None = None,
        with_features: bool = False,
    ) -> ScoreResult:
        """Score a batch: raw samples (B, *input_shape) or (B, prod(input_shape)) of a model
        with a network, or a batch ``check`` returned (of either kind).

        The flag's rule (None: the manifest's): ``alpha`` its level, ``guarantee`` "marginal",
        "class" or "pac" (with ``delta``), and ``fdr``: also Benjamini-Hochberg at this level
        over the batch's marginal p-values (``outlier_fdr``); checked once, InputError naming
        the value and n_cal when the calibration cannot support it (``flag_rule``).
        ``neighbors``: how many ids of the nearest reference rows per layer (0: none).
        ``batch_size``: score at most this many rows per call (the whole batch is checked
        first; a sample's result does not depend on its batch, ``outlier_fdr`` is over the
        whole batch). ``with_features=True``: the result also carries the logits (None for an
        embedding-only model) and the served-layer features that were scored.
        """
        batch = self.check(samples)
        rule = self.flag_rule(alpha, guarantee, delta, fdr)
        per_sample = replace(rule, fdr=None)  # BH runs once, over the whole batch
        neighbors = check_neighbors(neighbors, self._scorer.reference_size)
        if batch_size is None:
            return self._score(batch, per_sample, neighbors, with_features).with_fdr(rule.fdr)
        if batch_size < 1:
            raise InputError(f"batch_size: expected >= 1, got {batch_size}")
        return ScoreResult.concatenate(
            [
                self._score(rows, per_sample, neighbors, with_features)
                for rows in row_chunks(batch, batch_size)
            ]
        ).with_fdr(rule.fdr)

    def score_features(
        self,
        features: Mapping[str, Any] | CheckedFeatures,
        *,
        alpha: float | None = None,
        guarantee: str | None = None,
        delta: float | None = None,
        fdr: float | None = None,
        neighbors: int = 0,
        batch_size: int | None = None,
        with_features: bool = False,
    ) -> ScoreResult:
        """Score the layer representations {layer: (B, d_l)} of an embedding-only model (every
        served layer, one B); the options as for ``score``."""
        if isinstance(features, np.ndarray):
            raise InputError("features: expected a mapping {layer: (B, d)}, got an array")
        return self.score(
            self.check(features),
            alpha=alpha,
            guarantee=guarantee,
            delta=delta,
            fdr=fdr,
            neighbors=neighbors,
            batch_size=batch_size,
            with_features=with_features,
        )

    score_embeddings = score_features  # the name of the Python API in the docs and the service

    def _features(
        self, batch: CheckedBatch
    ) -> tuple[dict[str, np.ndarray], np.ndarray | None, float]:
        """The served layers of a checked batch, its logits (None: embedding-only) and the
        forward pass's seconds."""
        if isinstance(batch, CheckedFeatures):
            self.inputs.check(batch)  # refused by a model with a network
            return batch.features, None, 0.0
        start = time.perf_counter()
        output = self.inputs.forward(batch)
        return output.features, output.logits, time.perf_counter() - start

    def _neighbor_scores(
        self, features: Mapping[str, np.ndarray], logits: np.ndarray | None, *, neighbors: int
    ) -> BatchScores:
        """Soft-neighbor scores of checked features; the prediction is argmax ``logits``, or
        for embedding-only models the soft-neighbor class argmax of the last layer."""
        predicted = None if logits is None else torch.from_numpy(logits.argmax(1))
        queries = {name: torch.from_numpy(features[name]) for name in self.layers}
        return self._scorer.score(
            queries, predicted, k=self.manifest.neighbors, neighbors=neighbors
        )

    def _score(
        self, batch: CheckedBatch, rule: FlagRule, neighbors: int, with_features: bool
    ) -> ScoreResult:
        """The scores of a checked batch under a checked rule (without its batch FDR)."""
        assert self.calibration is not None  # flag_rule refused the call otherwise
        features, logits, forward_seconds = self._features(batch)
        start = time.perf_counter()
        scores = self._neighbor_scores(features, logits, neighbors=neighbors)
        middle = time.perf_counter()
        a = self.manifest.nonconformity.apply(scores)
        layer_p = self.calibration.layer_p_values(scores.log_score)
        if logits is None:
            confidence = scores.class_probability.max(1)
        else:
            shifted = logits.astype(np.float64) - logits.max(1, keepdims=True)
            confidence = 1.0 / np.exp(shifted).sum(1)
        broken = ~(np.isfinite(a) & np.isfinite(confidence))
        if broken.any():  # finite inputs so large that the layers or distances overflow
            raise InputError(
                f"{'embeddings' if logits is None else 'inputs'}: sample "
                f"{int(np.flatnonzero(broken)[0])} makes the model overflow (non-finite layer "
                "outputs or scores); values of that magnitude are not supported"
            )
        decision = self.calibration.decide(rule, a, scores.predicted)
        end = time.perf_counter()
        result = ScoreResult(
            layers=self.layers,
            class_names=self.class_names,
            prediction=scores.predicted,
            confidence=confidence,
            nonconformity=a,
            p_value=decision.p_value,
            outlier=decision.outlier,
            soft_neighbor_score=np.exp(scores.log_score),
            same_class_neighbors=scores.same_class,
            layer_p_value=layer_p,
            neighbor_ids=scores.neighbor_ids,
            alpha=rule.alpha,
            timings={
                "forward": forward_seconds,
                "neighbors": middle - start,
                "calibrate": end - middle,
            },
            marginal_p_value=decision.marginal_p_value,
            guarantee=rule.guarantee,
            delta=rule.delta,
        )
        if with_features:
            return replace(result, logits=logits, features=dict(features))
        return result


def check_compute_dtype(compute_dtype: str) -> torch.dtype:
    """The torch dtype of a ``ComputeDtype`` name; InputError for another name."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise InputError(
            f"compute_dtype: expected one of {', '.join(COMPUTE_DTYPES)}, got {compute_dtype!r}"
        )
    return COMPUTE_DTYPES[compute_dtype]


def _check_consistency(
    manifest: Manifest,
    reference: ReferenceSet,
    calibration: Calibration,
    runner: OnnxRunner | None,
    folder: Path,
) -> None:
    """RepositoryError when the files of ``folder`` disagree with each other or the manifest."""
    for layer in manifest.layers:
        dim = reference.dims()[layer.name]
        if dim != layer.dim or reference.size != layer.reference_size:
            raise RepositoryError(
                f"{folder / REFERENCE_FILE}: layer {layer.name!r} is ({reference.size}, {dim}),"
                f" the manifest says ({layer.reference_size}, {layer.dim})"
            )
    if calibration.size != manifest.calibration_size:
        raise RepositoryError(
            f"{folder / CALIBRATION_FILE}: {calibration.size} calibration points, the "
            f"manifest says {manifest.calibration_size}"
        )
    predicted = calibration.predicted
    if (
        predicted is not None
        and predicted.size
        and int(predicted.max()) >= len(manifest.class_names)
    ):
        raise RepositoryError(
            f"{folder / CALIBRATION_FILE}: 'predicted' holds class {int(predicted.max())}, the "
            f"manifest has {len(manifest.class_names)} classes"
        )
    rule = FlagRule(manifest.guarantee, manifest.alpha, manifest.delta)
    try:
        calibration.check(rule, len(manifest.class_names))
    except InputError as err:
        raise RepositoryError(f"{folder}: the manifest's default flag rule: {err}") from err
    low, high = int(reference.labels.min()), int(reference.labels.max())
    if low < 0 or high >= len(manifest.class_names):
        raise RepositoryError(
            f"{folder / REFERENCE_FILE}: labels must lie in [0, {len(manifest.class_names)}) "
            f"(one per class name), got {low}..{high}"
        )
    if runner is not None:
        expected = {"logits": len(manifest.class_names)} | {x.name: x.dim for x in manifest.layers}
        for output, width in runner.widths.items():
            if width is not None and width != expected[output]:
                raise RepositoryError(
                    f"{folder / ONNX_FILE}: output {output!r} has width {width}, "
                    f"the manifest says {expected[output]}"
                )
