"""The Open Inference Protocol v2 (KServe / Triton REST) beside /v1: same models, batcher, metrics.

A model with an ONNX network takes one input tensor ``inputs`` (B, *input_shape) (or (B, prod));
an embedding-only model one tensor per served layer, named as the layer, (B, d_l). Any numeric
datatype is accepted and checked exactly as a /v1 body (float32, finite, the model's shape).
Request ``parameters`` may carry ``alpha`` and ``neighbors`` (as in /v1). The outputs are the
columns of a /v1 score response as named tensors (``OUTPUTS``). Errors are ``{"error": str}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.disconnect import unless_disconnected
from service.errors import InvalidInput, MalformedRequest, UnknownModel
from service.payload import npy_batch
from service.routes import GuardedRouter, State
from service.security import read_body
from service.state import ServedModel
from service.v2_tensors import (
    HEADER_LENGTH,
    InferRequest,
    InferResponse,
    decode_request,
    encode_response,
)
from snnl import __version__
from snnl.scoring.batch import CheckedBatch, num_rows
from snnl.scoring.results import ScoreResult
from snnl.scoring.validation import check_embeddings, check_neighbors

SAMPLES_INPUT = "inputs"
BINARY_MEDIA_TYPE = "application/octet-stream"

OUTPUTS: tuple[tuple[str, str, str], ...] = (
    ("prediction", "INT64", "B"),
    ("confidence", "FP64", "B"),
    ("nonconformity", "FP64", "B"),
    ("p_value", "FP64", "B"),
    ("outlier", "BOOL", "B"),
    ("soft_neighbor_score", "FP64", "BL"),
    ("layer_p_value", "FP64", "BL"),
    ("same_class_neighbors", "INT64", "BL"),
    ("neighbor_ids", "INT64", "BLk"),
)
"""(name, datatype, dims) of each output; B samples, L served layers, k = ``neighbors``."""
_DTYPES = {"INT64": np.int64, "FP64": np.float64, "BOOL": np.bool_}

V2_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {"application/json": {"example": {"error": text}}}}
    for status, text in [
        (400, "inputs.inputs.datatype: expected one of BOOL, ..., FP64, got 'BYTES'"),
        (401, "API key not accepted (header 'Authorization' or 'X-API-Key')"),
        (404, "model 'x': not in the repository (models: digits-mlp)"),
        (413, "body: more than the limit of 16777216 bytes"),
        (422, "inputs: expected shape (B, 64), got (1, 63)"),
        (503, "model digits-mlp: overloaded, 4096 of 4096 queued samples (SNNL_MAX_QUEUE); retry"),
    ]
}

v2_probes = APIRouter(prefix="/v2", tags=["open inference protocol v2"])
v2 = GuardedRouter(prefix="/v2", tags=["open inference protocol v2"])


@v2_probes.get("/health/live", name="v2_live", summary="Server live")
async def server_live() -> dict[str, bool]:
    """200 while the process answers (as ``/healthz``)."""
    return {"live": True}


@v2_probes.get(
    "/health/ready", name="v2_ready", summary="Server ready", responses={503: V2_ERRORS[503]}
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
        inputs = [_tensor(SAMPLES_INPUT, "FP32", [-1, *served.spec.input_shape])]
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


@v2.post(
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
async def infer(model: str, request: Request, state: State) -> Response:
    """Score a batch given as v2 tensors; JSON or the binary tensor data extension.

    Binary: the header ``Inference-Header-Content-Length`` gives the JSON part's length; inputs
    with ``parameters.binary_data_size`` follow it. Outputs come back as binary data when asked
    (``outputs[].parameters.binary_data`` or ``parameters.binary_data_output``).
    """
    state.served(model)  # 404 / 503 before reading the body
    body = await read_body(request, state.settings.max_request_bytes)
    served = state.served(model)  # the version serving now: no await from here to the queue
    decoded = decode_request(body, request.headers.get(HEADER_LENGTH))
    parsed = decoded.request
    samples = _samples(decoded.tensors, served)
    neighbors = check_neighbors(parsed.parameters.neighbors, served.info.reference_size)
    wanted = _requested(parsed, neighbors)
    request.state.batch_size = num_rows(samples)
    submitted = served.batcher.submit(samples, alpha=parsed.parameters.alpha, neighbors=neighbors)
    result = await unless_disconnected(request, submitted)
    head = {"model_name": model, "model_version": served.version}
    if parsed.id is not None:
        head["id"] = parsed.id
    payload, header_length = encode_response(head, _outputs(result, wanted), _binary(parsed))
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


@v2.post(
    "/models/{model}/versions/{version}/infer", name="v2_infer_version", include_in_schema=False
)
async def version_infer(model: str, version: str, request: Request, state: State) -> Response:
    """``POST /v2/models/{model}/infer`` for the served version only."""
    _check_version(state.served(model), version)
    return await infer(model, request, state)


def _check_version(served: ServedModel, version: str) -> None:
    """404 unless ``version`` is the one served (a repository holds one version a model)."""
    if version != served.version:
        raise UnknownModel(
            f"model {served.info.name!r}: version {version!r} is not served "
            f"(versions: {served.version})"
        )


def _samples(tensors: dict[str, np.ndarray], served: ServedModel) -> CheckedBatch:
    """The batch: the ``inputs`` tensor, or one tensor per layer, checked as /v1 checks them."""
    if served.spec.input_shape is None:
        return check_embeddings(tensors, served.spec.layer_dims)
    if list(tensors) != [SAMPLES_INPUT]:
        raise InvalidInput(
            f"inputs: this model takes one tensor {SAMPLES_INPUT!r} "
            f"(B, {', '.join(map(str, served.spec.input_shape))}), got {list(tensors)}"
        )
    return npy_batch(tensors[SAMPLES_INPUT], served.spec)


def _requested(parsed: InferRequest, neighbors: int) -> list[str]:
    """Names of the outputs to return, in ``OUTPUTS`` order unless the request lists them."""
    available = [name for name, _, _ in OUTPUTS if name != "neighbor_ids" or neighbors > 0]
    if parsed.outputs is None:
        return available
    names = [output.name for output in parsed.outputs]
    for name in names:
        if name == "neighbor_ids" and neighbors == 0:
            raise MalformedRequest("outputs.neighbor_ids: set parameters.neighbors to k >= 1")
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
