"""What the running service holds: each loaded model with its batcher, and readiness.

Loading happens after the server starts listening (``load_all``, run by the app's lifespan), so
``/healthz`` answers at once and ``/readyz`` turns 200 only when every model of the repository is
loaded and warmed up by real scoring calls in its own scoring thread.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from service.batching import DynamicBatcher
from service.errors import Unavailable, UnknownModel
from service.metrics import ServiceMetrics
from service.payload import InputSpec
from service.schemas import CalibrationSummary, LayerInfo, ModelInfo
from service.settings import Settings
from service.worker import ScoreFn
from snnl.errors import RepositoryError
from snnl.evaluation.embeddings import evaluate_detector
from snnl.model.detector import Detector
from snnl.model.runtime import resolve_device
from snnl.model.store import list_models
from snnl.scoring.batch import Samples, slice_rows
from snnl.scoring.results import ScoreResult

logger = logging.getLogger("snnl.service")


@dataclass
class ServedModel:
    """A loaded, warmed-up model and the batcher that feeds its scoring thread."""

    detector: Detector
    batcher: DynamicBatcher[ScoreResult]
    spec: InputSpec
    info: ModelInfo
    manifest: dict[str, Any]
    calibration: CalibrationSummary

    @property
    def version(self) -> str:
        return self.detector.version

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.detector.class_names)

    async def evaluate(self, samples: Samples, labels: np.ndarray) -> dict[str, Any]:
        """Embedding evaluation of a labeled batch, run in the model's scoring thread (its
        samples count against the model's queue: 413 / 503 as for scoring)."""
        given = {"inputs": samples} if isinstance(samples, np.ndarray) else {"embeddings": samples}
        evaluate = partial(evaluate_detector, self.detector, labels, validated=True, **given)
        evaluation = await self.batcher.call(evaluate, size=len(labels))
        return evaluation.to_dict()


def _score_call(detector: Detector) -> ScoreFn[ScoreResult]:
    """``score(samples, alpha, neighbors)`` for the batcher. Every batch it sees was validated
    once, when its request was parsed (service.payload, with the same checks as the Detector),
    or built valid by the warm-up, so the Detector does not check it again."""
    return lambda s, alpha, k: detector.score_samples(s, alpha=alpha, neighbors=k, validated=True)


def _warm_up(detector: Detector, batch_size: int, iterations: int) -> None:
    """Real scoring calls at full batch size and at 1 sample (allocations, kernels, caches).

    Embedding-only models get standard normal rows (reading the reference back from disk to
    borrow real rows would hash and copy the whole file again before /readyz)."""
    if detector.input_shape is None:
        rng = np.random.default_rng(0)
        batch: Samples = {
            layer: rng.standard_normal((batch_size, dim), dtype=np.float32)
            for layer, dim in _layer_dims(detector).items()
        }
    else:
        batch = np.zeros((batch_size, *detector.input_shape), dtype=np.float32)
    score = _score_call(detector)
    one = slice_rows(batch, 0, 1)
    for _ in range(iterations):
        score(batch, None, 0)
        score(one, None, 0)


def _layer_dims(detector: Detector) -> dict[str, int]:
    return {layer.name: layer.dim for layer in detector.manifest.layers}


def _describe(detector: Detector) -> tuple[ModelInfo, CalibrationSummary]:
    manifest = detector.manifest
    info = ModelInfo(
        name=detector.name,
        version=detector.version,
        embedding_only=detector.input_shape is None,
        input_shape=None if detector.input_shape is None else list(detector.input_shape),
        classes=list(detector.class_names),
        layers=[
            LayerInfo(
                name=layer.name,
                dim=layer.dim,
                distance=layer.distance,
                temperature=layer.temperature,
                reference_size=detector.reference_sizes[layer.name],
            )
            for layer in manifest.layers
        ],
        reference_size=max(detector.reference_sizes.values()),
        alpha=manifest.alpha,
        device=detector.device,
        backend=detector.backend,
    )
    if detector.calibration is None:
        raise RepositoryError(f"model {detector.name!r}: no calibration to serve p-values from")
    calibration = CalibrationSummary.model_validate(detector.calibration.summary(manifest.alpha))
    return info, calibration


class ServiceState:
    """The models of one repository, their batchers, and whether the service is ready."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.api_keys = settings.api_key_bytes()
        self.names: tuple[str, ...] = tuple(list_models(settings.model_repository))
        if not self.names:
            raise RepositoryError(
                f"model repository {str(settings.model_repository)!r} holds no model "
                "(no <name>/manifest.json)"
            )
        resolve_device(settings.device)  # fail at start-up, not in the background load
        self.models: dict[str, ServedModel] = {}
        self.ready = False
        self.failure: str | None = None

    def knows(self, name: str) -> bool:
        """True when ``name`` is a model of the repository (loaded or not)."""
        return name in self.names

    def served(self, name: str) -> ServedModel:
        """The loaded model; 404 if the repository has no such model, 503 while loading."""
        if name not in self.names:
            raise UnknownModel(
                f"model {name!r}: not in the repository (models: {', '.join(self.names)})"
            )
        self.raise_if_not_ready()
        return self.models[name]

    def raise_if_failed(self) -> None:
        """503 when loading failed (the process cannot serve; let the orchestrator restart it)."""
        if self.failure is not None:
            raise Unavailable(f"loading the repository failed: {self.failure}", retry_after=60)

    def raise_if_not_ready(self) -> None:
        """503 until every model is loaded and warmed up."""
        self.raise_if_failed()
        if not self.ready:
            raise Unavailable(
                f"not ready: {len(self.models)} of {len(self.names)} models loaded and warmed up"
            )

    async def load_all(self) -> None:
        """Load, warm up and publish every model, one after the other; then turn ready."""
        try:
            for name in self.names:
                self.models[name] = await self._load(name)
                logger.info("model ready", extra={"fields": {"model": name}})
        except Exception as err:
            self.failure = str(err)
            logger.error("loading failed", extra={"fields": {"error": str(err)}})
            return
        self.ready = True
        logger.info("ready", extra={"fields": {"models": list(self.names)}})

    async def _load(self, name: str) -> ServedModel:
        s = self.settings
        detector = await asyncio.to_thread(
            Detector.load, s.model_repository, name, device=s.device, threads=s.scoring_threads
        )
        batcher: DynamicBatcher[ScoreResult] = DynamicBatcher(
            name,
            _score_call(detector),
            max_batch_size=s.max_batch_size,
            max_wait_s=s.max_batch_wait_s,
            max_queue=s.max_queue,
            timeout_s=s.request_timeout_s,
            metrics=self.metrics,
        )
        batcher.start()
        try:
            await batcher.warm_up(
                partial(_warm_up, detector, s.max_batch_size, s.warmup_iterations)
            )
        except BaseException:
            await batcher.stop()
            raise
        info, calibration = _describe(detector)
        self.metrics.register_model(
            name, detector.version, detector.device, detector.backend, detector.reference_sizes
        )
        return ServedModel(
            detector=detector,
            batcher=batcher,
            spec=InputSpec(detector.input_shape, _layer_dims(detector)),
            info=info,
            manifest=detector.manifest.model_dump(mode="json"),
            calibration=calibration,
        )

    async def close(self) -> None:
        """Stop every batcher (waiting requests get 503)."""
        for served in self.models.values():
            await served.batcher.stop()
