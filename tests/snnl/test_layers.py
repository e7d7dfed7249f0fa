"""The packages of snnl depend on each other in one direction only (read from the source with
``ast``, every import counted, also those inside functions and under TYPE_CHECKING):

    errors -> core, client -> training, scoring, monitoring -> model -> build, evaluation, sharding
    -> cli

A package imports only packages of a lower layer: never one of its own layer, never one above it
(so sharding builds a Detector around its scorer, and model never imports sharding). The library
never imports the web service or its frameworks. ``snnl/__init__.py`` (the lazy public API) may
name any package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SNNL = Path(__file__).resolve().parents[2] / "snnl"
LAYERS: dict[str, int] = {
    "errors": 0,
    "core": 1,
    "client": 1,
    "training": 2,
    "scoring": 2,
    "monitoring": 2,
    "model": 3,
    "build": 4,
    "evaluation": 4,
    "sharding": 4,
    "cli": 5,
}
FORBIDDEN = ("service", "fastapi", "uvicorn", "prometheus_client", "starlette")


def _package(path: Path) -> str:
    parts = path.relative_to(SNNL).parts
    return parts[0] if len(parts) > 1 else path.stem


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}: relative import (write snnl.<package>.<module>)")


SOURCES = sorted(p for p in SNNL.rglob("*.py") if p != SNNL / "__init__.py")


def test_every_package_has_a_layer() -> None:
    assert {_package(p) for p in SOURCES} == set(LAYERS)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SNNL)))
def test_imports_go_down_the_layers_only(path: Path) -> None:
    source = _package(path)
    for module in _imports(path):
        top, _, rest = module.partition(".")
        assert top not in FORBIDDEN, f"{path}: the library imports {module}"
        if top != "snnl" or not rest:
            continue
        target = rest.split(".")[0]
        if target == source:
            continue
        assert LAYERS[target] < LAYERS[source], (
            f"{path}: snnl.{source} (layer {LAYERS[source]}) imports {module} "
            f"(layer {LAYERS[target]}); imports must go to a lower layer"
        )
