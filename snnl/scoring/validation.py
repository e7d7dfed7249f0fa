"""Checks of what a caller hands a Detector; each failure is an InputError naming the field.

``check_inputs`` and ``check_embeddings`` are the only makers of a checked batch
(snnl.scoring.batch): what passes them is never checked again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from snnl.errors import InputError
from snnl.scoring.batch import CheckedFeatures, CheckedSamples


def _array(value: Any, field: str) -> np.ndarray:
    """``value`` as an array; a ragged nested list is an InputError."""
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except ValueError as err:
        raise InputError(f"{field}: expected a rectangular array of numbers ({err})") from err


def _finite_float32(array: np.ndarray, field: str) -> np.ndarray:
    """``array`` (B, ...) as float32: real numbers only (floats or integers), all finite."""
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise InputError(f"{field}: expected real numbers (float32), got dtype {array.dtype}")
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(out).reshape(out.shape[0], -1).all(1)
    if not finite.all():
        raise InputError(
            f"{field}: NaN or inf (or a value beyond float32's range) in sample "
            f"{int(np.flatnonzero(~finite)[0])}"
        )
    return out


def check_inputs(x: Any, input_shape: tuple[int, ...]) -> CheckedSamples:
    """Samples (B, *input_shape) float32 from ``x`` of shape (B, *input_shape) or (B, prod)."""
    size = math.prod(input_shape)
    array = _array(x, "inputs")
    shape = tuple(array.shape)
    if array.ndim < 1 or shape[0] == 0:
        raise InputError(f"inputs: expected a non-empty batch (B, {size}), got shape {shape}")
    if shape[1:] != input_shape and shape[1:] != (size,):
        expected = f"(B, {size})" + (
            f" or (B, {', '.join(map(str, input_shape))})" if len(input_shape) > 1 else ""
        )
        raise InputError(f"inputs: expected shape {expected}, got {shape}")
    return CheckedSamples(_finite_float32(array, "inputs").reshape(shape[0], *input_shape))


def check_embeddings(embeddings: Any, dims: Mapping[str, int]) -> CheckedFeatures:
    """{layer: (B, d_l) float32} with exactly the layers of ``dims`` and one batch size B."""
    if not isinstance(embeddings, Mapping):
        raise InputError(
            f"embeddings: expected a mapping {{layer: (B, d)}}, got {type(embeddings).__name__}"
        )
    unknown = sorted(set(embeddings) - set(dims))
    if unknown:
        raise InputError(f"embeddings: unknown layer {unknown[0]!r}; expected {list(dims)}")
    missing = [name for name in dims if name not in embeddings]
    if missing:
        raise InputError(f"embeddings: missing layer {missing[0]!r}; expected {list(dims)}")
    out: dict[str, np.ndarray] = {}
    batch = None
    for name, dim in dims.items():
        field = f"embeddings.{name}"
        raw = _array(embeddings[name], field)
        if raw.ndim != 2 or raw.shape[1] != dim or raw.shape[0] == 0:
            raise InputError(f"{field}: expected shape (B, {dim}) with B >= 1, got {raw.shape}")
        if batch is not None and raw.shape[0] != batch:
            raise InputError(f"{field}: {raw.shape[0]} rows, other layers have {batch}")
        batch = raw.shape[0]
        out[name] = _finite_float32(raw, field)
    return CheckedFeatures(out)


def check_alpha(alpha: float | None, default: float) -> float:
    """``alpha`` (or ``default`` when None) as a float in (0, 1)."""
    if alpha is None:
        return default
    number = (int, float, np.integer, np.floating)
    if isinstance(alpha, bool) or not isinstance(alpha, number) or not 0.0 < alpha < 1.0:
        raise InputError(f"alpha: expected a number in (0, 1), got {alpha!r}")
    return float(alpha)


def check_neighbors(neighbors: int, reference_size: int) -> int:
    """``neighbors`` as an int in [0, reference_size]."""
    if isinstance(neighbors, bool) or not isinstance(neighbors, (int, np.integer)):
        raise InputError(f"neighbors: expected an integer, got {neighbors!r}")
    if not 0 <= neighbors <= reference_size:
        raise InputError(f"neighbors: expected 0..{reference_size}, got {neighbors}")
    return int(neighbors)
