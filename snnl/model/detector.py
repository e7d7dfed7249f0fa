"""``Detector``: one served model = ONNX runtime + soft-neighbor scorer + calibration.

    det = Detector.load("models", "digits-mlp")       # device "auto" | "cpu" | "cuda"
    res = det.score(x)                                 # x (B, *input_shape) or (B, prod(shape))
    res = det.score_embeddings({"embedding": e})       # embedding-only models: {layer: (B, d_l)}

A score is one forward pass (logits and the served layers), then per layer one chunked matrix
product against the reference set on the device (snnl.scoring.scorer, which also computes the
neighbor-mass terms of the manifest's nonconformity), then a(x) of the manifest's kind and
p-values from the sorted calibration arrays (snnl.scoring.conformal). The object is read-only after
loading: ``score`` may be called from any thread.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load as load_safetensors

from snnl.errors import InputError, RepositoryError
from snnl.model.manifest import CALIBRATION_FILE, ONNX_FILE, REFERENCE_FILE, Manifest
from snnl.model.reference import ReferenceSet
from snnl.model.runtime import ForwardOutput, OnnxRunner, resolve_device
from snnl.model.store import map_verified, read_model_files, read_verified
from snnl.scoring.batch import Samples, row_chunks
from snnl.scoring.conformal import Calibration, flag, mass_nonconformity
from snnl.scoring.conformal import nonconformity as neg_log_score
from snnl.scoring.nonconformity import NeighborMass
from snnl.scoring.results import ScoreResult
from snnl.scoring.scorer import BatchScores, SoftNeighborScorer, default_chunk_size
from snnl.scoring.validation import check_alpha, check_embeddings, check_inputs, check_neighbors
from snnl.sharding.scorer import ShardedScorer

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


class Detector:
    """A loaded model of the repository. Build it with :meth:`load`.

    ``calibration`` may be None only while a model is being exported (``batch_scores`` works,
    ``score`` does not).
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
        scorer: ShardedScorer | None = None,
    ) -> None:
        self.manifest = manifest
        self.calibration = calibration
        self.device = str(device)
        self.compute_dtype: ComputeDtype = compute_dtype
        self._runner = runner
        self._reference_path = reference_path
        specs = {layer.name: layer for layer in manifest.layers}
        self.layers: tuple[str, ...] = tuple(specs)
        self.reference_labels: np.ndarray = reference.labels.cpu().numpy()
        self.reference_sizes: dict[str, int] = {name: reference.size for name in self.layers}
        self._dims = {name: layer.dim for name, layer in specs.items()}
        self._scorer: SoftNeighborScorer | ShardedScorer
        if scorer is not None:  # the reference rows are held elsewhere (snnl.sharding)
            self._scorer = scorer
            return
        spec = manifest.nonconformity
        terms = spec.terms if isinstance(spec, NeighborMass) else []
        self._scorer = SoftNeighborScorer(
            {name: reference.features[name].to(device) for name in self.layers},
            reference.labels.to(device),
            num_classes=len(manifest.class_names),
            temperatures={name: layer.temperature for name, layer in specs.items()},
            distances={name: layer.distance for name, layer in specs.items()},
            mass_terms=[(t.layer, t.distance, t.temperature) for t in terms],
            chunk_size=chunk_size or default_chunk_size(device),
            compute_dtype=COMPUTE_DTYPES[compute_dtype],
        )

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
        shards: int = 0,
        backend: str = "ray",
        ray_address: str | None = None,
    ) -> Detector:
        """Load ``repository/<name>`` (checksums verified) onto ``device``.

        ``threads``: ONNX Runtime intra-op threads (None: its default). ``chunk_size``: reference
        rows per matrix product (None: 4096 on the CPU, 262144 on a GPU). ``compute_dtype``: the
        dtype of the reference products, "float32" (default), "bfloat16" or "float16" (rows and
        queries rounded to it, sums in float32: faster, see docs/performance.md for the measured
        error). ``shards`` >= 1 splits every layer's reference rows into that many shards held by
        actors of ``backend`` ("ray", the only one) at ``ray_address`` (None: a private local
        cluster, or the one in ``RAY_ADDRESS``; "auto" or "ray://host:10001": a running one);
        the scores are the same as unsharded (snnl.sharding). RepositoryError names a missing,
        tampered or malformed file.
        """
        if compute_dtype not in COMPUTE_DTYPES:
            raise InputError(
                f"compute_dtype: expected one of {', '.join(COMPUTE_DTYPES)}, got {compute_dtype!r}"
            )
        target = resolve_device(device)
        folder = Path(repository) / name
        scorer = None
        if shards:
            from snnl.sharding.loading import open_sharded

            opened = open_sharded(
                repository,
                name,
                shards=shards,
                backend=backend,
                ray_address=ray_address,
                device=device,
                chunk_size=chunk_size,
                compute_dtype=COMPUTE_DTYPES[compute_dtype],
            )
            manifest, files, reference = opened.manifest, opened.files, opened.reference
            scorer = opened.scorer
        else:
            # The reference is memory-mapped (file-backed pages, shared between processes).
            manifest, files = read_model_files(repository, name, skip=(REFERENCE_FILE,))
            reference = ReferenceSet.from_bytes(
                map_verified(folder / REFERENCE_FILE, manifest.files[REFERENCE_FILE]),
                [layer.name for layer in manifest.layers],
                device=target,
                source=folder / REFERENCE_FILE,
            )
        layers = [layer.name for layer in manifest.layers]
        calibration = Calibration.from_bytes(
            files[CALIBRATION_FILE], layers, source=folder / CALIBRATION_FILE
        )
        runner = None
        if not manifest.embedding_only:
            runner = OnnxRunner(
                files[ONNX_FILE], layers, target, threads=threads, source=str(folder / ONNX_FILE)
            )
        _check_consistency(manifest, reference, calibration, runner, folder)
        return cls(
            manifest,
            reference=reference,
            calibration=calibration,
            runner=runner,
            device=target,
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
        shape = self.manifest.input_shape
        return None if shape is None else tuple(shape)

    @property
    def backend(self) -> str:
        """ "onnxruntime" (with the execution provider in ``provider``) or "none"."""
        return "none" if self._runner is None else "onnxruntime"

    @property
    def provider(self) -> str | None:
        """The ONNX Runtime execution provider in use, None for an embedding-only model."""
        return None if self._runner is None else self._runner.provider

    def unavailable(self) -> str | None:
        """None when the scorer can answer now; else why not (a shard of a sharded model is down
        or restarting: snnl.sharding). Always None for an unsharded model."""
        return self._scorer.unavailable() if isinstance(self._scorer, ShardedScorer) else None

    def forward(self, x: np.ndarray, *, validated: bool = False) -> ForwardOutput:
        """Logits (B, C) and served-layer features {layer: (B, d_l)} of ``x``, all float32.

        ``validated=True``: ``x`` already passed ``check_samples`` (float32, (B, *input_shape)),
        so it is not checked again."""
        if self._runner is None or self.input_shape is None:
            raise InputError(f"model {self.name!r} is embedding-only: send embeddings, not inputs")
        return self._runner.run(x if validated else check_inputs(x, self.input_shape))

    def check_samples(self, samples: Samples) -> Samples:
        """``samples`` validated for this model: raw inputs (B, *input_shape) as float32 for a
        model with a network, {layer: (B, d_l)} float32 for an embedding-only one; InputError
        names the field otherwise. What ``score_samples(..., validated=True)`` expects."""
        if self.input_shape is None:
            if isinstance(samples, np.ndarray):
                raise InputError(
                    f"model {self.name!r} is embedding-only: send embeddings, not inputs"
                )
            return check_embeddings(samples, self._dims)
        if not isinstance(samples, np.ndarray):
            raise InputError(f"model {self.name!r} has a network: send inputs, not embeddings")
        return check_inputs(samples, self.input_shape)

    def reference_features(self, layer: str) -> np.ndarray:
        """The stored reference matrix (N, d) of ``layer`` as float32, rows in stored order,
        read again from the repository (sha256 checked: RepositoryError if it changed)."""
        if layer not in self.layers:
            raise InputError(f"layer: expected one of {list(self.layers)}, got {layer!r}")
        if self._reference_path is None:
            raise InputError(f"model {self.name!r} was not loaded from a repository")
        data = read_verified(self._reference_path, self.manifest.files[REFERENCE_FILE])
        return load_safetensors(data)[f"features.{layer}"].float().numpy()

    def batch_scores(
        self,
        features: Mapping[str, np.ndarray],
        logits: np.ndarray | None,
        *,
        neighbors: int = 0,
    ) -> BatchScores:
        """Soft-neighbor scores of validated features; the prediction is argmax ``logits``, or
        for embedding-only models the soft-neighbor class argmax of the last layer."""
        predicted = None if logits is None else torch.from_numpy(logits.argmax(1))
        queries = {name: torch.from_numpy(features[name]) for name in self.layers}
        return self._scorer.score(
            queries, predicted, k=self.manifest.neighbors, neighbors=neighbors
        )

    def raw_scores(self, samples: Samples, *, validated: bool = False) -> BatchScores:
        """Soft-neighbor scores of ``samples`` (inputs or {layer: embeddings}) without
        calibration: what the builder calibrates on."""
        if not validated:
            samples = self.check_samples(samples)
        if isinstance(samples, np.ndarray):
            output = self.forward(samples, validated=True)
            return self.batch_scores(output.features, output.logits)
        return self.batch_scores(samples, None)

    def nonconformity(self, scores: BatchScores) -> np.ndarray:
        """a (B,) of the manifest's kind: the neighbor-mass sum (snnl.scoring.neighbor_mass) or
        sum_l -log max(s_l, 1e-12) (snnl.scoring.conformal); see docs/method.md."""
        spec = self.manifest.nonconformity
        if isinstance(spec, NeighborMass):
            return mass_nonconformity(scores.log_mass, spec)
        return neg_log_score(scores.log_score)

    def score(
        self,
        x: np.ndarray,
        *,
        alpha: float | None = None,
        neighbors: int = 0,
        validated: bool = False,
        with_features: bool = False,
    ) -> ScoreResult:
        """Score samples ``x`` (B, *input_shape) or (B, prod(input_shape)).

        ``validated=True``: ``x`` already passed ``check_samples``. ``with_features=True``: the
        result also carries the logits and the served-layer features of the forward pass."""
        alpha = check_alpha(alpha, self.manifest.alpha)
        neighbors = check_neighbors(neighbors, self._scorer.reference_size)
        start = time.perf_counter()
        output = self.forward(x, validated=validated)
        forward = time.perf_counter() - start
        result = self._finish(output.features, output.logits, alpha, neighbors, forward)
        if with_features:
            return replace(result, logits=output.logits, features=output.features)
        return result

    def score_embeddings(
        self,
        embeddings: Mapping[str, np.ndarray],
        *,
        alpha: float | None = None,
        neighbors: int = 0,
        validated: bool = False,
        with_features: bool = False,
    ) -> ScoreResult:
        """Score layer representations {layer: (B, d_l)} of an embedding-only model
        (``validated``, ``with_features``: as for ``score``; the features are the embeddings)."""
        if self._runner is not None:
            raise InputError(f"model {self.name!r} has a network: send inputs, not embeddings")
        alpha = check_alpha(alpha, self.manifest.alpha)
        neighbors = check_neighbors(neighbors, self._scorer.reference_size)
        features = dict(embeddings) if validated else check_embeddings(embeddings, self._dims)
        result = self._finish(features, None, alpha, neighbors, 0.0)
        return replace(result, features=features) if with_features else result

    def score_samples(
        self,
        samples: Samples,
        *,
        alpha: float | None = None,
        neighbors: int = 0,
        validated: bool = False,
        with_features: bool = False,
    ) -> ScoreResult:
        """``score`` for an array, ``score_embeddings`` for {layer: (B, d_l)}."""
        if isinstance(samples, np.ndarray):
            return self.score(
                samples,
                alpha=alpha,
                neighbors=neighbors,
                validated=validated,
                with_features=with_features,
            )
        return self.score_embeddings(
            samples,
            alpha=alpha,
            neighbors=neighbors,
            validated=validated,
            with_features=with_features,
        )

    def score_in_batches(
        self,
        samples: Samples,
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        alpha: float | None = None,
        neighbors: int = 0,
        with_features: bool = False,
    ) -> Iterator[ScoreResult]:
        """``score_samples`` over consecutive chunks of at most ``batch_size`` rows, in order.

        Everything is checked by this call, before the iterator scores its first chunk
        (samples, alpha, neighbors), so a bad row fails up front and a consumer never sees
        partial output."""
        if batch_size < 1:
            raise InputError(f"batch_size: expected >= 1, got {batch_size}")
        checked = self.check_samples(samples)
        alpha = check_alpha(alpha, self.manifest.alpha)
        neighbors = check_neighbors(neighbors, self._scorer.reference_size)
        return (
            self.score_samples(
                rows, alpha=alpha, neighbors=neighbors, validated=True, with_features=with_features
            )
            for rows in row_chunks(checked, batch_size)
        )

    def _finish(
        self,
        features: Mapping[str, np.ndarray],
        logits: np.ndarray | None,
        alpha: float,
        neighbors: int,
        forward_seconds: float,
    ) -> ScoreResult:
        if self.calibration is None:
            raise InputError(f"model {self.name!r} has no calibration yet")
        start = time.perf_counter()
        scores = self.batch_scores(features, logits, neighbors=neighbors)
        middle = time.perf_counter()
        a = self.nonconformity(scores)
        p = self.calibration.p_value(a)
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
        outlier = flag(p, alpha)
        end = time.perf_counter()
        return ScoreResult(
            layers=self.layers,
            class_names=self.class_names,
            prediction=scores.predicted,
            confidence=confidence,
            nonconformity=a,
            p_value=p,
            outlier=outlier,
            soft_neighbor_score=np.exp(scores.log_score),
            same_class_neighbors=scores.same_class,
            layer_p_value=layer_p,
            neighbor_ids=scores.neighbor_ids,
            alpha=alpha,
            timings={
                "forward": forward_seconds,
                "neighbors": middle - start,
                "calibrate": end - middle,
            },
        )


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
