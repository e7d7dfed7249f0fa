"""Request bodies to Python values: the media type, JSON objects checked by a schema, ``.npy``
arrays. What the values must be for a model (shape, dtype, NaN/inf, layers) is checked by the
data plane (``service.dataplane.checked_samples``).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from service.http.errors import InvalidInput, MalformedRequest, UnsupportedMediaType

NPY_MEDIA_TYPE = "application/x-npy"
JSON_MEDIA_TYPE = "application/json"
NPY_MAGIC = b"\x93NUMPY"


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
