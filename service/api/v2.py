"""The Open Inference Protocol v2 (KServe / Triton REST) beside /v1: same models, batcher, metrics.

A model with an ONNX network takes one input tensor ``inputs`` (B, *input_shape) (or (B, prod));
an embedding-only model one tensor per served layer, named as the layer, (B, d_l). Any numeric
datatype is accepted and checked exactly as a /v1 body (float32, finite, the model's shape).
Request ``parameters`` may carry ``alpha``, ``guarantee``, ``delta``, ``fdr`` and ``neighbors``
(as in /v1). The outputs are the columns of a /v1 score response as named tensors (``OUTPUTS``;
``outlier_fdr`` only when ``fdr`` was given, ``neighbor_ids`` only with ``neighbors``).
Errors are ``{"error": str}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.api.routing import (
    ERROR_TEXTS,
    NOT_READY,
    GuardedRouter,
    State,
    error_examples,
    get_dataplane,
)
from service.api.v2_tensors import (
    HEADER_LENGTH,
    InferRequest,
    InferResponse,
    decode_request,
    encode_response,
)
from service.dataplane import SAMPLES_TENSOR, Given
from service.http.errors import MalformedRequest, UnknownModel
from service.http.limits import read_body
from service.runtime.models import ServedModel
from snnl import __version__
from snnl.scoring.results import ScoreResult

BINARY_MEDIA_TYPE = "application/octet-stream"

OUTPUTS: tuple[tuple[str, str, str], ...] = (
    ("prediction", "INT64", "B"),
    ("confidence", "FP64", "B"),
    ("nonconformity", "FP64", "B"),
    ("p_value", "FP64", "B"),
    ("outlier", "BOOL", "B"),
    ("outlier_fdr", "BOOL", "B"),
    ("soft_neighbor_score", "FP64", "BL"),
    ("layer_p_value", "FP64", "BL"),
    ("same_class_neighbors", "INT64", "BL"),
    ("neighbor_ids", "INT64", "BLk"),
)
"""(name, datatype, dims) of each output; B samples, L served layers, k = ``neighbors``."""
_DTYPES = {"INT64": np.int64, "FP64": np.float64, "BOOL": np.bool_}

V2_ERRORS = error_examples(
    "error",
    [(400, "inputs.inputs.datatype: expected one of BOOL, ..., FP64, got 'BYTES'"), *ERROR_TEXTS],
)

v2_probes = APIRouter(prefix="/v2", tags=["open inference protocol v2"])
v2 = GuardedRouter(prefix="/v2", tags=["open inference protocol v2"])


@v2_probes.get("/health/live", name="v2_live", summary="Server live")
async def server_live() -> dict[str, bool]:
    """200 while the process answers (as ``/healthz``)."""
    return {"live": True}


@v2_probes.get(
    "/health/ready",
    name="v2_ready",
    summary="Server ready",
    responses=error_examples("error", [(503, NOT_READY)]),
)
async def server_ready(state: State) -> dict[str, bool]:
    """200 once every model is loaded and warmed up and can score now (as ``/readyz``), else 503."""
    state.raise_if_not_ready()
    await state.raise_if_unavailable()
    return {"ready": True}


@v2.get("", name="v2_metadata", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    """Name, version and protocol extensions of the server."""
    return {"name": "snnl", "version": __version__, "extensions": ["binary_tensor_data"]}


@v2.get("/models/{model}", name="v2_model", summary="Model metadata", responses=V2_ERRORS)
async def model_metadata(model: str, state: State) -> dict[str, Any]:
    """The model's input and output tensors (-1: any size)."""
    served = state.served(model)
    layers = len(served.info.layers)
    sizes = {"B": -1, "L": layers, "k": -1}
    if served.spec.input_shape is not None:
        inputs = [_tensor(SAMPLES_TENSOR, "FP32", [-1, *served.spec.input_shape])]
    else:
        inputs = [_tensor(name, "FP32", [-1, dim]) for name, dim in served.spec.layer_dims.items()]
    return {
        "name": model,
        "versions": [served.version],
        "platform": f"snnl_{served.info.backend}",
        "inputs": inputs,
        "outputs": [_tensor(name, kind, [sizes[d] for d in dims]) for name, kind, dims in OUTPUTS],
    }


