"""The service's Prometheus metrics (docs/service.md), on one registry per app (tests isolated).

With worker processes (``snnl serve --workers N``, ``service.workers``) every metric also lives
in prometheus-client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, set by the parent before
a worker imports prometheus-client), and ``/metrics`` shows their aggregate, whichever worker
answers: counters and histograms summed, the queue-depth and in-flight gauges summed over live
workers, the info gauges their maximum over live workers. The per-process ``process_*`` and
``python_*`` collectors are left out there (each would describe only the worker that answered).

Base units (seconds, samples), ``_total`` on counters, and label values drawn only from the
model repository (model, layer, version), the fixed route names and HTTP status codes: no
per-sample or per-request values, so cardinality stays bounded. The same registry carries the
standard ``process_*`` (memory, CPU, file descriptors) and ``python_*`` (garbage collector,
interpreter version) collectors, the in-flight request gauge and ``snnl_build_info``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.multiprocess import MultiProcessCollector

from snnl import __version__
from snnl.monitoring import COMBINED, ModelDriftState
from snnl.scoring.results import STAGES

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5, 10, 30)
WAIT_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
BULK_FROM = 8
"""From this many values on, ``observe_many`` adds bucket counts in bulk (measured: ~1 us per
``observe``, ~7 us fixed cost for the bulk path)."""
UNIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, *(i / 10 for i in range(1, 10)), 0.95, 0.99, 1)


class ScoredBatch(Protocol):
    """What the metrics read from a scoring result (``snnl.ScoreResult`` fits; read-only)."""

    @property
    def layers(self) -> tuple[str, ...]: ...

    @property
    def soft_neighbor_score(self) -> np.ndarray:  # (B, L)
        ...

    @property
    def p_value(self) -> np.ndarray:  # (B,)
        ...

    @property
    def outlier(self) -> np.ndarray:  # (B,) bool
        ...

    @property
    def timings(self) -> Mapping[str, float]: ...

    def __len__(self) -> int: ...


class ServiceMetrics:
    """Every ``snnl_*`` metric, created once on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.multiprocess = bool(shared)
        self.exposition = self.registry
        """What ``/metrics`` shows: this app's registry, or every worker's aggregate."""
        if shared:
            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition, path=shared)
        model = ("model",)
        self.requests = Counter(
            "snnl_requests", "HTTP requests by route and status code.",
            (*model, "endpoint", "code"), registry=reg,
        )  # fmt: skip
        self.request_duration = Histogram(
            "snnl_request_duration_seconds", "Time from request received to response sent.",
            (*model, "endpoint"), buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "snnl_queue_wait_seconds", "Time a request chunk waited before its batch ran.",
            model, buckets=WAIT_BUCKETS, registry=reg,
        )  # fmt: skip
        self.batch_size = Histogram(
            "snnl_batch_size", "Samples per executed scoring batch.",
            model, buckets=BATCH_BUCKETS, registry=reg,
        )  # fmt: skip
        self.stage_duration = Histogram(
            "snnl_stage_duration_seconds", "Time per scoring stage of one batch.",
            (*model, "stage"), buckets=WAIT_BUCKETS, registry=reg,
        )  # fmt: skip
        self.samples_scored = Counter("snnl_samples_scored", "Samples scored.", model, registry=reg)
        self.outliers = Counter(
            "snnl_outliers", "Samples flagged as outliers.", model, registry=reg
        )
        self.soft_neighbor_score = Histogram(
            "snnl_soft_neighbor_score", "Soft-neighbor score of each scored sample, per layer.",
            (*model, "layer"), buckets=UNIT_BUCKETS, registry=reg,
        )  # fmt: skip
        self.p_value = Histogram(
            "snnl_p_value", "Conformal p-value of each scored sample.",
            model, buckets=UNIT_BUCKETS, registry=reg,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "snnl_queue_depth",
            "Samples waiting in the model's queue.",
            model,
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.reference_points = Gauge(
            "snnl_reference_points", "Reference-set rows per served layer.",
            (*model, "layer"), registry=reg, multiprocess_mode="livemax",
        )  # fmt: skip
        self.model_info = Gauge(
            "snnl_model_info", "Loaded models (value 1).",
            (*model, "version", "device", "backend"), registry=reg, multiprocess_mode="livemax",
        )  # fmt: skip
        self.drift_statistic = Gauge(
            "snnl_drift_statistic", "Drift monitor statistic, log10 of the evidence (alarm at "
            "log10(SNNL_DRIFT_ERT)); layer 'combined': the model's p-value.",
            (*model, "layer"), registry=reg, multiprocess_mode="all",
        )  # fmt: skip
        self.drift_alarms = Counter(
            "snnl_drift_alarms", "Drift alarms of the model's monitor.", model, registry=reg
        )
        self.requests_in_flight = Gauge(
            "snnl_requests_in_flight",
            "HTTP requests being handled now.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.build_info = Gauge(
            "snnl_build_info",
            "The running snnl (value 1).",
            ("version",),
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.build_info.labels(__version__).set(1)
        if not shared:
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                reg.register(collector)

    def register_model(
        self,
        model: str,
        version: str,
        device: str,
        backend: str,
        reference_sizes: Mapping[str, int],
    ) -> None:
        """Publish a loaded model: info, reference sizes, and zeroed series for its counters."""
        self.model_info.labels(model, version, device, backend).set(1)
        for layer, size in reference_sizes.items():
            self.reference_points.labels(model, layer).set(size)
        self.samples_scored.labels(model)
        self.outliers.labels(model)
        self.queue_depth.labels(model).set(0)

    def register_drift(self, model: str, state: ModelDriftState) -> None:
        """Publish a (re)loaded model's drift monitor: its statistics, and the alarm counter at 0
        before its first alarm (so that ``increase()`` sees that alarm)."""
        self.drift_alarms.labels(model)
        self.observe_drift(model, state)

    def observe_drift(self, model: str, state: ModelDriftState) -> None:
        """The drift monitor's state after an update: statistics, and its new alarms counted."""
        for layer, statistic in state.statistics().items():
            self.drift_statistic.labels(model, layer).set(statistic)
        if state.new_alarms:
            self.drift_alarms.labels(model).inc(len(state.new_alarms))

    def forget_version(self, model: str, version: str, device: str, backend: str) -> None:
        """A replaced or unloaded version no longer shows in ``snnl_model_info`` (with workers,
        whose shared files keep every series, it shows 0)."""
        self._forget(self.model_info, model, version, device, backend)

    def forget_model(self, model: str, reference_sizes: Mapping[str, int]) -> None:
        """An unloaded model's gauges go (its counters stay: they only ever grow)."""
        for layer in reference_sizes:
            self._forget(self.reference_points, model, layer)
        for layer in (COMBINED, *reference_sizes):
            self._forget(self.drift_statistic, model, layer)

    def _forget(self, gauge: Gauge, *labels: str) -> None:
        """Remove a gauge's series; in multiprocess mode (no removal there) set it to 0."""
        if self.multiprocess:
            gauge.labels(*labels).set(0)
            return
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)

    def observe_request(self, model: str, endpoint: str, code: int, seconds: float) -> None:
        """One finished HTTP request."""
        self.requests.labels(model, endpoint, str(code)).inc()
        self.request_duration.labels(model, endpoint).observe(seconds)

    def observe_batch(self, model: str, result: ScoredBatch) -> None:
        """One executed scoring batch: its size, stage times and every sample's scores."""
        n = len(result)
        self.batch_size.labels(model).observe(n)
        for stage in STAGES:
            if stage in result.timings:
                self.stage_duration.labels(model, stage).observe(result.timings[stage])
        self.samples_scored.labels(model).inc(n)
        self.outliers.labels(model).inc(int(np.count_nonzero(result.outlier)))
        observe_many(self.p_value.labels(model), result.p_value)
        scores = np.asarray(result.soft_neighbor_score, dtype=float)
        for column, layer in enumerate(result.layers):
            observe_many(self.soft_neighbor_score.labels(model, layer), scores[:, column])


def observe_many(histogram: Any, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every v of ``values``, in a few bulk additions.

    ``histogram`` is one labeled child of a ``prometheus_client.Histogram``. A value lands in the
    first bucket whose upper bound is >= it (``observe``'s rule, so ``np.searchsorted(bounds,
    values, side="left")``); each bucket then gets its count in one ``inc`` and the sum gets
    ``sum(values)`` in one ``inc``, instead of one locked update per value. NaN (above every
    bound, as in ``observe``) counts in no bucket and makes the sum NaN. prometheus_client has
    no public bulk observe, so this reads the child's ``_upper_bounds``, ``_buckets`` and
    ``_sum`` (tests/service/test_metrics.py checks it against ``observe`` value by value).
    Fewer than ``BULK_FROM`` values are observed one by one: the numpy calls cost more there.
    """
    values = np.asarray(values, dtype=float).ravel()
    if values.size < BULK_FROM:
        for value in values.tolist():
            histogram.observe(value)
        return
    bounds = histogram._upper_bounds
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket in np.flatnonzero(counts[: len(bounds)]).tolist():
        histogram._buckets[bucket].inc(int(counts[bucket]))
    histogram._sum.inc(float(values.sum()))
