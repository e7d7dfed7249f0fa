"""The model repository on disk: atomic writes, listing, checksum verification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from snnl.errors import RepositoryError
from snnl.model.manifest import CALIBRATION_FILE, REFERENCE_FILE
from snnl.model.store import (
    list_models,
    load_manifest,
    map_verified,
    read_model_files,
    sha256,
    write_model,
)
from tests.snnl.model._manifests import manifest as _manifest

FILES = {REFERENCE_FILE: b"reference bytes", CALIBRATION_FILE: b"calibration bytes"}


def test_write_list_and_read(tmp_path: Path) -> None:
    written = write_model(tmp_path, _manifest(), FILES)
    assert written.files == {name: sha256(data) for name, data in FILES.items()}
    assert list_models(tmp_path) == ["emb"]
    manifest, contents = read_model_files(tmp_path, "emb")
    assert manifest == written and contents == FILES
    text = (tmp_path / "emb" / "manifest.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def test_a_file_writer_writes_its_file_and_the_manifest_gets_its_sha256(tmp_path: Path) -> None:
    def write(path: Path) -> None:
        path.write_bytes(b"streamed reference")

    written = write_model(tmp_path, _manifest(), {**FILES, REFERENCE_FILE: write})
    assert written.files[REFERENCE_FILE] == sha256(b"streamed reference")
    manifest, contents = read_model_files(tmp_path, "emb")
    assert manifest == written and contents[REFERENCE_FILE] == b"streamed reference"


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
