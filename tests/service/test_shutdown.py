"""Graceful shutdown of a real ``snnl serve`` process under concurrent load.

SIGTERM: /readyz turns 503 while requests are still answered (the drain), then the socket closes,
every accepted request is finished and the process exits 0. Each request of the load either was
refused at connect or got its complete, correct answer; none is cut off mid-way.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from _server import start_server
from sklearn.datasets import load_digits

from snnl.model.detector import Detector

SCORE = "/v1/models/digits-mlp/score"
CLIENTS = 8


def test_sigterm_under_load_drains_finishes_every_accepted_request_and_exits_0(
    repository: Path, tmp_path: Path
) -> None:
    digits = load_digits().data.astype(np.float32)
    log = tmp_path / "server.log"
    # (kind, rows sent, answer, sent after SIGTERM); kind: answered | refused | cut
    outcomes: list[tuple[str, np.ndarray | None, object, bool]] = []
    terminated = threading.Event()
    with start_server(
        repository, log, shutdown_drain_s="2", shutdown_grace_s="20", max_batch_wait_ms="150",
        warmup_iterations="1",
    ) as server:  # fmt: skip

        def client(index: int) -> None:
            rng = np.random.default_rng(index)
            # A new connection per request: "refused at connect" is then what a client sees once
            # the socket is closed (a kept-alive connection would be closed between requests).
            limits = httpx.Limits(max_keepalive_connections=0)
            with httpx.Client(base_url=server.url, timeout=60, limits=limits) as http:
                while True:
                    start = int(rng.integers(0, len(digits) - 20))
                    x = digits[start : start + int(rng.integers(1, 20))]
                    after = terminated.is_set()
                    try:
                        response = http.post(SCORE, json={"inputs": x.tolist()})
                    except httpx.ConnectError:
                        outcomes.append(("refused", None, None, after))
                        return
                    except httpx.TransportError as err:
                        outcomes.append(("cut", x, repr(err), after))
                        return
                    outcomes.append(("answered", x, (response.status_code, response.text), after))

        with ThreadPoolExecutor(CLIENTS) as pool:
            running = [pool.submit(client, i) for i in range(CLIENTS)]
            deadline = time.monotonic() + 120
            while len(outcomes) < 4 * CLIENTS:
                assert time.monotonic() < deadline, "the load never got going"
                time.sleep(0.01)
            server.process.send_signal(signal.SIGTERM)
            terminated.set()
            ready = httpx.get(f"{server.url}/readyz")  # during the 2 s drain
            exit_code = server.process.wait(60)
            for future in running:
                future.result()
    assert ready.status_code == 503
    assert ready.json() == {"detail": "not ready: the service is shutting down"}
    assert exit_code == 0, log.read_text()[-2000:]
    kinds = Counter(kind for kind, *_ in outcomes)
    # Every score request the service received was answered, with 200, to its client: the log
    # has one "request" line per request the app read. A connection that the kernel queued
    # after the last accept() is reset when the listening socket closes, before the service
    # ever reads it (a client sees that as a reset, not as a refused connect): such a request
    # was never accepted, and it can only have been sent after SIGTERM.
    received = [
        line
        for line in map(json.loads, (t for t in log.read_text().splitlines() if t.startswith("{")))
        if line.get("message") == "request" and line.get("endpoint") == "score"
    ]
    assert all(line["status"] == 200 for line in received), received
    assert len(received) == kinds["answered"], (len(received), kinds)
    assert all(after for kind, _, _, after in outcomes if kind == "cut")
    assert kinds["refused"] + kinds["cut"] == CLIENTS  # every client ends refused or reset
    assert sum(1 for kind, _, _, after in outcomes if kind == "answered" and after) >= CLIENTS
    detector = Detector.load(repository, "digits-mlp", device="cpu", threads=1)
    for kind, x, answer, _ in outcomes:
        if kind == "answered":
            assert x is not None
            status, text = answer  # type: ignore[misc]
            assert status == 200, text
            assert httpx.Response(200, text=text).json()["results"] == (
                detector.score(x).to_records()
            )
    messages = log.read_text()
    assert "shutting down: readiness now 503" in messages
    assert "Finished server process" in messages


def test_sigint_skips_the_drain_and_exits_0(repository: Path, tmp_path: Path) -> None:
    """Ctrl-C: no drain (an operator is waiting), still a clean exit."""
    with start_server(
        repository, tmp_path / "log", shutdown_drain_s="600", warmup_iterations="1"
    ) as server:
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(60) == 0