def _tensor(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


@v2.get("/models/{model}/ready", name="v2_model_ready", summary="Model ready", responses=V2_ERRORS)
async def model_ready(model: str, state: State) -> dict[str, Any]:
    """200 when the model is loaded and warmed up; 404 unknown, 503 still loading."""
    state.served(model)
    return {"name": model, "ready": True}


@v2.direct(
    "/models/{model}/infer",
    name="v2_infer",
    summary="Infer",
    response_model=InferResponse,
    responses=V2_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
                BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def infer(model: str, request: Request) -> Response:
    """Score a batch given as v2 tensors; JSON or the binary tensor data extension.

    Binary: the header ``Inference-Header-Content-Length`` gives the JSON part's length; inputs
    with ``parameters.binary_data_size`` follow it. Outputs come back as binary data when asked
    (``outputs[].parameters.binary_data`` or ``parameters.binary_data_output``).
    """
    dataplane = get_dataplane(request)
    dataplane.model(model)  # 404 / 503 before reading the body
    body = await read_body(request, dataplane.state.settings.max_request_bytes)
    decoded = decode_request(body, request.headers.get(HEADER_LENGTH))
    parsed = decoded.request
    options = parsed.parameters
    wanted = _requested(parsed, options.neighbors, options.fdr)
    scored = await dataplane.score(
        request,
        model,
        Given.named(decoded.tensors),
        alpha=options.alpha,
        guarantee=options.guarantee,
        delta=options.delta,
        fdr=options.fdr,
        neighbors=options.neighbors,
    )
    head = {"model_name": model, "model_version": scored.model.version}
    if parsed.id is not None:
        head["id"] = parsed.id
    payload, header_length = encode_response(head, _outputs(scored.result, wanted), _binary(parsed))
    if header_length is None:
        return Response(payload, media_type=JSONResponse.media_type)
    return Response(
        payload,
        media_type=BINARY_MEDIA_TYPE,
        headers={"Inference-Header-Content-Length": str(header_length)},
    )


@v2.get("/models/{model}/versions/{version}", name="v2_model_version", include_in_schema=False)
async def version_metadata(model: str, version: str, state: State) -> dict[str, Any]:
    """``GET /v2/models/{model}`` for the served version only."""
    _check_version(state.served(model), version)
    return await model_metadata(model, state)


@v2.get(
    "/models/{model}/versions/{version}/ready",
    name="v2_model_version_ready",
    include_in_schema=False,
)
async def version_ready(model: str, version: str, state: State) -> dict[str, Any]:
    """``GET /v2/models/{model}/ready`` for the served version only."""
    _check_version(state.served(model), version)
    return await model_ready(model, state)


@v2.direct(
    "/models/{model}/versions/{version}/infer", name="v2_infer_version", include_in_schema=False
)
async def version_infer(model: str, version: str, request: Request) -> Response:
    """``POST /v2/models/{model}/infer`` for the served version only."""
    _check_version(get_dataplane(request).model(model), version)
    return await infer(model, request)


def _check_version(served: ServedModel, version: str) -> None:
    """404 unless ``version`` is the one served (a repository holds one version a model)."""
    if version != served.version:
        raise UnknownModel(
            f"model {served.info.name!r}: version {version!r} is not served "
            f"(versions: {served.version})"
        )


def _requested(parsed: InferRequest, neighbors: int, fdr: float | None) -> list[str]:
    """Names of the outputs to return, in ``OUTPUTS`` order unless the request lists them."""
    absent = {"neighbor_ids"} if neighbors == 0 else set()
    if fdr is None:
        absent.add("outlier_fdr")
    available = [name for name, _, _ in OUTPUTS if name not in absent]
    if parsed.outputs is None:
        return available
    names = [output.name for output in parsed.outputs]
    for name in names:
        if name == "neighbor_ids" and neighbors == 0:
            raise MalformedRequest("outputs.neighbor_ids: set parameters.neighbors to k >= 1")
        if name == "outlier_fdr" and fdr is None:
            raise MalformedRequest("outputs.outlier_fdr: set parameters.fdr to a level q")
        if name not in available:
            raise MalformedRequest(f"outputs: unknown output {name!r}; outputs are {available}")
    return names


def _binary(parsed: InferRequest) -> set[str]:
    """Outputs to send as binary data."""
    if parsed.parameters.binary_data_output:
        return {name for name, _, _ in OUTPUTS}
    return {
        output.name
        for output in parsed.outputs or ()
        if output.parameters is not None and output.parameters.binary_data
    }


def _outputs(result: ScoreResult, names: list[str]) -> list[tuple[str, np.ndarray]]:
    datatypes = {name: datatype for name, datatype, _ in OUTPUTS}
    return [
        (name, np.asarray(getattr(result, name), dtype=_DTYPES[datatypes[name]])) for name in names
    ]
