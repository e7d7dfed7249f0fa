"""``snnl index``: an embedding-only model from embeddings a user already has.

An ``.npz`` with ``x`` (N, d) and integer labels ``y`` (N,) is split, stratified and seeded, into
a reference part and a calibration part (``calibration_fraction`` of the rows); the layer's
temperature comes from the reference part (snnl.scoring.temperature_rule). Clients then send the
same encoder's embeddings to ``Detector.score_embeddings({layer: (B, d)})``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from snnl.build.assemble import DEFAULT_NONCONFORMITY, ModelRecipe, build_model
from snnl.core.distances import Distance
from snnl.errors import InputError
from snnl.model.manifest import Manifest
from snnl.model.reference import ReferenceSet, StorageDtype
from snnl.scoring.neighbor_mass import GEOMETRIES
from snnl.scoring.temperature_rule import DEFAULT_RULE
from snnl.training.data import read_npz

DEFAULT_LAYER = "embedding"


def index_embeddings(
    data: str | Path,
    repository: str | Path,
    name: str,
    *,
    layer: str = DEFAULT_LAYER,
    distance: Distance = "cosine",
    calibration_fraction: float = 0.15,
    temperature_rule: str = DEFAULT_RULE,
    nonconformity: str = DEFAULT_NONCONFORMITY,
    mass_geometries: Sequence[Distance] = GEOMETRIES,
    reference_dtype: StorageDtype = "float32",
    version: str = "1",
    created: str | None = None,
    seed: int = 0,
    device: str = "auto",
) -> Manifest:
    """Build ``repository/<name>`` from the embeddings file ``data``; returns its manifest."""
    data = Path(data)
    x, y = read_npz(data)
    assert y is not None
    if x.ndim != 2:
        raise InputError(f"{data}: 'x' must be embeddings (N, d), got shape {x.shape}")
    if not 0.0 < calibration_fraction < 1.0:
        raise InputError(f"calibration_fraction must be in (0, 1), got {calibration_fraction}")
    classes, labels = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise InputError(f"{data}: 'y' must hold at least 2 classes, got {classes.tolist()}")
    try:
        reference_rows, calibration_rows = train_test_split(
            np.arange(len(labels)),
            test_size=calibration_fraction,
            random_state=seed,
            stratify=labels,
        )
    except ValueError as err:
        raise InputError(f"{data}: cannot split into reference and calibration: {err}") from err
    reference_rows, calibration_rows = np.sort(reference_rows), np.sort(calibration_rows)
    recipe = ModelRecipe(
        name=name,
        version=version,
        created=created,
        class_names=[str(c) for c in classes],
        distance=distance,
        temperature_rule=temperature_rule,
        nonconformity=nonconformity,
        mass_geometries=tuple(mass_geometries),
        reference_dtype=reference_dtype,
        provenance={
            "source": data.name,
            "source_sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
            "calibration_fraction": calibration_fraction,
            "seed": seed,
        },
    )
    return build_model(
        repository,
        recipe,
        reference=ReferenceSet.from_arrays({layer: x[reference_rows]}, labels[reference_rows]),
        calibration_inputs={layer: x[calibration_rows]},
        device=device,
        seed=seed,
    )
