"""A batch of samples and its row helpers: an array (B, ...) or {layer: (B, d_l)}.

A model with a network takes raw samples, an array (B, *input_shape); an embedding-only model
takes its layer representations, {layer: (B, d_l)}, every layer with the same B rows. The helpers
below treat both forms alike, so a caller (the builder, the service's batcher, ``snnl score``)
never branches on the form to count, slice, stack or chunk rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

Samples = np.ndarray | Mapping[str, np.ndarray]
"""A batch: an array (B, *input_shape), or {layer: (B, d_l)} for embedding-only models."""


def num_rows(samples: Samples) -> int:
    """B of an array (B, ...) or of {layer: (B, d)} (0 for an empty mapping)."""
    if isinstance(samples, np.ndarray):
        return int(samples.shape[0])
    first = next(iter(samples.values()), None)
    return 0 if first is None else int(np.shape(first)[0])


def slice_rows(samples: Samples, start: int, stop: int) -> Samples:
    """Rows [start, stop) of an array or of every layer of {layer: (B, d)}."""
    if isinstance(samples, np.ndarray):
        return samples[start:stop]
    return {layer: values[start:stop] for layer, values in samples.items()}


def concat_rows(parts: Sequence[Samples]) -> Samples:
    """The parts stacked along the rows (B_1 + ... + B_k, ...), all of the same form."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first, np.ndarray):
        return np.concatenate([_array(p) for p in parts], axis=0)
    return {layer: np.concatenate([_mapping(p)[layer] for p in parts], axis=0) for layer in first}


def row_chunks(samples: Samples, size: int) -> Iterator[Samples]:
    """Consecutive slices of at most ``size`` rows covering ``samples`` in order."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    total = num_rows(samples)
    for start in range(0, total, size):
        yield slice_rows(samples, start, min(start + size, total))


def _array(part: Samples) -> np.ndarray:
    if not isinstance(part, np.ndarray):
        raise TypeError("concat_rows: parts mix arrays and {layer: array} mappings")
    return part


def _mapping(part: Samples) -> Mapping[str, np.ndarray]:
    if isinstance(part, np.ndarray):
        raise TypeError("concat_rows: parts mix arrays and {layer: array} mappings")
    return part
