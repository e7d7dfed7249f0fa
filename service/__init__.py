"""The HTTP service: FastAPI app, dynamic batching, Prometheus metrics (docs/service.md).

The public names are imported on first use (PEP 562), so importing ``service.cli`` (what
``snnl --help`` does through the entry point) does not load FastAPI, torch or the app.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_PUBLIC: dict[str, str] = {
    "Settings": "service.settings",
    "create_app": "service.app",
    "run": "service.app",
}

__all__ = ["Settings", "create_app", "run"]

if TYPE_CHECKING:
    from service.app import create_app, run
    from service.settings import Settings


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'service' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value
