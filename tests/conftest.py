"""Shared test setup: one torch thread (the machine is small and shared), small fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory of ``snnl train`` (all ten digits classes, MLP, factor 1, learned T,
    5 epochs, seed 0): config.json, model.safetensors, split.npz, history.jsonl, entanglement.png.
    Read-only for tests: copy it before changing anything."""
    from snnl.training.loop import TrainSettings, train

    out = tmp_path_factory.mktemp("digits_run") / "run"
    train(TrainSettings(dataset="digits", epochs=5, seed=0), out)
    return out


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """One local Ray cluster for the whole session (started by the first test that asks): 16
    logical CPUs (a CPU shard reserves one, and the tests hold a few sharded models at once; they
    run on this machine's cores), a small object store, no dashboard. Yields its address, for
    processes that join it (``snnl serve --ray-address``)."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_worker_niceness", "0")  # shards at the tests' priority
    ray.init(
        num_cpus=16,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        log_to_driver=False,
        namespace="snnl",
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
