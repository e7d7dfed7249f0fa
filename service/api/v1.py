"""The /v1 API: models, score, evaluate. Each route decodes its body into the data plane's terms
and encodes the answer; the data plane (``service.dataplane``) does the rest."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from service.api.decode import (
    JSON_MEDIA_TYPE,
    NPY_MEDIA_TYPE,
    media_type,
    parse_json_object,
    parse_npy,
    validated,
)
from service.api.routing import (
    ERROR_TEXTS,
    GuardedRouter,
    State,
    error_examples,
    get_dataplane,
    json_response,
)
from service.api.schemas import (
    EvaluateRequest,
    EvaluateResponse,
    ModelDetail,
    ModelList,
    ScoreOptions,
    ScoreRequest,
    ScoreResponse,
)
from service.dataplane import Given
from service.http.errors import MalformedRequest, UnsupportedMediaType
from service.http.limits import read_body

ERROR_RESPONSES = error_examples(
    "detail",
    [
        (400, "body: not valid JSON (Expecting value: line 1 column 1 (char 0))"),
        *ERROR_TEXTS[:3],
        (
            415,
            "header Content-Type: expected application/json or application/x-npy, got 'text/plain'",
        ),
        *ERROR_TEXTS[3:],
    ],
)


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


DEFAULT_OPTIONS = ScoreOptions()

v1 = GuardedRouter(prefix="/v1", tags=["models"])


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


@v1.direct(
    "/models/{model}/score",
    name="score",
    response_model=ScoreResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=_body_schema(ScoreRequest, npy=True),
)
async def score(model: str, request: Request) -> Response:
    """Score a batch: prediction, per-layer soft-neighbor scores, p-value and outlier flag.

    JSON: ``{"inputs": [...], "alpha": 0.05, "neighbors": 0}`` (``embeddings`` for embedding-only
    models; also ``guarantee``, ``delta``, ``fdr``). ``application/x-npy``: the samples as one
    array, the options as query parameters.
    """
    dataplane = get_dataplane(request)
    dataplane.model(model)  # 404 / 503 before reading the body
    query = request.query_params if request.scope["query_string"] else None
    options: ScoreOptions = validated(dict(query), ScoreOptions) if query else DEFAULT_OPTIONS
    kind = media_type(request.headers.get("content-type"))
    body = await read_body(request, dataplane.state.settings.max_request_bytes)
    if kind == NPY_MEDIA_TYPE:
        given = Given.array(parse_npy(body))
    else:
        if query and set(query) & set(ScoreOptions.model_fields):
            raise MalformedRequest(
                "query alpha/guarantee/delta/fdr/neighbors: with a JSON body give them in the body"
            )
        parsed: ScoreRequest = parse_json_object(body, ScoreRequest)
        given = Given(inputs=parsed.inputs, embeddings=parsed.embeddings)
        options = parsed
    scored = await dataplane.score(
        request,
        model,
        given,
        alpha=options.alpha,
        guarantee=options.guarantee,
        delta=options.delta,
        fdr=options.fdr,
        neighbors=options.neighbors,
    )
    return json_response(
        {"model": model, "version": scored.model.version, "results": scored.result.to_records()}
    )


@v1.post(
    "/models/{model}/evaluate",
    name="evaluate",
    response_model=EvaluateResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=_body_schema(EvaluateRequest, npy=False),
)
async def evaluate(model: str, request: Request) -> Response:
    """Evaluate a labeled batch: per layer SNNL at T_l, T*, entanglement, k-NN accuracy."""
    dataplane = get_dataplane(request)
    dataplane.model(model)
    if media_type(request.headers.get("content-type")) != JSON_MEDIA_TYPE:
        raise UnsupportedMediaType("header Content-Type: evaluate takes application/json")
    body = await read_body(request, dataplane.state.settings.max_request_bytes)
    parsed: EvaluateRequest = parse_json_object(body, EvaluateRequest)
    given = Given(inputs=parsed.inputs, embeddings=parsed.embeddings)
    served, evaluation = await dataplane.evaluate(request, model, given, parsed.labels)
    return JSONResponse({"model": model, "version": served.version, **evaluation})
