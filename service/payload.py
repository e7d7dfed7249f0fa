"""Request bodies to validated numpy batches: JSON or ``application/x-npy``, checked in full.

Everything a batch could fail on (shape, dtype, NaN/inf, an empty batch, unknown layers) is
refused here with the library's own checks (``snnl.scoring.validation``, InputError -> 422), before
the
batch meets other requests, so a bad request never fails someone else's.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from service.errors import InvalidInput, MalformedRequest, UnsupportedMediaType
from snnl.scoring.batch import CheckedBatch
from snnl.scoring.validation import check_embeddings, check_inputs

NPY_MEDIA_TYPE = "application/x-npy"
JSON_MEDIA_TYPE = "application/json"
NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: raw samples of ``input_shape``, or embeddings {layer: dim}."""

    input_shape: tuple[int, ...] | None
    layer_dims: Mapping[str, int]


def media_type(content_type: str | None) -> str:
    """``application/json`` (also when absent) or ``application/x-npy``; 415 otherwise."""
    kind = (content_type or JSON_MEDIA_TYPE).split(";")[0].strip().lower()
    if kind not in (JSON_MEDIA_TYPE, NPY_MEDIA_TYPE):
        raise UnsupportedMediaType(
            f"header Content-Type: expected {JSON_MEDIA_TYPE} or {NPY_MEDIA_TYPE}, got {kind!r}"
        )
    return kind


def parse_json_object(body: bytes, schema: type[BaseModel]) -> Any:
    """``body`` parsed as JSON (else 400), validated by ``schema`` (else 422 naming the field).

    orjson parses strict JSON (RFC 8259) to the same Python values as the standard library, an
    order of magnitude faster. Whatever it refuses (malformed text, NaN or Infinity literals,
    integers beyond 64 bits, nesting deeper than 1024, other encodings than UTF-8) is parsed
    again by the standard library, whose answer (a value, or the error named in the 400) decides:
    the fast path changes no outcome.
    """
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        value = _parse_json_stdlib(body)
    if not isinstance(value, dict):
        raise MalformedRequest(f"body: expected a JSON object, got {type(value).__name__}")
    return validated(value, schema)


def _parse_json_stdlib(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as err:  # also UnicodeDecodeError, and integers over 4300 digits
        raise MalformedRequest(f"body: not valid JSON ({err})") from err
    except RecursionError as err:
        raise MalformedRequest("body: JSON nested too deeply") from err


def validated(value: Mapping[str, Any], schema: type[BaseModel]) -> Any:
    """``value`` validated by ``schema``; the first error is a 422 naming its field."""
    try:
        return schema.model_validate(value)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidInput(f"{field}: {first['msg']}") from err


def parse_npy(body: bytes) -> np.ndarray:
    """One array from an ``.npy`` body, never unpickling (400 if it is not a plain .npy).

    The header's shape and dtype must account for exactly the bytes that follow it, checked
    before numpy allocates the array: a header cannot make the server reserve more memory than
    the (size-limited) body holds.
    """
    if not body.startswith(NPY_MAGIC):
        raise MalformedRequest("body: not a valid .npy array (no .npy header)")
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"format version {version[0]}.{version[1]} is not 1.0 or 2.0")
        if dtype.hasobject:
            raise ValueError("object arrays are not accepted")
        declared = math.prod(shape) * dtype.itemsize
        if declared != len(body) - stream.tell():
            raise ValueError(
                f"the header declares shape {shape} of {dtype} ({declared} bytes) but "
                f"{len(body) - stream.tell()} bytes follow it"
            )
        value = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise MalformedRequest(f"body: not a valid .npy array ({err})") from err
    return value


def model_batch(inputs: Any, embeddings: Any, spec: InputSpec) -> CheckedBatch:
    """The batch of a JSON request: ``inputs`` for a model, ``embeddings`` for embedding-only."""
    if spec.input_shape is not None:
        if inputs is None:
            raise InvalidInput("inputs: required for this model (raw samples, not embeddings)")
        return check_inputs(inputs, spec.input_shape)
    if embeddings is None:
        raise InvalidInput("embeddings: required for this embedding-only model, not inputs")
    return check_embeddings(embeddings, spec.layer_dims)


def npy_batch(array: np.ndarray, spec: InputSpec) -> CheckedBatch:
    """The batch of an ``.npy`` body: the samples, or the embeddings of a one-layer model."""
    if spec.input_shape is not None:
        return check_inputs(array, spec.input_shape)
    if len(spec.layer_dims) != 1:
        raise InvalidInput(
            f"body: an .npy body holds one array but the model serves layers "
            f"{list(spec.layer_dims)}; send JSON {{'embeddings': {{layer: [[...]]}}}}"
        )
    return check_embeddings({layer: array for layer in spec.layer_dims}, spec.layer_dims)


def class_labels(value: Sequence[int | str], class_names: Sequence[str], n: int) -> np.ndarray:
    """Labels as class indices (B,) int64, from indices 0..C-1 or from class names."""
    if len(value) != n:
        raise InvalidInput(f"labels: expected {n} labels (one per sample), got {len(value)}")
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.empty(n, dtype=np.int64)
    for row, label in enumerate(value):
        if isinstance(label, str):
            if label not in index:
                raise InvalidInput(
                    f"labels.{row}: unknown class name {label!r}; classes {list(class_names)}"
                )
            labels[row] = index[label]
        elif 0 <= label < len(class_names):
            labels[row] = label
        else:
            raise InvalidInput(
                f"labels.{row}: class index {label} outside 0..{len(class_names) - 1}"
            )
    return labels
