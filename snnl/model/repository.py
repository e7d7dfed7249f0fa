"""The model repository (SPEC §3): one folder a model, a validated manifest, checksummed files.

    <repository>/<name>/manifest.json            Manifest below (sorted keys, indent 2)
    <repository>/<name>/model.onnx               absent for an embedding-only model
    <repository>/<name>/reference.safetensors    labels + features.<layer>
    <repository>/<name>/calibration.safetensors  nonconformity + scores.<layer>

A folder is written atomically (a hidden temporary folder renamed into place) and loaded only when
every file listed in the manifest exists and matches its sha256. A repository is data, never code.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from snnl.errors import RepositoryError

_Data = TypeVar("_Data", bytes, mmap.mmap)

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
REFERENCE_FILE = "reference.safetensors"
CALIBRATION_FILE = "calibration.safetensors"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_SHA256_PATTERN = r"^[0-9a-f]{64}$"


class LayerSpec(BaseModel):
    """One served layer: its name (also the ONNX output name), width, distance, the served
    temperature, and the reference set's T* = argmin_T SNNL(T) and entanglement SNNL(T*)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    dim: int = Field(ge=1)
    distance: Literal["cosine", "euclidean"]
    temperature: float = Field(gt=0, allow_inf_nan=False)
    reference_size: int = Field(ge=1)
    optimal_temperature: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    entanglement: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class MassTerm(BaseModel):
    """One term of the neighbor-mass nonconformity: m of ``layer`` under ``distance`` at
    ``temperature``, standardized as (m - mean) / std."""

    model_config = ConfigDict(extra="forbid")

    layer: str = Field(min_length=1)
    distance: Literal["cosine", "euclidean"]
    temperature: float = Field(gt=0, allow_inf_nan=False)
    mean: float = Field(allow_inf_nan=False)
    std: float = Field(gt=0, allow_inf_nan=False)


class NeighborMass(BaseModel):
    """a(x) = -sum_terms (m_t(x) - mean_t) / std_t, m_t the soft-neighbor mass of the predicted
    class (snnl.scoring.neighbor_mass); temperatures by the perplexity rule at ``perplexity``."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["neighbor-mass"] = "neighbor-mass"
    perplexity: float = Field(gt=1, allow_inf_nan=False)
    terms: list[MassTerm] = Field(min_length=1)


class NegLogScore(BaseModel):
    """a(x) = sum_l -log max(s_l(x), 1e-12), SPEC §2's starting point (snnl.scoring.conformal)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["neg-log-score"] = "neg-log-score"


Nonconformity = Annotated[NeighborMass | NegLogScore, Field(discriminator="kind")]
NONCONFORMITY_KINDS: tuple[str, ...] = ("neighbor-mass", "neg-log-score")


