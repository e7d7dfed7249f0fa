"""Helpers that copy, change and damage models of a real repository (tests of the service)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from snnl.model.manifest import MANIFEST_FILE
from snnl.model.store import sha256

Manifest = dict[str, Any]


def clone(
    source: Path,
    target: Path,
    *,
    files: dict[str, bytes] | None = None,
    change: Callable[[Manifest], None] | None = None,
    seal: bool = True,
) -> Path:
    """Copy the model folder ``source`` to ``target`` (the model takes the folder's name), replace
    ``files``, let ``change`` edit the manifest, and with ``seal`` record the files' sha256 (a
    model that only its checksums would refuse needs ``seal``)."""
    shutil.copytree(source, target)
    for name, data in (files or {}).items():
        (target / name).write_bytes(data)
    manifest = json.loads((target / MANIFEST_FILE).read_text())
    manifest["name"] = target.name
    if change is not None:
        change(manifest)
    if seal:
        manifest["files"] = {
            name: sha256((target / name).read_bytes()) for name in manifest["files"]
        }
    (target / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return target


class Payload:
    """Unpickling this runs ``open(marker, "w")``: proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def pickled_payload(marker: Path) -> bytes:
    """A pickle (as torch.save writes it) that creates ``marker`` when loaded."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"labels": Payload(marker)}, buffer)
    return buffer.getvalue()
