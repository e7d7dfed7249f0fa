"""The verified model store: a repository is one folder a model, each written atomically and read
only when every file the manifest lists exists and matches its sha256.

A folder is written atomically (a hidden temporary folder renamed into place). A repository is
data, never code. The manifest schema and the file names: snnl.model.manifest.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from pydantic import ValidationError

from snnl.errors import RepositoryError
from snnl.model.manifest import MANIFEST_FILE, Manifest, check_name


def sha256(data: bytes | mmap.mmap) -> str:
    """Hex sha256 of ``data`` (bytes, or a memory-mapped file)."""
    return hashlib.sha256(data).hexdigest()


FileWriter = Callable[[Path], None]
"""Writes one model file at the path it is given (a file too large to hold as bytes)."""


def write_model(
    repository: str | Path, manifest: Manifest, files: Mapping[str, bytes | FileWriter]
) -> Manifest:
    """Write ``files`` (their bytes, or a ``FileWriter`` that writes the file) and the manifest
    (with their sha256 filled in) to ``repository/<name>``.

    The folder is assembled in a hidden temporary folder and renamed into place, replacing a
    previous version; readers never see a half-written model. A written file's sha256 is read
    back from disk in blocks (``file_sha256``). Returns the written manifest.
    """
    repository = Path(repository)
    name = check_name(manifest.name)
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=repository))
    try:
        digests = {file: _write(staging / file, data) for file, data in sorted(files.items())}
        final = manifest.model_copy(update={"files": digests})
        final = Manifest.model_validate(final.model_dump())
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


def _write(path: Path, data: bytes | FileWriter) -> str:
    """Write ``data`` (bytes, or a FileWriter) to ``path``; its sha256."""
    if isinstance(data, bytes):
        path.write_bytes(data)
        return sha256(data)
    data(path)
    return file_sha256(path)


def list_models(repository: str | Path) -> list[str]:
    """Names of the folders of ``repository`` that hold a manifest.json, sorted.

    A folder whose manifest cannot even be looked at (no permission, a symlink loop) is listed
    too, so that loading it fails with the reason instead of the model silently vanishing.
    """
    repository = Path(repository)
    if not repository.is_dir():
        raise RepositoryError(f"model repository {str(repository)!r} is not a directory")
    return sorted(
        p.name for p in repository.iterdir() if not p.name.startswith(".") and _has_manifest(p)
    )


def _has_manifest(folder: Path) -> bool:
    """True when ``folder/manifest.json`` is a file, or cannot be looked at."""
    return (folder / MANIFEST_FILE).is_file() or _unreadable(folder / MANIFEST_FILE)


def manifest_fingerprint(repository: str | Path, name: str) -> str | None:
    """sha256 of ``repository/<name>/manifest.json``, None when it cannot be read.

    The manifest holds the sha256 of every other file, so a changed fingerprint means a changed
    model (a folder written by :func:`write_model` changes in one rename).
    """
    try:
        return sha256((Path(repository) / name / MANIFEST_FILE).read_bytes())
    except OSError:
        return None


def load_manifest(repository: str | Path, name: str) -> Manifest:
    """The validated manifest of ``repository/<name>``; RepositoryError names what is wrong."""
    folder = Path(repository) / check_name(name)
    path = folder / MANIFEST_FILE
    if not path.is_file() and not _unreadable(path):
        available = list_models(repository) if Path(repository).is_dir() else []
        raise RepositoryError(
            f"no model {name!r} in repository {str(repository)!r} "
            f"(available: {', '.join(available) or 'none'})"
        )
    try:
        manifest = Manifest.model_validate(json.loads(_read(path)))
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
    if not path.is_file() and not _unreadable(path):
        raise RepositoryError(f"{path}: missing (listed in {MANIFEST_FILE})")
    data = _read(path)
    if sha256(data) != digest:
        raise _modified(path)
    return data


def _unreadable(path: Path) -> bool:
    """True when looking at ``path`` fails for another reason than its absence."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return False


def _read(path: Path) -> bytes:
    """The bytes of ``path``; RepositoryError naming the file and the reason when unreadable."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise RepositoryError(f"{path}: cannot be read ({err.strerror or err})") from err


def file_sha256(path: Path, block: int = 1 << 24) -> str:
    """Hex sha256 of the file at ``path``, read in ``block``-byte reads: memory stays O(block)
    whatever the file's size."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path, digest: str, block: int = 1 << 24) -> None:
    """As ``read_verified``, streaming the file (``file_sha256``): memory stays O(block)
    whatever the file's size (a reference too large for one machine's memory)."""
    if not path.is_file():
        raise RepositoryError(f"{path}: missing (listed in {MANIFEST_FILE})")
    if file_sha256(path, block) != digest:
        raise _modified(path)


def _modified(path: Path) -> RepositoryError:
    return RepositoryError(
        f"{path}: sha256 does not match {MANIFEST_FILE} (file modified or corrupt)"
    )


def map_verified(path: Path, digest: str) -> mmap.mmap:
    """``path`` memory-mapped copy-on-write (pages come from the page cache, shared with other
    processes mapping the file, and are never written back); the sha256 is computed over the map
    itself, so what was checked is what is used. RepositoryError as ``read_verified``."""
    if not path.is_file() and not _unreadable(path):
        raise RepositoryError(f"{path}: missing (listed in {MANIFEST_FILE})")
    try:
        with path.open("rb") as file:
            if os.fstat(file.fileno()).st_size == 0:
                raise RepositoryError(f"{path}: empty file")
            data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
    except OSError as err:
        raise RepositoryError(f"{path}: cannot be read ({err.strerror or err})") from err
    if sha256(data) != digest:
        raise _modified(path)
    return data
