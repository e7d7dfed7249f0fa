"""Open Inference Protocol v2 tensors: request and response bodies, JSON and binary.

A v2 request body is a JSON object ``{"id", "parameters", "inputs", "outputs"}`` (and
``model_name``, ``model_version``, which KServe's client sends). With the binary tensor data
extension (what tritonclient sends), the header ``Inference-Header-Content-Length: N`` says the
first N bytes are that JSON; each input whose ``parameters.binary_data_size`` is set
takes that many raw little-endian bytes, in input order, from the rest of the body. Responses put
an output's bytes after the JSON the same way when the request asks for it (the output's
``parameters.binary_data`` or the request's ``parameters.binary_data_output``).

Every tensor is checked here: a known datatype (BYTES is not served), a shape of non-negative
ints whose product matches the data, binary sizes that account for exactly the body.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from service.api.decode import parse_json_object
from service.api.schemas import ScoreRequest
from service.http.errors import MalformedRequest

HEADER_LENGTH = "inference-header-content-length"

DATATYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(dtype).newbyteorder("<")
    for name, dtype in [
        ("BOOL", np.bool_), ("INT8", np.int8), ("INT16", np.int16), ("INT32", np.int32),
        ("INT64", np.int64), ("UINT8", np.uint8), ("UINT16", np.uint16), ("UINT32", np.uint32),
        ("UINT64", np.uint64), ("FP16", np.float16), ("FP32", np.float32), ("FP64", np.float64),
    ]
}  # fmt: skip
"""v2 datatype -> numpy dtype (little-endian, as the binary extension lays tensors out)."""


class TensorParameters(BaseModel):
    """A tensor's ``parameters``: where its bytes are (binary extension)."""

    model_config = ConfigDict(extra="allow")

    binary_data_size: int | None = Field(
        None, ge=0, description="Bytes of this input after the JSON header (binary extension)."
    )
    binary_data: bool | None = Field(
        None, description="Outputs: return this tensor's bytes after the JSON header."
    )


class RequestInput(BaseModel):
    """One input tensor: name, shape, datatype, and its data (JSON) or binary size."""

    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int]
    datatype: str
    parameters: TensorParameters | None = None
    data: list[Any] | None = Field(None, description="Row-major elements, flat or nested.")


class RequestOutput(BaseModel):
    """A requested output tensor (absent list: every output)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: TensorParameters | None = None


class InferParameters(BaseModel):
    """Request ``parameters``: ``alpha``, ``guarantee``, ``delta``, ``fdr`` and ``neighbors``
    exactly as in a /v1 score request."""

    model_config = ConfigDict(extra="forbid")

    alpha: Annotated[float | None, ScoreRequest.model_fields["alpha"]]
    guarantee: Annotated[
        Literal["marginal", "class", "pac"] | None, ScoreRequest.model_fields["guarantee"]
    ]
    delta: Annotated[float | None, ScoreRequest.model_fields["delta"]]
    fdr: Annotated[float | None, ScoreRequest.model_fields["fdr"]]
    neighbors: Annotated[int, ScoreRequest.model_fields["neighbors"]]
    binary_data_output: bool = Field(
        False, description="Return every output as binary data (binary tensor extension)."
    )


class InferRequest(BaseModel):
    """``POST /v2/models/{model}/infer``: inputs, optional outputs and request parameters.

    ``model_name`` and ``model_version`` are accepted as KServe's own server accepts them (its
    ``InferenceRESTClient`` puts ``model_name`` in every body): the path names the model, these
    are not read.
    """

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    model_name: str | None = Field(None, description="Ignored: the path names the model.")
    model_version: str | None = Field(None, description="Ignored: the path names the version.")
    parameters: InferParameters = Field(default_factory=lambda: InferParameters.model_validate({}))
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    """One output tensor of an infer response."""

    name: str
    shape: list[int]
    datatype: str
    parameters: TensorParameters | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    """An infer response (JSON part; binary outputs follow it with the binary extension)."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


@dataclass(frozen=True)
class DecodedRequest:
    """An infer request with its input tensors as numpy arrays (in request order)."""

    request: InferRequest
    tensors: dict[str, np.ndarray]


