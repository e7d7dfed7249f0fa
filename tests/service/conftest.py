"""A real model repository and real ``snnl serve`` processes on free loopback ports.

The repository is built with the CLI, as a user would: ``snnl train`` + ``snnl export`` give the
``digits-mlp`` model (ONNX), ``snnl index`` the embedding-only ``blobs`` model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _server import API_KEY, MAX_REQUEST_BYTES, Server, blob_embeddings, run_cli, start_server


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/: ``digits-mlp`` (MLP on digits, 3 epochs) and ``blobs`` (embedding-only, 16-d)."""
    root = tmp_path_factory.mktemp("service")
    repo = root / "models"
    run_cli("train", "--data", "digits", "--epochs", "3", "--seed", "0", "--out", root / "run")
    run_cli("export", root / "run", "--repository", repo, "--name", "digits-mlp", "--device", "cpu")
    x, y = blob_embeddings(800, seed=0)
    np.savez(root / "blobs.npz", x=x, y=y)
    run_cli("index", root / "blobs.npz", "--repository", repo, "--name", "blobs", "--device", "cpu")
    return repo


@pytest.fixture(scope="session")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The main server: API key, max batch 128, queue 2048 samples, 1 MB bodies."""
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with start_server(
        repository, log,
        api_keys=API_KEY, max_batch_size="128", max_batch_wait_ms="5", max_queue="2048",
        max_request_bytes=str(MAX_REQUEST_BYTES), request_timeout_s="60", log_level="INFO",
    ) as running:  # fmt: skip
        yield running
