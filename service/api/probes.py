"""Operations probes: liveness, readiness and the Prometheus metrics (no API key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client.exposition import choose_encoder

from service.api.routing import JSON_MEDIA_TYPE, NOT_READY, State, error_examples

probes = APIRouter(tags=["operations"])

READY_EXAMPLE: dict[str, Any] = {"status": "ready", "models": ["digits-mlp"], "unavailable": []}


def example(value: Any) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entry of a 200 whose example is ``value``."""
    return {200: {"content": {JSON_MEDIA_TYPE: {"example": value}}}}


@probes.get("/healthz", name="healthz", summary="Liveness", responses=example({"status": "ok"}))
async def healthz() -> dict[str, str]:
    """200 while the process answers (a model that cannot be loaded is reported by /readyz)."""
    return {"status": "ok"}


@probes.get(
    "/readyz",
    name="readyz",
    summary="Readiness",
    responses={**example(READY_EXAMPLE), **error_examples("detail", [(503, NOT_READY)])},
)
async def readyz(state: State) -> dict[str, Any]:
    """200 once the repository is loaded and at least one model serves; the models that could
    not be loaded are listed under ``unavailable`` with the reason. 503 while loading, when no
    model serves, while a served model cannot score now (a shard of its reference is missing),
    and once shutting down; with worker processes, also until every worker is ready (each
    worker answers for the whole server)."""
    state.raise_if_not_ready()
    state.raise_if_peers_not_ready()
    await state.raise_if_unavailable()
    unavailable = [status.model_dump() for status in state.unavailable()]
    return {"status": "ready", "models": list(state.models), "unavailable": unavailable}


@probes.get("/metrics", name="metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request, state: State) -> Response:
    """Prometheus text format (OpenMetrics when the scraper asks for it)."""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(state.metrics.exposition), media_type=content_type)
