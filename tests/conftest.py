"""Shared test setup: one torch thread (the machine is small and shared), small fixtures."""

from __future__ import annotations

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
