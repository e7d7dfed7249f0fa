"""``snnl index``: an embedding-only model from embeddings a user already has.

An ``.npz`` with ``x`` (N, d) and integer labels ``y`` (N,) becomes the reference set. The
calibration set is, best, a held-out ``calibration`` file of the same form (embeddings of samples
the encoder never saw: calibrating on rows of the data file is optimistic when the encoder was
trained on them, their neighbors are closer than a new sample's); without one, a stratified,
seeded draw of the data file's rows is held out. Either way at most ``calibration_size`` rows are
drawn (stratified, each class raised to what guarantee "class" needs where it has the rows:
snnl.build.assemble.stratified_rows), and from the data file at most ``calibration_fraction`` of
each class. Scoring n_cal calibration rows against N reference rows costs O(n_cal N), so the build
grows linearly in N. The layer's temperature comes from the reference part
(snnl.scoring.temperature_rule). Clients then send the same encoder's embeddings to
``Detector.score_embeddings({layer: (B, d)})``.

``x`` of an uncompressed ``.npz`` (``numpy.savez``) is memory-mapped, not read: the reference rows
are copied once, in label order, straight from the map.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from snnl.build.assemble import (
    DEFAULT_NONCONFORMITY,
    ModelRecipe,
    build_model,
    class_floor,
    stratified_rows,
)
from snnl.core.distances import Distance
from snnl.errors import InputError
from snnl.model.manifest import Manifest
from snnl.model.reference import ReferenceSet, StorageDtype
from snnl.scoring.guarantees import DEFAULT_DELTA, Guarantee, default_calibration_size
from snnl.scoring.neighbor_mass import DEFAULT_PERPLEXITY, GEOMETRIES
from snnl.scoring.temperature_rule import DEFAULT_RULE
from snnl.training.data import read_npz

DEFAULT_LAYER = "embedding"
DEFAULT_ALPHA = 0.05
DEFAULT_CALIBRATION_SIZE = default_calibration_size(DEFAULT_ALPHA, DEFAULT_DELTA)
_CHECK_ROWS = 1 << 16  # rows per finiteness check of a memory-mapped x


def read_embeddings(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (N, d) float32 and ``y`` (N,) int from ``path``: memory-mapped when ``x.npy`` is
    stored uncompressed as float32 (checked for finiteness chunk by chunk), else read_npz."""
    mapped = _mapped_x(path)
    if mapped is None:
        x, y = read_npz(path)
        assert y is not None
        return x, y
    with np.load(path, allow_pickle=False) as npz:
        if "y" not in npz.files:
            raise InputError(f"{path}: missing key 'y' (integer class ids, shape (N,))")
        y = npz["y"]
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (mapped.shape[0],):
        raise InputError(f"{path}: 'y' must be {mapped.shape[0]} integer class ids, got {y.shape}")
    for start in range(0, mapped.shape[0], _CHECK_ROWS):
        if not np.isfinite(mapped[start : start + _CHECK_ROWS]).all():
            raise InputError(f"{path}: 'x' contains NaN or inf")
    return mapped, y


