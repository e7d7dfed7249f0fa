"""The app factory and the server entry point.

One process serves one repository on one device: every model is loaded once (its reference set in
device memory once), each gets one scoring thread fed by its ``DynamicBatcher``, and the event
loop only parses, validates and answers. ``workers`` > 1 runs that many such processes on one
port (``service.workers``); scale out with more replicas, one per machine or device.

Signals: SIGTERM turns ``/readyz`` to 503 at once and keeps serving for ``shutdown_drain_s`` (load
balancers stop sending), then closes the listening socket, lets accepted requests finish for at
most ``shutdown_grace_s`` and exits 0. SIGINT (Ctrl-C) skips the drain; a second signal stops
waiting. SIGHUP re-reads the API keys file and reloads the models that changed.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager, contextmanager
from types import FrameType

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import disable_created_metrics
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.admin import admin, repository
from service.api.docs import install_docs, operation_id
from service.api.drift import drift
from service.api.probes import probes
from service.api.routing import require_api_key
from service.api.v1 import v1
from service.api.v2 import v2, v2_probes
from service.api.v2_tensors import InferRequest
from service.dataplane import DataPlane
from service.http.direct import DirectRoutes
from service.http.errors import install_error_handlers
from service.http.gzip import GZipMiddleware
from service.http.limits import RequestDecompressionMiddleware
from service.http.logging import RequestLogMiddleware, configure_logging, uvicorn_log_config
from service.http.metrics import ServiceMetrics
from service.http.security import KEY_SCHEMES
from service.runtime.models import ServiceState
from service.settings import Settings
from service.workers import Peers
from snnl import __version__

DESCRIPTION = """\
Soft-neighbor out-of-distribution detection and embedding evaluation (SNNL).

Score a batch with `POST /v1/models/{model}/score` (JSON or `application/x-npy`): each sample gets
its prediction, a per-layer soft-neighbor score against the model's reference set and a calibrated
outlier flag. Requests from many clients are merged into batches per model. The same models answer
the Open Inference Protocol v2 (KServe / Triton clients) under `/v2`.
"""


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start loading in the background (``/readyz`` says when done); stop batchers on shutdown."""
    state: ServiceState = app.state.service
    _configure_process(state.settings)
    loading = asyncio.create_task(state.load_all(), name="snnl-load-models")
    state.watch()
    try:
        yield
    finally:
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        await state.close()


def _configure_process(settings: Settings) -> None:
    """Process-wide settings of a serving process.

    Scoring uses ``scoring_threads`` intra-op threads (torch's pool is process-wide, ONNX
    Runtime's is set per session), so the event loop keeps a core (a scorer on all of 2 cores
    starved the web process: limiting it to 1 thread doubled batched throughput); and /metrics
    carries exactly the documented series (no ``_created`` companions).
    """
    torch.set_num_threads(settings.scoring_threads)
    disable_created_metrics()


class ServiceApp(FastAPI):
    """The FastAPI app behind the service's own ASGI layers.

    An HTTP request passes ``outer`` first (``service_layers``: request log and metrics, CORS,
    gzip, inflating bodies, the direct score routes); what those do not answer goes on to FastAPI
    (its own middleware, routing and dependencies). FastAPI's per-request layers (error and
    telemetry middleware, body limit, exit stacks, nested router matching) are thus spent on
    every route but the score operations (docs/performance.md). Lifespan events go straight to
    FastAPI.
    """

    outer: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.outer is None or scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        await self.outer(scope, receive, send)

    async def fastapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The request handled by FastAPI (the innermost of ``outer``)."""
        await super().__call__(scope, receive, send)


def service_layers(
    app: ServiceApp, settings: Settings, state: ServiceState, metrics: ServiceMetrics
) -> ASGIApp:
    """The ASGI layers in front of FastAPI, outermost first: request log, metrics and in-flight
    gauge; CORS (when configured); gzip responses; inflate bodies; the direct routes."""
    inner: ASGIApp = DirectRoutes(
        app.fastapi, routes=[*v1.direct_routes, *v2.direct_routes], guard=require_api_key
    )
    inner = RequestDecompressionMiddleware(inner, limit=settings.max_request_bytes)
    inner = GZipMiddleware(inner, minimum_size=settings.gzip_min_bytes)
    if settings.cors_origins:
        inner = CORSMiddleware(
            inner,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Content-Encoding"],
            expose_headers=["X-Request-ID", "Inference-Header-Content-Length", "Retry-After"],
        )
    return RequestLogMiddleware(
        inner,
        observe=metrics.observe_request,
        known_model=state.entries.__contains__,
        in_flight=metrics.requests_in_flight,
    )


def create_app(settings: Settings, peers: Peers | None = None) -> ServiceApp:
    """A FastAPI app serving ``settings.model_repository``; models load when it starts.
    ``peers``: the other workers of a multi-process server (``service.workers``)."""
    configure_logging(settings.log_level)
    metrics = ServiceMetrics()
    state = ServiceState(settings, metrics, peers)
    app = ServiceApp(
        title="snnl",
        version=__version__,
        description=DESCRIPTION,
        lifespan=_lifespan,
        servers=[{"url": "/", "description": "This server"}],
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=operation_id,
    )
    app.state.service = state
    app.state.dataplane = DataPlane(state)
    install_error_handlers(app)
    for router in (probes, v1, drift, v2_probes, v2, repository, admin):
        app.include_router(router)
    install_docs(app, body_models=(InferRequest,), security_schemes=KEY_SCHEMES)
    app.outer = service_layers(app, settings, state, metrics)
    return app


def run(settings: Settings) -> int:
    """Serve until a signal, then return once the accepted requests are done: 0 (the exit
    status). One process, or ``settings.workers`` worker processes (``service.workers``)."""
    if settings.workers > 1:
        from service.workers import supervise

        return supervise(settings)
    serve(create_app(settings), settings)
    return 0


def serve(app: ServiceApp, settings: Settings, sockets: list[socket.socket] | None = None) -> None:
    """Serve ``app`` with uvicorn in this process, on ``sockets`` when given (a worker's)."""
    import uvicorn

    state: ServiceState = app.state.service
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_config=uvicorn_log_config(settings.log_level),
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
    )

    class Server(uvicorn.Server):
        drain_until: float | None = None

        @contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            loop = asyncio.get_running_loop()
            previous = signal.signal(
                signal.SIGHUP, lambda *_: loop.call_soon_threadsafe(state.hangup)
            )
            try:
                with super().capture_signals():
                    yield
            finally:
                signal.signal(signal.SIGHUP, previous)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # Not re-raised after the shutdown (uvicorn's default): the process exits 0.
            state.begin_shutdown()
            if self.should_exit:
                self.force_exit = True
            elif sig == signal.SIGTERM and self.drain_until is None and settings.shutdown_drain_s:
                self.drain_until = time.monotonic() + settings.shutdown_drain_s
            else:
                self.should_exit = True

        async def on_tick(self, counter: int) -> bool:
            if self.drain_until is not None and time.monotonic() >= self.drain_until:
                self.should_exit = True
            return await super().on_tick(counter)

    server = Server(config)
    server.run(sockets=sockets)
    if not server.started:
        raise SystemExit(3)
