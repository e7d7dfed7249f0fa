"""Datasets (``digits``, ``mnist1d``, ``.npz`` files with ``x`` and ``y``) and the seeded splits.

Samples are float32 (N, *input_shape); labels are remapped to 0..C-1 (sorted original ids), and
``class_names`` keeps the original ids as strings. The split is stratified and seeded:
``test_fraction`` and ``calibration_fraction`` are fractions of all samples.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from snnl.errors import InputError

BUILTIN_DATASETS: tuple[str, ...] = ("digits", "mnist1d")


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


def load_dataset(data: str, classes: Sequence[int] | None = None) -> Dataset:
    """The dataset ``data`` ("digits", "mnist1d" or a path to a ``.npz``), optionally the
    subset ``classes`` (original ids), with labels remapped to 0..C-1 in sorted id order."""
    if data == "digits":
        x, y = _digits()
    elif data == "mnist1d":
        x, y = _mnist1d()
    elif data.endswith(".npz") or Path(data).exists():
        x, labels = read_npz(data)
        assert labels is not None  # read_npz requires labels by default
        y = labels
    else:
        raise InputError(
            f"dataset: expected one of {', '.join(BUILTIN_DATASETS)} or a .npz file, got {data!r}"
        )
    present = np.unique(y)
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
