"""The HTTP endpoints, thin: check, parse, submit to the model's batcher, shape the answer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client.exposition import choose_encoder

from service.disconnect import unless_disconnected
from service.errors import MalformedRequest, UnsupportedMediaType
from service.payload import (
    JSON_MEDIA_TYPE,
    NPY_MEDIA_TYPE,
    class_labels,
    media_type,
    model_batch,
    npy_batch,
    parse_json_object,
    parse_npy,
    validated,
)
from service.schemas import (
    EvaluateRequest,
    EvaluateResponse,
    ModelDetail,
    ModelList,
    ScoreOptions,
    ScoreRequest,
    ScoreResponse,
)
from service.security import KEY_SCHEMES, check_api_key, read_body
from service.state import ServiceState
from snnl.scoring.batch import num_rows
from snnl.scoring.validation import check_neighbors

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {JSON_MEDIA_TYPE: {"example": {"detail": text}}}}
    for status, text in [
        (400, "body: not valid JSON (Expecting value: line 1 column 1 (char 0))"),
        (401, "API key not accepted (header 'Authorization' or 'X-API-Key')"),
        (404, "model 'x': not in the repository (models: digits-mlp)"),
        (413, "body: more than the limit of 16777216 bytes"),
        (
            415,
            "header Content-Type: expected application/json or application/x-npy, got 'text/plain'",
        ),
        (422, "inputs: expected shape (B, 64), got (1, 63)"),
        (503, "model digits-mlp: overloaded, 4096 of 4096 queued samples (SNNL_MAX_QUEUE); retry"),
    ]
}


async def get_state(request: Request) -> ServiceState:
    """The app's ``ServiceState`` (``async``: FastAPI runs ``def`` dependencies in threads)."""
    return request.app.state.service


State = Annotated[ServiceState, Depends(get_state)]


async def require_api_key(request: Request) -> None:
    """401 unless the request carries a configured API key (no keys configured: open); the
    check is ``check_api_key``'s constant-time comparison."""
    check_api_key(request, (await get_state(request)).api_keys)


KEY_REQUIRED: list[dict[str, list[str]]] = [{scheme.scheme_name: []} for scheme in KEY_SCHEMES]
"""An operation's OpenAPI ``security``: any one of the key schemes."""


class GuardedRouter(APIRouter):
    """An ``APIRouter`` whose every operation requires an API key (``require_api_key``, before
    the router's own ``dependencies``) and declares the key schemes as its OpenAPI security.

    The schemes are declared through each operation's ``openapi_extra``, not as FastAPI
    ``Security`` dependencies: those are solved on every request, and took a sixth of the event
    loop's time per scoring request under load (docs/performance.md).
    """

    def __init__(self, *, dependencies: Sequence[Any] = (), **kwargs: Any) -> None:
        super().__init__(dependencies=[Depends(require_api_key), *dependencies], **kwargs)

    def add_api_route(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        extra = {"security": KEY_REQUIRED, **(kwargs.pop("openapi_extra", None) or {})}
        super().add_api_route(path, endpoint, openapi_extra=extra, **kwargs)


def _body_schema(schema: type[Any], *, npy: bool) -> dict[str, Any]:
    """OpenAPI request body: the JSON schema (and, with ``npy``, one ``.npy`` array and the
    ``ScoreOptions`` as query parameters)."""
    content: dict[str, Any] = {JSON_MEDIA_TYPE: {"schema": schema.model_json_schema()}}
    extra: dict[str, Any] = {"requestBody": {"required": True, "content": content}}
    if npy:
        content[NPY_MEDIA_TYPE] = {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "One .npy array: the samples (B, *input_shape), or the embeddings "
                "(B, d) of a one-layer embedding-only model; alpha and neighbors as query.",
            }
        }
        options = ScoreOptions.model_json_schema()["properties"]
        extra["parameters"] = [
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": f"x-npy bodies only: {field.pop('description')}",
                "schema": field,
            }
            for name, field in options.items()
        ]
    return extra


def json_response(content: Any) -> Response:
    """``content`` (plain Python values, finite floats) as JSON, encoded by orjson: the same
    values as ``JSONResponse``'s ``json.dumps``, 20-40 times faster on score results."""
    return Response(orjson.dumps(content), media_type=JSON_MEDIA_TYPE)


DEFAULT_OPTIONS = ScoreOptions()

probes = APIRouter(tags=["operations"])
v1 = GuardedRouter(prefix="/v1", tags=["models"])


