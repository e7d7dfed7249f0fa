"""The HTTP service: FastAPI app, dynamic batching, Prometheus metrics (docs/service.md)."""

from __future__ import annotations

from service.app import create_app, run
from service.settings import Settings

__all__ = ["Settings", "create_app", "run"]
