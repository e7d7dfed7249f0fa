"""ReferenceSet: sorting, activations of a net, safetensors round trip, refusals."""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors

from snnl.core.taps import LayerTaps
from snnl.errors import RepositoryError
from snnl.model.reference import ReferenceSet, StorageDtype
from snnl.model.store import map_verified, sha256
from snnl.training.nets import build_net


def test_from_arrays_sorts_rows_stably_by_label() -> None:
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.array([2, 0, 1, 0, 2, 1])
    ref = ReferenceSet.from_arrays({"h": x}, y)
    np.testing.assert_array_equal(ref.labels.numpy(), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(ref.features["h"].numpy()[:, 0], [2, 6, 4, 10, 0, 8])
    assert ref.size == 6 and ref.dims() == {"h": 2} and ref.layers == ("h",)


def test_from_net_is_the_layer_activations() -> None:
    torch.manual_seed(0)
    net = build_net("mlp", [6], 3, hidden=[5, 4]).eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=23)
    ref = ReferenceSet.from_net(net, x, y, ["fc1", "fc2"], device=torch.device("cpu"), batch_size=4)
    order = np.argsort(y, kind="stable")
    with torch.no_grad(), LayerTaps(net, ["fc1", "fc2"]) as taps:
        net(torch.from_numpy(x))
        for name in ("fc1", "fc2"):
            np.testing.assert_allclose(
                ref.features[name].numpy(), taps.activations[name].numpy()[order], atol=1e-6
            )
    np.testing.assert_array_equal(ref.labels.numpy(), y[order])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip(dtype: str) -> None:
    rng = np.random.default_rng(1)
    ref = ReferenceSet.from_arrays(
        {
            "a": rng.normal(size=(9, 3)).astype(np.float32),
            "b": rng.normal(size=(9, 2)).astype(np.float32),
        },
        rng.integers(0, 2, size=9),
    )
    loaded = ReferenceSet.from_bytes(ref.to_bytes(dtype), ["a", "b"])
    assert loaded.features["a"].dtype == getattr(torch, dtype)
    np.testing.assert_array_equal(loaded.labels.numpy(), ref.labels.numpy())
    expected = ref.features["b"].to(getattr(torch, dtype)).float().numpy()
    np.testing.assert_array_equal(loaded.features["b"].float().numpy(), expected)
    # The same content gives the same bytes (model folders rebuild byte for byte).
    assert ref.to_bytes(dtype) == ReferenceSet.from_bytes(ref.to_bytes(dtype), ["a", "b"]).to_bytes(
        dtype
    )


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_saved_file_is_the_serialized_bytes_and_round_trips(
    dtype: StorageDtype, tmp_path: Path
) -> None:
    """``stored_as(dtype).save`` writes exactly the bytes of ``to_bytes(dtype)`` (what readers
    load), and the file maps back to the stored values; float32 features are not copied."""
    rng = np.random.default_rng(2)
    ref = ReferenceSet.from_arrays(
        {
            "a": rng.normal(size=(11, 3)).astype(np.float32),
            "b": rng.normal(size=(11, 5)).astype(np.float32),
        },
        rng.integers(0, 3, size=11),
    )
    stored = ref.stored_as(dtype)
    shared = stored.features["a"].data_ptr() == ref.features["a"].data_ptr()
    assert shared == (dtype == "float32")
    path = tmp_path / "reference.safetensors"
    stored.save(path)
    assert path.read_bytes() == ref.to_bytes(dtype)
    loaded = ReferenceSet.from_bytes(map_verified(path, sha256(path.read_bytes())), ["a", "b"])
    for name in ("a", "b"):
        assert torch.equal(loaded.features[name], stored.features[name])
    assert torch.equal(loaded.labels, ref.labels)


def test_refusals_name_the_file_and_tensor() -> None:
    labels = torch.tensor([0, 1, 1])
    good = {"labels": labels, "features.h": torch.zeros(3, 2)}
    with pytest.raises(RepositoryError, match=r"ref\.st: missing tensor 'features\.g'"):
        ReferenceSet.from_bytes(save_safetensors(good), ["g"], source="ref.st")
    with pytest.raises(RepositoryError, match=r"'features\.h' must be"):
        bad = {"labels": labels, "features.h": torch.zeros(2, 2)}
        ReferenceSet.from_bytes(save_safetensors(bad), ["h"], source="ref.st")
    with pytest.raises(RepositoryError, match="'labels' must be"):
        bad = {"labels": labels.float(), "features.h": torch.zeros(3, 2)}
        ReferenceSet.from_bytes(save_safetensors(bad), ["h"], source="ref.st")
    with pytest.raises(RepositoryError, match="sorted by label"):
        bad = {"labels": torch.tensor([1, 0, 1]), "features.h": torch.zeros(3, 2)}
        ReferenceSet.from_bytes(save_safetensors(bad), ["h"], source="ref.st")
    with pytest.raises(RepositoryError, match="not a readable safetensors"):
        ReferenceSet.from_bytes(b"\x00" * 20, ["h"], source="ref.st")


def _mapped(tmp_path: Path, data: bytes) -> mmap.mmap:
    path = tmp_path / "reference.safetensors"
    path.write_bytes(data)
    return map_verified(path, sha256(data))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_mapped_file_gives_views_of_the_map_equal_to_parsing_bytes(
    tmp_path: Path, dtype: str
) -> None:
    rng = np.random.default_rng(2)
    features = {"a": rng.normal(size=(7, 3)).astype(np.float32), "b": np.zeros((7, 0), np.float32)}
    data = ReferenceSet.from_arrays(features, rng.integers(0, 3, size=7)).to_bytes(dtype)
    parsed = ReferenceSet.from_bytes(data, ["a", "b"])
    mapped = ReferenceSet.from_bytes(_mapped(tmp_path, data), ["a", "b"])
    for name in ("a", "b"):
        assert mapped.features[name].dtype == parsed.features[name].dtype
        assert torch.equal(mapped.features[name], parsed.features[name])
    assert torch.equal(mapped.labels, parsed.labels)
    buffer = _mapped(tmp_path, data)
    start = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    view = ReferenceSet.from_bytes(buffer, ["a"]).features["a"]
    assert start <= view.data_ptr() < start + len(buffer)  # the map itself: no copy was made


def test_a_mapped_file_is_checked_as_bytes_are(tmp_path: Path) -> None:
    labels = torch.tensor([0, 1, 1])
    good = save_safetensors({"labels": labels, "features.h": torch.zeros(3, 2)})
    with pytest.raises(RepositoryError, match=r"ref\.st: missing tensor 'features\.g'"):
        ReferenceSet.from_bytes(_mapped(tmp_path, good), ["g"], source="ref.st")
    bad = save_safetensors({"labels": labels, "features.h": torch.zeros(3, 2, dtype=torch.int32)})
    with pytest.raises(RepositoryError, match="dtype I32 is not F32, F16 or I64"):
        ReferenceSet.from_bytes(_mapped(tmp_path, bad), ["h"], source="ref.st")
    for broken in (b"\xff" * 20, good[:-8], good[:12]):
        with pytest.raises(RepositoryError, match="not a readable safetensors"):
            ReferenceSet.from_bytes(_mapped(tmp_path, broken), ["h"], source="ref.st")
