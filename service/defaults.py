"""The default of every service setting, in plain Python: ``service.settings.Settings`` takes its
defaults from here, and ``snnl serve --help`` shows them without importing pydantic (so that
``snnl --help`` stays fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = {
    "model_repository": Path("models"),
    "device": "auto",
    "max_batch_size": 128,
    "max_batch_wait_ms": 2.0,
    "max_queue": 4096,
    "max_request_bytes": 16 * 1024 * 1024,
    "request_timeout_s": 30.0,
    "api_keys": (),
    "api_keys_file": None,
    "shutdown_drain_s": 5.0,
    "shutdown_grace_s": 20.0,
    "repository_poll_s": 0.0,
    "log_level": "INFO",
    "host": "127.0.0.1",
    "port": 8000,
    "workers": 1,
    "scoring_threads": 1,
    "warmup_iterations": 2,
    "shards": 0,
    "compute_dtype": "float32",
    "ray_address": None,
    "gzip_min_bytes": 1024,
    "cors_origins": (),
    "drift_enabled": True,
    "drift_ert": 1_000_000.0,
    "drift_calibration_risk": 0.001,
    "drift_levels": (0.0001, 0.001, 0.01, 0.05, 0.2),
    "drift_shifts": (0.01, 0.05, 0.25),
}