@probes.get("/healthz", name="healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """200 while the process answers (a model that cannot be loaded is reported by /readyz)."""
    return {"status": "ok"}


@probes.get("/readyz", name="readyz", summary="Readiness", responses={503: ERROR_RESPONSES[503]})
async def readyz(state: State) -> dict[str, Any]:
    """200 once the repository is loaded and at least one model serves; the models that could
    not be loaded are listed under ``unavailable`` with the reason. 503 while loading, when no
    model serves, while a served model cannot score now (a shard of its reference is missing),
    and once shutting down."""
    state.raise_if_not_ready()
    await state.raise_if_unavailable()
    unavailable = [status.model_dump() for status in state.unavailable()]
    return {"status": "ready", "models": list(state.models), "unavailable": unavailable}


@probes.get("/metrics", name="metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request, state: State) -> Response:
    """Prometheus text format (OpenMetrics when the scraper asks for it)."""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(state.metrics.registry), media_type=content_type)


@v1.get("/models", name="models", response_model=ModelList)
async def list_models(state: State) -> ModelList:
    """Every model: name, version, input shape, layers, classes, reference size."""
    state.raise_if_not_ready()
    return ModelList(
        models=[served.info for served in state.models.values()], unavailable=state.unavailable()
    )


@v1.get("/models/{model}", name="model", response_model=ModelDetail, responses=ERROR_RESPONSES)
async def get_model(model: str, state: State) -> ModelDetail:
    """One model's manifest and calibration summary."""
    served = state.served(model)
    return ModelDetail(manifest=served.manifest, calibration=served.calibration)


@v1.post(
    "/models/{model}/score",
    name="score",
    response_model=ScoreResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=_body_schema(ScoreRequest, npy=True),
)
async def score(model: str, request: Request) -> Response:
    """Score a batch: prediction, per-layer soft-neighbor scores, p-value and outlier flag.

    JSON: ``{"inputs": [...], "alpha": 0.05, "neighbors": 0}`` (``embeddings`` for embedding-only
    models). ``application/x-npy``: the samples as one array, ``alpha``/``neighbors`` as query.
    The query is read here, not declared as FastAPI parameters: solving those per request took
    more event-loop time than the rest of this handler (docs/performance.md).
    """
    state = await get_state(request)
    served = state.served(model)
    query = request.query_params
    options: ScoreOptions = validated(dict(query), ScoreOptions) if query else DEFAULT_OPTIONS
    kind = media_type(request.headers.get("content-type"))
    body = await read_body(request, state.settings.max_request_bytes)
    served = state.served(model)  # the version serving now: no await from here to the queue
    if kind == NPY_MEDIA_TYPE:
        samples = npy_batch(parse_npy(body), served.spec)
    else:
        if "alpha" in query or "neighbors" in query:
            raise MalformedRequest("query alpha/neighbors: with a JSON body give them in the body")
        parsed: ScoreRequest = parse_json_object(body, ScoreRequest)
        samples = model_batch(parsed.inputs, parsed.embeddings, served.spec)
        options = parsed
    neighbors = check_neighbors(options.neighbors, served.info.reference_size)
    request.state.batch_size = num_rows(samples)
    submitted = served.batcher.submit(samples, alpha=options.alpha, neighbors=neighbors)
    result = await unless_disconnected(request, submitted)
    return json_response(
        {"model": model, "version": served.version, "results": result.to_records()}
    )


@v1.post(
    "/models/{model}/evaluate",
    name="evaluate",
    response_model=EvaluateResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=_body_schema(EvaluateRequest, npy=False),
)
async def evaluate(model: str, request: Request, state: State) -> Response:
    """Evaluate a labeled batch: per layer SNNL at T_l, T*, entanglement, k-NN accuracy."""
    served = state.served(model)
    if media_type(request.headers.get("content-type")) != JSON_MEDIA_TYPE:
        raise UnsupportedMediaType("header Content-Type: evaluate takes application/json")
    body = await read_body(request, state.settings.max_request_bytes)
    served = state.served(model)  # the version serving now: no await from here to the queue
    parsed: EvaluateRequest = parse_json_object(body, EvaluateRequest)
    samples = model_batch(parsed.inputs, parsed.embeddings, served.spec)
    n = num_rows(samples)
    request.state.batch_size = n
    labels = class_labels(parsed.labels, served.class_names, n)
    evaluation = await unless_disconnected(request, served.evaluate(samples, labels))
    return JSONResponse({"model": model, "version": served.version, **evaluation})
