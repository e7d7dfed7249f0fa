"""Contiguous shards of the reference rows, and reading only a shard's rows from the file.

The reference set is stored sorted by label (snnl.model.reference), N rows per layer. Shard i of S
holds rows [start_i, stop_i) of every layer, with

    start_i = floor(i N / S),  stop_i = floor((i + 1) N / S)

so the shards partition the rows, differ in size by at most one row, and a shard's local row j is
the global row start_i + j. A shard reads its rows with safetensors' ``safe_open`` + ``get_slice``,
which maps the file and copies only those rows, so no process ever holds the whole reference.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from snnl.errors import RepositoryError

_FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16}  # safetensors' names


def shard_bounds(rows: int, shards: int) -> list[tuple[int, int]]:
    """[(start_i, stop_i)] of ``shards`` contiguous, near-equal parts of ``rows`` rows."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    if shards > rows:
        raise ValueError(f"{shards} shards need at least {shards} reference rows, got {rows}")
    cuts = [i * rows // shards for i in range(shards + 1)]
    return list(itertools.pairwise(cuts))


@dataclass(frozen=True)
class FileStamp:
    """Size and modification time of a file: cheap to check on every node that reads it."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        stat = os.stat(path)
        return cls(size=stat.st_size, mtime_ns=stat.st_mtime_ns)


def read_rows(
    path: Path, layers: Sequence[str], start: int, stop: int, stamp: FileStamp | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Rows [start, stop) of ``features.<layer>`` (stored dtype) and of ``labels`` (int64).

    ``stamp``: the file must still be the one the caller verified (its sha256 was checked when the
    model was loaded); a file replaced since is a RepositoryError, never a silent mix of versions.
    """
    if stamp is not None and FileStamp.of(path) != stamp:
        raise RepositoryError(f"{path}: changed since the model was loaded (size or mtime)")
    try:
        with safe_open(str(path), framework="pt") as f:
            labels_slice = f.get_slice("labels")
            n = labels_slice.get_shape()[0]
            if not 0 <= start < stop <= n:
                raise RepositoryError(f"{path}: rows [{start}, {stop}) are not within [0, {n})")
            labels = labels_slice[start:stop]
            features = {}
            for name in layers:
                part = f.get_slice(f"features.{name}")
                _check_features(path, name, part, n)
                features[name] = part[start:stop]
    except RepositoryError:
        raise
    except Exception as err:
        raise RepositoryError(f"{path}: cannot read rows [{start}, {stop}) ({err})") from err
    if labels.dtype != torch.int64:
        raise RepositoryError(f"{path}: 'labels' must be int64, got {labels.dtype}")
    return features, labels


def reference_outline(
    path: Path, layers: Sequence[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The reference's shape without its rows: per layer an (N, d_l) tensor on the "meta"
    device (shape and dtype, no memory) and the labels (N,) int64, read from the header and the
    labels tensor only; RepositoryError names a missing or malformed tensor."""
    try:
        with safe_open(str(path), framework="pt") as f:
            labels = f.get_tensor("labels")
            if labels.ndim != 1 or labels.dtype != torch.int64 or labels.numel() == 0:
                raise RepositoryError(f"{path}: 'labels' must be a non-empty (N,) int64 tensor")
            features = {}
            for name in layers:
                part = f.get_slice(f"features.{name}")
                _check_features(path, name, part, labels.shape[0])
                features[name] = torch.empty(
                    part.get_shape(), dtype=_FLOAT_DTYPES[part.get_dtype()], device="meta"
                )
    except RepositoryError:
        raise
    except Exception as err:
        raise RepositoryError(f"{path}: cannot read the reference's header ({err})") from err
    return features, labels


def _check_features(path: Path, name: str, part: Any, rows: int) -> None:
    """RepositoryError unless the slice ``part`` of ``features.<name>`` is (rows, d) float."""
    shape, dtype = part.get_shape(), part.get_dtype()
    if len(shape) != 2 or shape[0] != rows or dtype not in _FLOAT_DTYPES:
        raise RepositoryError(
            f"{path}: 'features.{name}' must be (N={rows}, d) float32 or float16, "
            f"got {tuple(shape)} {dtype}"
        )
