"""Shard bounds and reading only a shard's rows of reference.safetensors (no Ray needed)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from snnl.errors import RepositoryError
from snnl.sharding.rows import FileStamp, read_rows, reference_outline, shard_bounds


@pytest.mark.parametrize(("rows", "shards"), [(1, 1), (10, 3), (7, 7), (1000, 8), (5, 2)])
def test_shard_bounds_partition_the_rows(rows: int, shards: int) -> None:
    bounds = shard_bounds(rows, shards)
    assert len(bounds) == shards
    assert bounds[0][0] == 0 and bounds[-1][1] == rows
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_shard_bounds_refuse_more_shards_than_rows() -> None:
    with pytest.raises(ValueError, match="at least 4 reference rows"):
        shard_bounds(3, 4)
    with pytest.raises(ValueError, match=">= 1"):
        shard_bounds(3, 0)


@pytest.fixture
def reference_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    rng = np.random.default_rng(0)
    tensors = {
        "labels": torch.from_numpy(np.sort(rng.integers(0, 3, 50))),
        "features.a": torch.from_numpy(rng.normal(size=(50, 4)).astype(np.float32)),
        "features.b": torch.from_numpy(rng.normal(size=(50, 2)).astype(np.float16)),
    }
    path = tmp_path / "reference.safetensors"
    save_file(tensors, str(path))
    return path, tensors


def test_read_rows_returns_exactly_the_shards_rows(
    reference_file: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, tensors = reference_file
    features, labels = read_rows(path, ["a", "b"], 17, 33, FileStamp.of(path))
    torch.testing.assert_close(labels, tensors["labels"][17:33], rtol=0, atol=0)
    torch.testing.assert_close(features["a"], tensors["features.a"][17:33], rtol=0, atol=0)
    assert features["b"].dtype == torch.float16
    torch.testing.assert_close(features["b"], tensors["features.b"][17:33], rtol=0, atol=0)


def test_read_rows_refuses_a_replaced_file(
    reference_file: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, _ = reference_file
    stamp = FileStamp.of(path)
    os.utime(path, ns=(stamp.mtime_ns + 10**9, stamp.mtime_ns + 10**9))
    with pytest.raises(RepositoryError, match="changed since the model was loaded"):
        read_rows(path, ["a"], 0, 10, stamp)


def test_read_rows_names_a_missing_layer_and_bad_bounds(
    reference_file: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, _ = reference_file
    with pytest.raises(RepositoryError, match=r"features\.zzz"):
        read_rows(path, ["zzz"], 0, 10)
    with pytest.raises(RepositoryError, match=r"rows \[40, 60\) are not within \[0, 50\)"):
        read_rows(path, ["a"], 40, 60)


def test_reference_outline_holds_shapes_not_rows(
    reference_file: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, tensors = reference_file
    features, labels = reference_outline(path, ["a", "b"])
    assert features["a"].device.type == "meta" and features["a"].shape == (50, 4)
    assert features["b"].dtype == torch.float16 and features["b"].shape == (50, 2)
    torch.testing.assert_close(labels, tensors["labels"], rtol=0, atol=0)
