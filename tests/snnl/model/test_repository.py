"""The model repository: manifest validation, atomic writes, listing, checksum verification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from snnl.errors import RepositoryError
from snnl.model.manifest import CALIBRATION_FILE, REFERENCE_FILE, LayerSpec, Manifest
from snnl.model.store import (
    list_models,
    load_manifest,
    map_verified,
    read_model_files,
    sha256,
    write_model,
)


def _manifest(name: str = "emb", **changes: object) -> Manifest:
    fields = {
        "name": name,
        "version": "1",
        "created": "2024-01-01T00:00:00Z",
        "input_shape": None,
        "input_dtype": None,
        "preprocessing": "none",
        "class_names": ["a", "b"],
        "layers": [
            LayerSpec(
                name="embedding", dim=4, distance="cosine", temperature=0.1, reference_size=10
            )
        ],
        "calibration_size": 5,
    }
    fields.update(changes)
    return Manifest.model_validate(fields)


FILES = {REFERENCE_FILE: b"reference bytes", CALIBRATION_FILE: b"calibration bytes"}


def test_write_list_and_read(tmp_path: Path) -> None:
    written = write_model(tmp_path, _manifest(), FILES)
    assert written.files == {name: sha256(data) for name, data in FILES.items()}
    assert list_models(tmp_path) == ["emb"]
    manifest, contents = read_model_files(tmp_path, "emb")
    assert manifest == written and contents == FILES
    text = (tmp_path / "emb" / "manifest.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def test_rewrite_replaces_atomically_and_leaves_nothing_behind(tmp_path: Path) -> None:
    write_model(tmp_path, _manifest(), FILES)
    write_model(tmp_path, _manifest(version="2"), {**FILES, REFERENCE_FILE: b"new"})
    manifest, contents = read_model_files(tmp_path, "emb")
    assert manifest.version == "2" and contents[REFERENCE_FILE] == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb"]


def test_tampered_and_missing_files_are_refused(tmp_path: Path) -> None:
    write_model(tmp_path, _manifest(), FILES)
    (tmp_path / "emb" / REFERENCE_FILE).write_bytes(b"reference bytez")
    with pytest.raises(RepositoryError, match=r"reference\.safetensors: sha256 does not match"):
        read_model_files(tmp_path, "emb")
    (tmp_path / "emb" / CALIBRATION_FILE).unlink()
    (tmp_path / "emb" / REFERENCE_FILE).write_bytes(FILES[REFERENCE_FILE])
    with pytest.raises(RepositoryError, match=r"calibration\.safetensors: missing"):
        read_model_files(tmp_path, "emb")


def test_mapped_files_are_verified_over_the_map(tmp_path: Path) -> None:
    write_model(tmp_path, _manifest(), FILES)
    manifest, contents = read_model_files(tmp_path, "emb", skip=(REFERENCE_FILE,))
    assert set(contents) == {CALIBRATION_FILE}
    path = tmp_path / "emb" / REFERENCE_FILE
    assert map_verified(path, manifest.files[REFERENCE_FILE])[:] == FILES[REFERENCE_FILE]
    path.write_bytes(b"reference bytez")
    with pytest.raises(RepositoryError, match=r"reference\.safetensors: sha256 does not match"):
        map_verified(path, manifest.files[REFERENCE_FILE])
    path.write_bytes(b"")
    with pytest.raises(RepositoryError, match=r"reference\.safetensors: empty file"):
        map_verified(path, manifest.files[REFERENCE_FILE])
    path.unlink()
    with pytest.raises(RepositoryError, match=r"reference\.safetensors: missing"):
        map_verified(path, manifest.files[REFERENCE_FILE])


def test_bad_manifests_and_names(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match=r"no model 'nope'.*available: none"):
        load_manifest(tmp_path, "nope")
    with pytest.raises(RepositoryError, match="is invalid"):
        load_manifest(tmp_path, "../etc")
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"name": "broken"}')
    with pytest.raises(RepositoryError, match="invalid manifest"):
        load_manifest(tmp_path, "broken")
    write_model(tmp_path, _manifest(), FILES)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text(
        (tmp_path / "emb" / "manifest.json").read_text()
    )
    with pytest.raises(RepositoryError, match="!= folder name"):
        load_manifest(tmp_path, "other")
    with pytest.raises(RepositoryError, match="not a directory"):
        list_models(tmp_path / "absent")


def test_manifest_validation() -> None:
    with pytest.raises(ValueError, match="unique"):
        layer = LayerSpec(name="h", dim=2, distance="cosine", temperature=1.0, reference_size=3)
        _manifest(layers=[layer, layer])
    with pytest.raises(ValueError, match="together"):
        _manifest(input_shape=[64])
    with pytest.raises(ValueError, match="files must be exactly"):
        _manifest(files={REFERENCE_FILE: "0" * 64})
    with pytest.raises(ValueError, match="sha256"):
        _manifest(files={REFERENCE_FILE: "x", CALIBRATION_FILE: "0" * 64})
    with pytest.raises(ValueError):
        _manifest(created="yesterday")
    assert (
        _manifest().embedding_only
        and not _manifest(input_shape=[8, 8], input_dtype="float32").embedding_only
    )


def test_nonconformity_section() -> None:
    assert _manifest().nonconformity.kind == "neg-log-score"  # manifests written before it
    term = {"layer": "embedding", "distance": "euclidean", "temperature": 2.0, "mean": -1.5}
    mass = {"kind": "neighbor-mass", "perplexity": 30, "terms": [{**term, "std": 0.5}]}
    manifest = _manifest(nonconformity=mass)
    assert manifest.nonconformity.kind == "neighbor-mass"
    assert Manifest.model_validate_json(manifest.to_json()) == manifest
    with pytest.raises(ValueError, match="not served"):
        _manifest(nonconformity={**mass, "terms": [{**term, "std": 0.5, "layer": "fc9"}]})
    with pytest.raises(ValueError, match="std"):
        _manifest(nonconformity={**mass, "terms": [{**term, "std": 0.0}]})
    with pytest.raises(ValueError, match="terms"):
        _manifest(nonconformity={**mass, "terms": []})
    with pytest.raises(ValueError):
        _manifest(nonconformity={"kind": "mystery"})
