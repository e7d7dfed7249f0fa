"""Helpers of the service tests: the CLI, blob embeddings, ``snnl serve`` processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

SNNL = str(Path(sys.executable).with_name("snnl"))
API_KEY = "test-key-0123456789abcdef"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
MAX_REQUEST_BYTES = 1_000_000


def run_cli(*args: str | Path) -> None:
    """Run ``snnl ARGS``; fail the test setup with its stderr if it fails."""
    done = subprocess.run([SNNL, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"snnl {' '.join(map(str, args))}: {done.stderr[-2000:]}"


def blob_embeddings(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n points (n, 16) float32 around 4 class centers, labels (n,)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(4, 16)) * 3.0
    y = rng.integers(0, 4, size=n)
    return (centers[y] + rng.normal(size=(n, 16))).astype(np.float32), y


_LISTENING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+) ")


@dataclass
class Server:
    """A running ``snnl serve`` process (``url`` is empty until it listens)."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60.0, **kwargs)  # type: ignore[arg-type]

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()


def wait_until(check: object, timeout: float, what: str, server: Server) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(
                f"server exited ({server.process.returncode}) {server.log.read_text()[-3000:]}"
            )
        try:
            if check():  # type: ignore[operator]
                return
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"server not {what} after {timeout} s: {server.log.read_text()[-3000:]}")


@contextmanager
def start_server(
    repo: Path, log: Path, wait_ready: bool = True, **settings: str
) -> Iterator[Server]:
    """``snnl serve --repository REPO --port 0`` with SNNL_* settings; stopped on exit.

    The server binds a free port itself (no race with other processes for a port picked here)
    and names it in its start-up log line. Waits until it answers HTTP, and with ``wait_ready``
    until ``/readyz`` is 200.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNNL_")}
    env.update({f"SNNL_{k.upper()}": v for k, v in settings.items()})
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [SNNL, "serve", "--repository", str(repo), "--port", "0"],
            stdout=sink, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    server = Server("", process, log)
    try:
        wait_until(lambda: _listening(server), 120, "listening", server)
        wait_until(lambda: httpx.get(f"{server.url}/healthz"), 120, "answering", server)
        if wait_ready:
            wait_until(
                lambda: httpx.get(f"{server.url}/readyz").status_code == 200, 300, "ready", server
            )
        yield server
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _listening(server: Server) -> bool:
    """True once the log names the bound address; sets ``server.url``."""
    found = _LISTENING.search(server.log.read_text())
    if found is not None:
        server.url = found.group(1)
    return found is not None
