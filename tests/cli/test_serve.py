"""``snnl serve``: flags, one-line errors, and the default repository ./models."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

SNNL = str(Path(sys.executable).with_name("snnl"))


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNNL_")}
    return subprocess.run(
        [SNNL, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def test_help_lists_a_flag_per_setting() -> None:
    from service.settings import Settings, setting_env, setting_flag

    done = run("serve", "--help")
    assert done.returncode == 0
    for name in Settings.model_fields:
        assert setting_flag(name) in done.stdout
        assert setting_env(name) in done.stdout


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
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = run("serve", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == message


def test_serves_the_default_repository_models(tmp_path: Path) -> None:
    """``snnl serve`` in a folder with ./models serves it: the README's main command."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=300)
    x = (rng.normal(size=(3, 8))[y] * 3 + rng.normal(size=(300, 8))).astype(np.float32)
    np.savez(tmp_path / "emb.npz", x=x, y=y)
    done = run("index", "emb.npz", "--repository", "models", "--name", "blobs", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNNL_")}
    process = subprocess.Popen(
        [SNNL, "serve", "--port", str(port)], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.05)
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["models"]
        assert [m["name"] for m in models] == ["blobs"]
    finally:
        process.terminate()
        process.wait(30)
