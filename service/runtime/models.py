"""What the running service holds: each model of the repository, its state, and readiness.

Loading happens after the server starts listening (``load_all``, run by the app's lifespan), so
``/healthz`` answers at once. Each model is loaded, checked and warmed up by real scoring calls in
its own scoring thread before it serves; a model that fails is refused on its own (one log line
naming the file and the reason; requests to it get 503 with that reason) and the others serve.

Readiness: ``/readyz`` is 200 once the first load of the repository is done and at least one model
serves; the models that could not be loaded are listed in its body (and in ``GET /v1/models``),
so one bad folder on a shared volume does not take every replica out of its load balancer. It is
503 while loading, when no model serves, and from the moment a shutdown starts. With worker
processes (``peers``) it is also 503 until every worker has loaded the repository.

Reload (``sync``: on SIGHUP, ``POST /v1/admin/reload``, every ``repository_poll_s``; ``load`` and
``unload`` for one model): a model whose manifest changed (its sha256; the manifest holds the
sha256 of every other file) is loaded and warmed up beside the serving version, then swapped in
one step on the event loop: requests resolved before the swap finish on the old version, later
ones get the new one, and the old batcher stops once its queue is empty. A version that fails to
load never serves; the previous one, if any, keeps serving and the failure is reported. With
worker processes, ``POST /v1/admin/reload`` on one worker reaches all (``reload_peers``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np

from service.api.schemas import CalibrationSummary, LayerInfo, ModelInfo, ModelStatus
from service.http.errors import Unavailable, UnknownModel
from service.http.metrics import ServiceMetrics
from service.http.security import ApiKeys
from service.runtime.batcher import DynamicBatcher
from service.runtime.runner import DEFAULT_FLAG, evaluate_call, score_call
from service.settings import Settings
from service.workers import Peers
from snnl.errors import InputError, RepositoryError
from snnl.model.detector import Detector
from snnl.model.runtime import resolve_device
from snnl.model.store import list_models, manifest_fingerprint
from snnl.monitoring import ModelDriftMonitor
from snnl.scoring.batch import CheckedBatch, slice_rows
from snnl.scoring.results import ScoreResult

logger = logging.getLogger("snnl.service")


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: raw samples of ``input_shape``, or embeddings {layer: dim}."""

    input_shape: tuple[int, ...] | None
    layer_dims: Mapping[str, int]


@dataclass
class ServedModel:
    """A loaded, warmed-up model and the batcher that feeds its scoring thread."""

    detector: Detector
    batcher: DynamicBatcher[ScoreResult]
    spec: InputSpec
    info: ModelInfo
    manifest: dict[str, Any]
    calibration: CalibrationSummary
    drift: ModelDriftMonitor | None = None  # None when SNNL_DRIFT_ENABLED is false

    @property
    def name(self) -> str:
        return self.detector.name

    @property
    def version(self) -> str:
        return self.detector.version

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.detector.class_names)

    async def evaluate(self, samples: CheckedBatch, labels: np.ndarray) -> dict[str, Any]:
        """Embedding evaluation of a labeled batch, run in the model's scoring thread (its
        samples count against the model's queue: 413 / 503 as for scoring)."""
        evaluate = evaluate_call(self.detector, samples, labels)
        evaluation = await self.batcher.call(evaluate, size=len(labels))
        return evaluation.to_dict()


def _load_detector(s: Settings, name: str) -> Detector:
    """The model ``name`` of the repository, its reference rows sharded over Ray actors when
    ``s.shards`` >= 1."""
    if s.shards:
        from snnl.sharding import load_sharded_detector

        return load_sharded_detector(
            s.model_repository,
            name,
            shards=s.shards,
            ray_address=s.ray_address,
            device=s.device,
            threads=s.scoring_threads,
            compute_dtype=s.compute_dtype,
        )
    return Detector.load(
        s.model_repository,
        name,
        device=s.device,
        threads=s.scoring_threads,
        compute_dtype=s.compute_dtype,
    )


def _warm_up(detector: Detector, batch_size: int, iterations: int) -> None:
    """Real scoring calls at full batch size and at 1 sample (allocations, kernels, caches).

    Embedding-only models get standard normal rows (reading the reference back from disk to
    borrow real rows would hash and copy the whole file again before /readyz)."""
    batch: CheckedBatch
    if detector.input_shape is None:
        rng = np.random.default_rng(0)
        batch = detector.check(
            {
                layer: rng.standard_normal((batch_size, dim), dtype=np.float32)
                for layer, dim in _layer_dims(detector).items()
            }
        )
    else:
        batch = detector.check(np.zeros((batch_size, *detector.input_shape), dtype=np.float32))
    score = score_call(detector)
    one = slice_rows(batch, 0, 1)
    for _ in range(iterations):
        score(batch, DEFAULT_FLAG, 0)
        score(one, DEFAULT_FLAG, 0)


