"""``snnl serve``: flags, one-line errors, and the default repository ./models."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.settings import Settings, setting_env, setting_flag
from snnl.cli import main

SNNL = str(Path(sys.executable).with_name("snnl"))
MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(autouse=True)
def no_snnl_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(setting_env(name), raising=False)


def test_help_lists_a_flag_per_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name in Settings.model_fields:
        assert setting_flag(name) in out
        assert setting_env(name) in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-batch-size", "0", "--repository", "."],
         "snnl serve: error: setting max_batch_size (--max-batch-size / SNNL_MAX_BATCH_SIZE): "
         "Input should be greater than or equal to 1"),
        (["--repository", "no/such/dir"],
         "snnl serve: error: setting model_repository (--repository / SNNL_MODEL_REPOSITORY): "
         "Value error, 'no/such/dir' is not a directory"),
        (["--repository", "."],
         "snnl serve: error: model repository '.' holds no model (no <name>/manifest.json)"),
    ],
)  # fmt: skip
def test_bad_settings_are_one_line_and_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["serve", *args]) == 2
    assert capsys.readouterr().err.strip() == message


def test_a_cuda_device_without_a_gpu_is_refused_at_start_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["serve", "--repository", str(MODELS), "--device", "cuda", "--port", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "snnl serve: error: device 'cuda' was asked for but torch sees no CUDA GPU"
    )


def test_serves_the_default_repository_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``snnl serve`` (a real process) in a folder with ./models serves it: the README's main
    command. It binds a free port itself (``--port 0``) and names it in its log."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=300)
    x = (rng.normal(size=(3, 8))[y] * 3 + rng.normal(size=(300, 8))).astype(np.float32)
    np.savez(tmp_path / "emb.npz", x=x, y=y)
    monkeypatch.chdir(tmp_path)
    assert main(["index", "emb.npz", "--repository", "models", "--name", "blobs"]) == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNNL_")}
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [SNNL, "serve", "--port", "0"], cwd=tmp_path, env=env,
            stdout=subprocess.DEVNULL, stderr=sink,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        url = None
        while True:
            assert process.poll() is None, log.read_text()
            listening = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+) ", log.read_text())
            url = listening and listening.group(1)
            try:
                if url and httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        models = httpx.get(f"{url}/v1/models").json()["models"]
        assert [m["name"] for m in models] == ["blobs"]
    finally:
        process.terminate()
        process.wait(30)
