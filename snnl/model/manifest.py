"""The manifest of a served model: its schema (pydantic, validated on load and on write) and
the names of the files of a model folder.

    <repository>/<name>/manifest.json            Manifest below (sorted keys, indent 2)
    <repository>/<name>/model.onnx               ONNX_FILE; absent for an embedding-only model
    <repository>/<name>/reference.safetensors    labels + features.<layer>
    <repository>/<name>/calibration.safetensors  nonconformity + scores.<layer> + predicted

The nonconformity section is one of the plain scoring dataclasses of snnl.scoring.nonconformity,
validated here by their own checks. Reading and writing folders: snnl.model.store.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from snnl.errors import RepositoryError
from snnl.scoring.guarantees import Guarantee
from snnl.scoring.nonconformity import NegLogScore, NeighborMass

MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
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


Nonconformity = Annotated[NeighborMass | NegLogScore, Field(discriminator="kind")]


class Manifest(BaseModel):
    """manifest.json. ``input_shape`` is None for an embedding-only model (no model.onnx).

    ``files`` maps each other file of the folder to its sha256; ``provenance`` is free-form JSON
    (training run, temperature rule, recorded test metrics). ``nonconformity`` says how a(x) is
    computed; a manifest without it uses the sum of -log s_l (``NegLogScore``). ``alpha``,
    ``guarantee`` and ``delta`` are the flag's default rule (snnl.scoring.guarantees; ``delta``
    None: 0.1 for "pac"); a request may override each."""

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
    guarantee: Guarantee = "marginal"
    delta: float | None = Field(default=None, gt=0, lt=1)
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
            set() if self.input_shape is None else {ONNX_FILE}
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