def _observe_drift(
    monitor: ModelDriftMonitor, metrics: ServiceMetrics, model: str, scored: list[ScoreResult]
) -> None:
    """One scored batch into the model's drift monitor, and its state into the metrics. The
    monitor gets the marginal p-values (``marginal_p_value``, ``layer_p_value``): its guarantee is
    stated for them, whatever guarantee a request asked for (``class`` serves Mondrian p-values)."""
    p = np.concatenate([_marginal(result) for result in scored])
    layer_p = np.concatenate([result.layer_p_value for result in scored])
    metrics.observe_drift(model, monitor.update(p, layer_p))


def _marginal(result: ScoreResult) -> np.ndarray:
    """The marginal p-values of a result (a result built without them serves marginal ones)."""
    return result.p_value if result.marginal_p_value is None else result.marginal_p_value


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
        guarantee=manifest.guarantee,
        delta=manifest.delta,
        device=detector.device,
        backend=detector.backend,
    )
    if detector.calibration is None:
        raise RepositoryError(f"model {detector.name!r}: no calibration to serve p-values from")
    calibration = CalibrationSummary.model_validate(
        detector.calibration.summary(detector.flag_rule(), len(manifest.class_names))
    )
    return info, calibration


@dataclass
class ModelEntry:
    """One model of the repository: the version that serves (if any) and why it does not."""

    name: str
    served: ServedModel | None = None
    loading: bool = False
    reason: str = ""
    fingerprint: str | None = None  # manifest sha256 of the served version or the failed one
    unloaded: bool = False  # unloaded on request: repository syncs leave it alone

    def status(self) -> ModelStatus:
        """READY while a version serves (even while a new one loads), else LOADING or
        UNAVAILABLE with the reason."""
        state: Literal["READY", "LOADING", "UNAVAILABLE"] = (
            "READY" if self.served else "LOADING" if self.loading else "UNAVAILABLE"
        )
        version = self.served.version if self.served else None
        return ModelStatus(name=self.name, version=version, state=state, reason=self.reason)


