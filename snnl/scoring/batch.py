"""A checked batch: the value input checking produces, and that scoring, the builder and the
service pass along instead of checking again.

A model with a network takes raw samples, (B, *input_shape) -> ``CheckedSamples``; an
embedding-only model takes its layer representations, {layer: (B, d_l)} -> ``CheckedFeatures``.
Only the checks of snnl.scoring.validation make them (``Detector.check`` picks the model's one);
rows sliced from a checked batch, and checked batches of one model concatenated, stay checked.
The row helpers below treat both kinds alike, so a caller (the builder, the service's batcher,
``snnl score``) never branches on the kind to count, slice, stack or chunk rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

Samples = np.ndarray | Mapping[str, Any]
"""A batch as a caller gives it, unchecked: an array (B, *input_shape), or {layer: (B, d_l)}."""


@dataclass(frozen=True)
class CheckedSamples:
    """Raw samples ``x`` (B, *input_shape), B >= 1: float32, C-contiguous, every value finite
    (``snnl.scoring.validation.check_inputs``)."""

    x: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def rows(self, start: int, stop: int) -> CheckedSamples:
        """Rows [start, stop)."""
        return CheckedSamples(self.x[start:stop])


@dataclass(frozen=True)
class CheckedFeatures:
    """Layer representations ``features`` {layer: (B, d_l)}, B >= 1 and the same for every
    layer, exactly the model's layers in its order: float32, every value finite
    (``snnl.scoring.validation.check_embeddings``)."""

    features: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(next(iter(self.features.values())).shape[0])

    def rows(self, start: int, stop: int) -> CheckedFeatures:
        """Rows [start, stop) of every layer."""
        return CheckedFeatures({layer: x[start:stop] for layer, x in self.features.items()})


CheckedBatch = CheckedSamples | CheckedFeatures
_Kind = TypeVar("_Kind", CheckedSamples, CheckedFeatures)
"""A batch that passed a model's input checks, of either kind."""


def num_rows(batch: CheckedBatch) -> int:
    """B, the number of samples."""
    return len(batch)


def slice_rows(batch: CheckedBatch, start: int, stop: int) -> CheckedBatch:
    """Rows [start, stop) of a checked batch."""
    return batch.rows(start, stop)


def concat_rows(parts: Sequence[CheckedBatch]) -> CheckedBatch:
    """The parts (checked batches of one kind, for one model) stacked along the rows."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first, CheckedSamples):
        return CheckedSamples(np.concatenate([_of(CheckedSamples, p).x for p in parts]))
    return CheckedFeatures(
        {
            layer: np.concatenate([_of(CheckedFeatures, p).features[layer] for p in parts])
            for layer in first.features
        }
    )


def row_chunks(batch: CheckedBatch, size: int) -> Iterator[CheckedBatch]:
    """Consecutive slices of at most ``size`` rows covering ``batch`` in order."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    total = len(batch)
    for start in range(0, total, size):
        yield batch.rows(start, min(start + size, total))


def _of(kind: type[_Kind], part: CheckedBatch) -> _Kind:
    if not isinstance(part, kind):
        raise TypeError("concat_rows: parts mix checked samples and checked features")
    return part