class Manifest(BaseModel):
    """manifest.json. ``input_shape`` is None for an embedding-only model (no model.onnx).

    ``files`` maps each other file of the folder to its sha256; ``provenance`` is free-form JSON
    (training run, temperature rule, recorded test metrics). ``nonconformity`` says how a(x) is
    computed; a manifest without it uses SPEC §2's sum of -log s_l."""

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = 1
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(min_length=1, max_length=64)
    created: str = Field(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    input_shape: list[int] | None
    input_dtype: Literal["float32"] | None
    preprocessing: str
    class_names: list[str] = Field(min_length=2)
    layers: list[LayerSpec] = Field(min_length=1)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    neighbors: int = Field(default=50, ge=0)
    calibration_size: int = Field(ge=1)
    nonconformity: Nonconformity = Field(default_factory=NegLogScore)
    files: dict[str, str] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique, got {names}")
        if isinstance(self.nonconformity, NeighborMass):
            unknown = sorted({t.layer for t in self.nonconformity.terms} - set(names))
            if unknown:
                raise ValueError(f"nonconformity terms name layers {unknown} not served")
        if (self.input_shape is None) != (self.input_dtype is None):
            raise ValueError("input_shape and input_dtype are given together or not at all")
        if self.input_shape is not None and any(s < 1 for s in self.input_shape):
            raise ValueError(f"input_shape must be positive, got {self.input_shape}")
        allowed = {REFERENCE_FILE, CALIBRATION_FILE} | (
            set() if self.input_shape is None else {MODEL_FILE}
        )
        if self.files and set(self.files) != allowed:
            raise ValueError(f"files must be exactly {sorted(allowed)}, got {sorted(self.files)}")
        for file, digest in self.files.items():
            if not _matches(_SHA256_PATTERN, digest):
                raise ValueError(f"files[{file!r}] must be a sha256 hex digest")
        return self

    @property
    def embedding_only(self) -> bool:
        """True when clients send layer representations themselves (no model.onnx)."""
        return self.input_shape is None

    def to_json(self) -> str:
        """Deterministic JSON: sorted keys, indent 2, trailing newline."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def _matches(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern, value) is not None


def check_name(name: str) -> str:
    """``name`` if it is a valid model name (letters, digits, '.', '_', '-'); else an error."""
    if not _matches(NAME_PATTERN, name):
        raise RepositoryError(
            f"model name {name!r} is invalid: use letters, digits, '.', '_' and '-' (max 128)"
        )
    return name


def sha256(data: bytes | mmap.mmap) -> str:
    """Hex sha256 of ``data`` (bytes, or a memory-mapped file)."""
    return hashlib.sha256(data).hexdigest()


def write_model(repository: str | Path, manifest: Manifest, files: Mapping[str, bytes]) -> Manifest:
    """Write ``files`` and the manifest (with their sha256 filled in) to ``repository/<name>``.

    The folder is assembled in a hidden temporary folder and renamed into place, replacing a
    previous version; readers never see a half-written model. Returns the written manifest.
    """
    repository = Path(repository)
    name = check_name(manifest.name)
    final = manifest.model_copy(update={"files": {f: sha256(b) for f, b in sorted(files.items())}})
    final = Manifest.model_validate(final.model_dump())
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=repository))
    try:
        for file, data in files.items():
            (staging / file).write_bytes(data)
        (staging / MANIFEST_FILE).write_text(final.to_json())
        os.chmod(staging, 0o755)
        target = repository / name
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=repository))
            os.replace(target, retired / name)
            os.replace(staging, target)
            shutil.rmtree(retired)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return final


def list_models(repository: str | Path) -> list[str]:
    """Names of the folders of ``repository`` that hold a manifest.json, sorted."""
    repository = Path(repository)
    if not repository.is_dir():
        raise RepositoryError(f"model repository {str(repository)!r} is not a directory")
    return sorted(
        p.name
        for p in repository.iterdir()
        if not p.name.startswith(".") and (p / MANIFEST_FILE).is_file()
    )


def load_manifest(repository: str | Path, name: str) -> Manifest:
    """The validated manifest of ``repository/<name>``; RepositoryError names what is wrong."""
    folder = Path(repository) / check_name(name)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        available = list_models(repository) if Path(repository).is_dir() else []
        raise RepositoryError(
            f"no model {name!r} in repository {str(repository)!r} "
            f"(available: {', '.join(available) or 'none'})"
        )
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as err:
        lines = str(err).splitlines()
        raise RepositoryError(f"{path}: invalid manifest ({'; '.join(lines[:3])})") from err
    if manifest.name != name:
        raise RepositoryError(f"{path}: manifest name {manifest.name!r} != folder name {name!r}")
    if not manifest.files:
        raise RepositoryError(f"{path}: the manifest lists no files")
    return manifest


def read_model_files(
    repository: str | Path, name: str, *, skip: Collection[str] = ()
) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest and the bytes of every file it lists, each checked against its sha256.

    Files named in ``skip`` are left to the caller (``map_verified``: large files, mapped)."""
    manifest = load_manifest(repository, name)
    folder = Path(repository) / name
    contents = {
        file: read_verified(folder / file, digest)
        for file, digest in manifest.files.items()
        if file not in skip
    }
    return manifest, contents


def read_verified(path: Path, digest: str) -> bytes:
    """The bytes of ``path``; RepositoryError when it is missing or its sha256 is not ``digest``."""
    if not path.is_file():
        raise RepositoryError(f"{path}: missing (listed in {MANIFEST_FILE})")
    return _verified(path, path.read_bytes(), digest)


def map_verified(path: Path, digest: str) -> mmap.mmap:
    """``path`` memory-mapped copy-on-write (pages come from the page cache, shared with other
    processes mapping the file, and are never written back); the sha256 is computed over the map
    itself, so what was checked is what is used. RepositoryError as ``read_verified``."""
    if not path.is_file():
        raise RepositoryError(f"{path}: missing (listed in {MANIFEST_FILE})")
    with path.open("rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            raise RepositoryError(f"{path}: empty file")
        return _verified(path, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY), digest)


def _verified(path: Path, data: _Data, digest: str) -> _Data:
    if sha256(data) != digest:
        raise RepositoryError(
            f"{path}: sha256 does not match {MANIFEST_FILE} (file modified or corrupt)"
        )
    return data