class ServiceState:
    """The models of one repository, their batchers, API keys, and whether the service is ready."""

    def __init__(
        self, settings: Settings, metrics: ServiceMetrics, peers: Peers | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.peers = peers
        try:
            self.keys = ApiKeys(settings.api_key_bytes(), settings.api_keys_file)
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise InputError(f"setting api_keys_file (SNNL_API_KEYS_FILE): {err}") from None
        names = list_models(settings.model_repository)
        if not names:
            raise RepositoryError(
                f"model repository {str(settings.model_repository)!r} holds no model "
                "(no <name>/manifest.json)"
            )
        resolve_device(settings.device)  # fail at start-up, not in the background load
        self.entries: dict[str, ModelEntry] = {name: ModelEntry(name) for name in names}
        self.started = False  # the first load of the repository is done
        self.shutting_down = False
        self._lock = asyncio.Lock()  # one load, unload or sync at a time
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def api_keys(self) -> tuple[bytes, ...]:
        """The API keys accepted now (the keys file is re-read when it changes)."""
        return self.keys.current()

    @property
    def models(self) -> dict[str, ServedModel]:
        """The models that serve now, by name."""
        return {n: e.served for n, e in sorted(self.entries.items()) if e.served is not None}

    def served(self, name: str) -> ServedModel:
        """The version of ``name`` that serves now; 404 if the repository has no such model,
        503 while it loads or when it cannot be loaded (with the reason)."""
        entry = self.entries.get(name)
        if entry is None:
            raise UnknownModel(
                f"model {name!r}: not in the repository (models: {', '.join(self.entries)})"
            )
        if entry.served is not None:
            return entry.served
        if entry.loading or not self.started:
            raise Unavailable(f"not ready: model {name!r} is loading")
        raise Unavailable(f"model {name!r}: unavailable: {entry.reason}", retry_after=30)

    def raise_if_not_ready(self) -> None:
        """503 while shutting down, before the first load is done, and when no model serves."""
        if self.shutting_down:
            raise Unavailable("not ready: the service is shutting down")
        if not self.started:
            raise Unavailable(
                f"not ready: {len(self.models)} of {len(self.entries)} models loaded and warmed up"
            )
        if not self.models:
            reasons = "; ".join(f"{e.name}: {e.reason}" for e in self.entries.values())
            raise Unavailable(f"not ready: no model serves ({reasons})", retry_after=30)

    def raise_if_peers_not_ready(self) -> None:
        """503 until every worker process has loaded the repository (one process: never)."""
        reason = None if self.peers is None else self.peers.not_ready()
        if reason is not None:
            raise Unavailable(reason)

    def reload_peers(self) -> None:
        """Have the other worker processes reload too (one process: nothing to do)."""
        if self.peers is not None:
            self.peers.reload_all()

    def unavailable(self) -> list[ModelStatus]:
        """The models of the repository that do not serve, with why."""
        return [e.status() for _, e in sorted(self.entries.items()) if e.served is None]

    def index(self) -> list[ModelStatus]:
        """Every model known or now in the repository, with its state (one that appeared since
        the last reload is UNAVAILABLE until loaded)."""
        try:
            present = list_models(self.settings.model_repository)
        except RepositoryError:
            present = []
        statuses = {name: entry.status() for name, entry in self.entries.items()}
        for name in present:
            statuses.setdefault(
                name, ModelStatus(name=name, state="UNAVAILABLE", reason="new: not loaded yet")
            )
        return [statuses[name] for name in sorted(statuses)]

    def begin_shutdown(self) -> None:
        """Turn readiness to 503 (requests are still served until the socket closes)."""
        if not self.shutting_down:
            self.shutting_down = True
            if self.peers is not None:
                self.peers.mark_not_ready()
            logger.info("shutting down: readiness now 503")

    async def raise_if_unavailable(self) -> None:
        """503 while a loaded model cannot score now (a shard of its reference is missing)."""
        for name, served in self.models.items():
            reason = await asyncio.to_thread(served.detector.unavailable)
            if reason is not None:
                raise Unavailable(f"model {name!r}: {reason}")

    async def load_all(self) -> None:
        """Load, warm up and publish every model, one after the other; then turn ready."""
        async with self._lock:
            for name in list(self.entries):
                await self._load_entry(name)
            self.started = True
            if self.peers is not None and not self.shutting_down:
                self.peers.mark_ready()
        logger.info("ready", extra={"fields": {"models": list(self.models)}})

    async def sync(self) -> list[ModelStatus]:
        """Follow the repository: load added and changed models, unload removed ones (models
        unloaded on request stay unloaded); the index afterwards."""
        async with self._lock:
            try:
                present = list_models(self.settings.model_repository)
            except RepositoryError as err:
                logger.error("repository not reloaded", extra={"fields": {"error": str(err)}})
                return self.index()
            for name in [n for n in self.entries if n not in present]:
                await self._unload_entry(name, "removed from the repository")
                del self.entries[name]
            for name in present:
                entry = self.entries.get(name)
                if entry is not None and entry.unloaded:
                    continue
                fingerprint = manifest_fingerprint(self.settings.model_repository, name)
                if entry is None or fingerprint != entry.fingerprint:  # a failure is tried once
                    await self._load_entry(name)
            return self.index()

    async def reload(self) -> list[ModelStatus]:
        """Re-read the API keys file and follow the repository (SIGHUP, the admin endpoint)."""
        self.keys.refresh()
        return await self.sync()

    async def load(self, name: str) -> ModelStatus:
        """(Re)load one model from the repository, also one unloaded before; its status."""
        async with self._lock:
            try:
                present = list_models(self.settings.model_repository)
            except RepositoryError as err:
                raise Unavailable(str(err), retry_after=30) from None
            if name not in present:
                raise UnknownModel(f"model {name!r}: no {name}/manifest.json in the repository")
            entry = self.entries.setdefault(name, ModelEntry(name))
            entry.unloaded = False
            await self._load_entry(name)
            return entry.status()

    async def unload(self, name: str) -> ModelStatus:
        """Stop serving ``name`` (in-flight requests finish) until it is loaded again."""
        async with self._lock:
            if name not in self.entries:
                raise UnknownModel(f"model {name!r}: not in the repository")
            await self._unload_entry(
                name, f"unloaded (POST /v2/repository/models/{name}/load serves it again)"
            )
            self.entries[name].unloaded = True
            return self.entries[name].status()

    def watch(self) -> None:
        """Start following the repository every ``repository_poll_s`` seconds (0: never)."""
        if self.settings.repository_poll_s > 0:
            self._spawn(self._poll(), "snnl-poll-repository")

    def hangup(self) -> None:
        """SIGHUP: reload keys and repository in the background (one log line each)."""
        self._spawn(self.reload(), "snnl-reload")

    def _spawn(self, work: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.repository_poll_s)
            await self.sync()

    async def _load_entry(self, name: str) -> None:
        """Load ``name`` beside its serving version and swap it in; on failure keep the old
        version (if any) and record the reason. A repository that changes while loading is
        read again (the version loaded must be the one its manifest names)."""
        entry = self.entries.setdefault(name, ModelEntry(name))
        repository = self.settings.model_repository
        entry.loading = True
        fingerprint = manifest_fingerprint(repository, name)
        try:
            for _ in range(3):
                new = await self._load(name)
                after = manifest_fingerprint(repository, name)
                if after == fingerprint:
                    break
                await new.batcher.stop()
                fingerprint = after
            else:
                raise RepositoryError(f"{repository / name}: changed during every load attempt")
        except Exception as err:
            entry.fingerprint, entry.reason = fingerprint, str(err)
            kept = entry.served.version if entry.served else None
            logger.error(
                "model refused",
                extra={"fields": {"model": name, "error": str(err), "serving_version": kept}},
            )
            return
        finally:
            entry.loading = False
        old, entry.served = entry.served, new
        entry.fingerprint, entry.reason = fingerprint, ""
        self._publish(new)
        logger.info("model ready", extra={"fields": {"model": name, "version": new.version}})
        if old is not None:
            await self._retire(old)
            # Again: retiring a same-named version removed its info series, and the old
            # version's last batches may have set the drift gauges.
            self._publish(new)

    def _publish(self, served: ServedModel) -> None:
        """The serving version's model series: info, reference sizes, counters, drift."""
        detector = served.detector
        self.metrics.register_model(
            served.name, served.version, detector.device, detector.backend,
            detector.reference_sizes,
        )  # fmt: skip
        if served.drift is not None:
            self.metrics.register_drift(served.name, served.drift.state)

    async def _unload_entry(self, name: str, reason: str) -> None:
        entry = self.entries[name]
        old, entry.served = entry.served, None
        entry.reason, entry.fingerprint = reason, None
        if old is not None:
            await self._retire(old)
            self.metrics.forget_model(name, old.detector.reference_sizes)
        logger.info("model unloaded", extra={"fields": {"model": name, "reason": reason}})

    async def _retire(self, old: ServedModel) -> None:
        """Stop ``old``'s batcher once the requests it accepted are done (at most the request
        timeout: later they would have failed anyway)."""
        deadline = time.monotonic() + self.settings.request_timeout_s + 1.0
        while not old.batcher.idle and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await old.batcher.stop()
        detector = old.detector
        self.metrics.forget_version(old.name, old.version, detector.device, detector.backend)

    async def _load(self, name: str) -> ServedModel:
        s = self.settings
        detector = await asyncio.to_thread(_load_detector, s, name)
        info, calibration = _describe(detector)
        drift = (
            ModelDriftMonitor(detector.manifest.calibration_size, detector.layers, s.drift)
            if s.drift_enabled
            else None
        )  # a new one per load: a reload starts from zero
        batcher: DynamicBatcher[ScoreResult] = DynamicBatcher(
            name,
            score_call(detector),
            max_batch_size=s.max_batch_size,
            max_wait_s=s.max_batch_wait_s,
            max_queue=s.max_queue,
            timeout_s=s.request_timeout_s,
            metrics=self.metrics,
            after=None if drift is None else partial(_observe_drift, drift, self.metrics, name),
        )
        batcher.start()
        try:
            await batcher.warm_up(
                partial(_warm_up, detector, s.max_batch_size, s.warmup_iterations)
            )
        except BaseException:
            await batcher.stop()
            raise
        return ServedModel(
            detector=detector,
            batcher=batcher,
            spec=InputSpec(detector.input_shape, _layer_dims(detector)),
            info=info,
            manifest=detector.manifest.model_dump(mode="json"),
            calibration=calibration,
            drift=drift,
        )

    async def close(self) -> None:
        """Stop the background reloads and every batcher (waiting requests get 503)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for served in self.models.values():
            await served.batcher.stop()
