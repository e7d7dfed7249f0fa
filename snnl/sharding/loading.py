"""Loading a model of the repository with its reference rows sharded over Ray actors.

    det = load_sharded_detector("models", "digits-mlp", shards=4)   # a snnl.Detector

The driver (the process that runs the forward pass and the calibration) verifies every file's
sha256 as an unsharded load does, streaming the reference file so that it never holds it, and
keeps only the reference's outline (shapes on the "meta" device) and its labels. The rows are
read by the shard actors, each only its own (snnl.sharding.rows), after checking that the file is
still the one verified (size and modification time).
"""

from __future__ import annotations

from pathlib import Path

import torch

from snnl.errors import InputError, RepositoryError
from snnl.model.detector import ComputeDtype, Detector, check_compute_dtype
from snnl.model.manifest import REFERENCE_FILE, Manifest
from snnl.model.reference import ReferenceSet
from snnl.model.runtime import resolve_device
from snnl.model.store import load_manifest, read_verified, verify_file
from snnl.sharding.actor import ScorerSettings, ShardSpec
from snnl.sharding.cluster import connect, start_shards
from snnl.sharding.rows import FileStamp, reference_outline, shard_bounds
from snnl.sharding.scorer import DEFAULT_TIMEOUT_S, ShardedScorer

LOAD_TIMEOUT_S = 600.0


def load_sharded_detector(
    repository: str | Path,
    name: str,
    *,
    shards: int,
    ray_address: str | None = None,
    device: str = "auto",
    threads: int | None = None,
    chunk_size: int | None = None,
    compute_dtype: ComputeDtype = "float32",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    load_timeout_s: float = LOAD_TIMEOUT_S,
) -> Detector:
    """``Detector.load`` with every layer's reference rows split into ``shards`` shards held by
    Ray actors at ``ray_address`` (None: a private local cluster, or the one in ``RAY_ADDRESS``;
    "auto" or "ray://host:10001": a running one); the scores are the same as unsharded.

    This process verifies ``repository/<name>``, runs the forward pass and the calibration; the
    shards run on GPUs ("cuda", one GPU each) when ``device`` is not "cpu" and the cluster has
    GPUs, else on CPUs. ``threads``, ``chunk_size``, ``compute_dtype``: as for
    ``Detector.load``. InputError for a bad ``shards``; RepositoryError for a missing, tampered
    or malformed file; UnavailableError when a shard cannot be placed or loaded within
    ``load_timeout_s``.
    """
    dtype = check_compute_dtype(compute_dtype)
    target = resolve_device(device)
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise InputError(f"shards: expected an integer >= 1, got {shards!r}")
    manifest = load_manifest(repository, name)
    folder = Path(repository) / name
    files = {
        file: read_verified(folder / file, digest)
        for file, digest in manifest.files.items()
        if file != REFERENCE_FILE
    }
    path = folder / REFERENCE_FILE
    stamp = FileStamp.of(path) if path.is_file() else None
    verify_file(path, manifest.files[REFERENCE_FILE])
    if stamp is None or FileStamp.of(path) != stamp:
        raise RepositoryError(f"{path}: changed while it was being verified")
    layers = [layer.name for layer in manifest.layers]
    features, labels = reference_outline(path, layers)
    try:
        reference = ReferenceSet(features, labels)
    except ValueError as err:
        raise RepositoryError(f"{path}: {err}") from err
    if shards > reference.size:
        raise InputError(f"shards: expected at most {reference.size} (the reference rows)")
    shared = connect(ray_address, shards)
    specs = [
        ShardSpec(
            path=str(path.resolve()),
            stamp=stamp,
            index=i,
            count=shards,
            start=start,
            stop=stop,
            device=_shard_device(device),
            settings=_settings(manifest, chunk_size, dtype),
        )
        for i, (start, stop) in enumerate(shard_bounds(reference.size, shards))
    ]
    actors = start_shards(specs, shared=shared, timeout_s=load_timeout_s)
    return Detector.from_files(
        folder,
        manifest,
        files,
        reference,
        device=target,
        threads=threads,
        chunk_size=chunk_size,
        compute_dtype=compute_dtype,
        scorer=ShardedScorer(actors, specs, timeout_s=timeout_s),
    )


def _settings(
    manifest: Manifest, chunk_size: int | None, compute_dtype: torch.dtype | None
) -> ScorerSettings:
    return ScorerSettings(
        layers=tuple(layer.name for layer in manifest.layers),
        num_classes=len(manifest.class_names),
        temperatures=tuple(layer.temperature for layer in manifest.layers),
        distances=tuple(layer.distance for layer in manifest.layers),
        mass_terms=manifest.nonconformity.mass_terms,
        chunk_size=chunk_size,
        compute_dtype=compute_dtype,
    )


def _shard_device(device: str) -> str:
    """ "cuda" when the shards may use GPUs and the cluster has some, else "cpu"."""
    import ray

    if device == "cpu":
        return "cpu"
    gpus = ray.cluster_resources().get("GPU", 0.0)
    if device == "cuda" and gpus < 1:
        raise InputError("device 'cuda' was asked for but the Ray cluster has no GPU")
    return "cuda" if gpus >= 1 else "cpu"