def decode_request(body: bytes, header_length: str | None) -> DecodedRequest:
    """The request of ``body`` (the JSON header alone, or followed by binary tensors)."""
    if header_length is None:
        header, binary = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError as err:
            raise MalformedRequest(
                f"header Inference-Header-Content-Length: not an integer: {header_length!r}"
            ) from err
        if not 0 < length <= len(body):
            raise MalformedRequest(
                f"header Inference-Header-Content-Length: {length} is not within the body of "
                f"{len(body)} bytes"
            )
        header, binary = body[:length], body[length:]
    request: InferRequest = parse_json_object(header, InferRequest)
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in request.inputs:
        if tensor.name in tensors:
            raise MalformedRequest(f"inputs: tensor {tensor.name!r} given twice")
        dtype = _dtype(tensor.datatype, f"inputs.{tensor.name}.datatype")
        size = tensor.parameters.binary_data_size if tensor.parameters else None
        if size is not None:
            if tensor.data is not None:
                raise MalformedRequest(
                    f"inputs.{tensor.name}: give either data or binary_data_size, not both"
                )
            if offset + size > len(binary):
                raise MalformedRequest(
                    f"inputs.{tensor.name}: binary_data_size {size} runs past the body "
                    f"({len(binary) - offset} bytes left)"
                )
            raw = binary[offset : offset + size]
            offset += size
            tensors[tensor.name] = _binary_tensor(tensor, dtype, raw)
        elif tensor.data is None:
            raise MalformedRequest(f"inputs.{tensor.name}: needs data or binary_data_size")
        else:
            tensors[tensor.name] = _json_tensor(tensor, dtype)
    if offset != len(binary):
        raise MalformedRequest(
            f"body: {len(binary) - offset} bytes after the tensors that no input's "
            "binary_data_size accounts for"
        )
    return DecodedRequest(request, tensors)


def _dtype(datatype: str, field: str) -> np.dtype[Any]:
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise MalformedRequest(f"{field}: expected one of {', '.join(DATATYPES)}, got {datatype!r}")
    return dtype


def _count(tensor: RequestInput) -> int:
    if any(dim < 0 for dim in tensor.shape):
        raise MalformedRequest(
            f"inputs.{tensor.name}.shape: expected non-negative sizes, got {tensor.shape}"
        )
    return math.prod(tensor.shape)


def _binary_tensor(tensor: RequestInput, dtype: np.dtype[Any], raw: bytes) -> np.ndarray:
    count = _count(tensor)
    if count * dtype.itemsize != len(raw):
        raise MalformedRequest(
            f"inputs.{tensor.name}: shape {tensor.shape} of {tensor.datatype} needs "
            f"{count * dtype.itemsize} bytes, binary_data_size is {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(tensor.shape)


def _json_tensor(tensor: RequestInput, dtype: np.dtype[Any]) -> np.ndarray:
    count = _count(tensor)
    try:
        flat = np.asarray(tensor.data, dtype=dtype).reshape(-1)
    except (TypeError, ValueError) as err:
        raise MalformedRequest(
            f"inputs.{tensor.name}.data: not a regular array of {tensor.datatype} ({err})"
        ) from err
    if flat.size != count:
        raise MalformedRequest(
            f"inputs.{tensor.name}.data: shape {tensor.shape} needs {count} elements, "
            f"got {flat.size}"
        )
    return flat.reshape(tensor.shape)


def datatype_of(array: np.ndarray) -> str:
    """The v2 datatype of ``array``'s dtype."""
    kind = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    for name, dtype in DATATYPES.items():
        if dtype == kind:
            return name
    raise TypeError(f"no v2 datatype for {array.dtype}")


def encode_response(
    head: Mapping[str, Any], outputs: Sequence[tuple[str, np.ndarray]], binary: set[str]
) -> tuple[bytes, int | None]:
    """The response body and its JSON header length (None: all JSON, no binary part).

    ``head`` holds ``model_name``, ``model_version``, ``id``...; each output becomes
    ``{"name", "datatype", "shape", "data"}``, or, when its name is in ``binary``,
    ``parameters.binary_data_size`` with its little-endian bytes appended after the JSON.
    """
    described: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in outputs:
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
        }
        if name in binary:
            raw = np.ascontiguousarray(array, dtype=DATATYPES[tensor["datatype"]]).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = array.reshape(-1).tolist()
        described.append(tensor)
    header = json.dumps({**head, "outputs": described}, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