def _mapped_x(path: Path) -> np.ndarray | None:
    """A read-only memory map of ``x`` when it is an uncompressed float32 (N >= 1, d) member."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("x.npy")
            if info.compress_type != zipfile.ZIP_STORED:
                return None
            with archive.open(info) as member:
                major, _ = np.lib.format.read_magic(member)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if major == 1
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(member)
                header = member.tell()
    except (KeyError, ValueError, OSError, zipfile.BadZipFile):
        return None
    if fortran or dtype != np.float32 or len(shape) != 2 or shape[0] == 0:
        return None
    with path.open("rb") as raw:  # the member's data starts after its local file header
        raw.seek(info.header_offset + 26)
        name_length, extra_length = np.frombuffer(raw.read(4), dtype="<u2")
    offset = info.header_offset + 30 + int(name_length) + int(extra_length) + header
    return np.memmap(path, dtype=np.float32, mode="r", offset=offset, shape=shape)


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def index_embeddings(
    data: str | Path,
    repository: str | Path,
    name: str,
    *,
    layer: str = DEFAULT_LAYER,
    distance: Distance = "cosine",
    calibration: str | Path | None = None,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    calibration_fraction: float = 0.15,
    alpha: float = DEFAULT_ALPHA,
    guarantee: Guarantee = "marginal",
    delta: float | None = None,
    temperature_rule: str = DEFAULT_RULE,
    nonconformity: str = DEFAULT_NONCONFORMITY,
    mass_geometries: Sequence[Distance] = GEOMETRIES,
    mass_perplexity: float = DEFAULT_PERPLEXITY,
    reference_dtype: StorageDtype = "float32",
    version: str = "1",
    created: str | None = None,
    seed: int = 0,
    device: str = "auto",
) -> Manifest:
    """Build ``repository/<name>`` from the embeddings file ``data`` (and the held-out
    ``calibration`` file, if given); returns its manifest. ``mass_geometries`` and
    ``mass_perplexity``: as in :func:`snnl.build.from_run.export_run`."""
    if not 0.0 < calibration_fraction < 1.0:
        raise InputError(f"calibration_fraction must be in (0, 1), got {calibration_fraction}")
    if calibration_size < 1:
        raise InputError(f"calibration_size must be >= 1, got {calibration_size}")
    split = _split(
        Path(data),
        None if calibration is None else Path(calibration),
        layer=layer,
        size=calibration_size,
        fraction=calibration_fraction,
        floor=class_floor(alpha),
        seed=seed,
    )
    recipe = ModelRecipe(
        name=name,
        version=version,
        created=created,
        class_names=split.class_names,
        distance=distance,
        temperature_rule=temperature_rule,
        nonconformity=nonconformity,
        mass_geometries=tuple(mass_geometries),
        mass_perplexity=mass_perplexity,
        reference_dtype=reference_dtype,
        alpha=alpha,
        guarantee=guarantee,
        delta=delta,
        provenance={**split.provenance, "seed": seed},
    )
    return build_model(
        repository,
        recipe,
        reference=split.reference,
        calibration_inputs={layer: split.x_cal},
        device=device,
        seed=seed,
    )


@dataclass(frozen=True)
class _Split:
    """The reference set (label-ordered copy of its rows), the calibration rows (n, d) float32,
    the class names and the provenance of both."""

    reference: ReferenceSet
    x_cal: np.ndarray
    class_names: list[str]
    provenance: dict[str, object]


def _split(
    data: Path,
    calibration: Path | None,
    *,
    layer: str,
    size: int,
    fraction: float,
    floor: int,
    seed: int,
) -> _Split:
    """The reference and calibration rows of ``data`` (and ``calibration``), copied out of the
    files' memory maps, which are closed when this returns: the build never holds a map and its
    copy at once after this."""
    x, y = read_embeddings(data)
    if x.ndim != 2:
        raise InputError(f"{data}: 'x' must be embeddings (N, d), got shape {x.shape}")
    classes, labels = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise InputError(f"{data}: 'y' must hold at least 2 classes, got {classes.tolist()}")
    provenance: dict[str, object] = {"source": data.name, "source_sha256": _sha256(data)}
    if calibration is None:
        count = min(size, round(fraction * len(labels)))
        held_out = stratified_rows(labels, count, floor=floor, max_fraction=fraction, seed=seed)
        if held_out.size == 0:
            raise InputError(f"{data}: too few rows to hold out a calibration set")
        x_cal, reference_rows = x[held_out], np.setdiff1d(np.arange(len(labels)), held_out)
        provenance |= {"calibration_fraction": fraction}
    else:
        x_file, y_file = read_embeddings(calibration)
        if x_file.ndim != 2 or x_file.shape[1] != x.shape[1]:
            raise InputError(f"{calibration}: 'x' must be (n, {x.shape[1]}), got {x_file.shape}")
        index = {int(c): k for k, c in enumerate(classes)}
        unknown = sorted(set(np.unique(y_file).tolist()) - set(index))
        if unknown:
            raise InputError(f"{calibration}: labels {unknown[:5]} are not classes of {data}")
        y_cal = np.array([index[int(c)] for c in y_file], dtype=np.int64)
        chosen = stratified_rows(y_cal, size, floor=floor, max_fraction=1.0, seed=seed)
        x_cal, reference_rows = x_file[chosen], None
        provenance |= {"calibration": calibration.name, "calibration_sha256": _sha256(calibration)}
    return _Split(
        reference=ReferenceSet.from_arrays({layer: x}, labels, rows=reference_rows),
        x_cal=np.asarray(x_cal, dtype=np.float32),
        class_names=[str(c) for c in classes],
        provenance={**provenance, "calibration_size": int(x_cal.shape[0])},
    )
