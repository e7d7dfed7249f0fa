"""CPU time the service spends per 1-sample JSON score request, without HTTP or a load generator.

    .venv/bin/python -m bench.hot_path [--concurrency 64] [--requests 3000] [--rounds 4]
        [--baseline /path/to/other/checkout]

Drives the app's ASGI callable in this process (lifespan, middleware, routing, parsing,
batching, scoring thread, metrics, the JSON answer; no sockets, no uvicorn) with ``--concurrency``
requests in flight, and reports requests/s, the event loop's CPU time per request and the whole
process's (event loop + scoring thread). CPU time per request hardly depends on other load on
the machine, so it compares code where requests/s cannot. ``--baseline DIR`` runs the same
measurement on another checkout (its packages on ``PYTHONPATH``, in a subprocess) alternately
with this one, ``--rounds`` times each, and prints the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sklearn.datasets import load_digits

from service.app import create_app
from service.settings import Settings

PATH = "/v1/models/digits-mlp/score"
ROOT = Path(__file__).resolve().parents[1]


async def request(app: Any, body: bytes, *, path: str = PATH, method: str = "POST") -> int:
    """One request of ``body`` through the ASGI app; its status code."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    status = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


async def measure(concurrency: int, total: int) -> dict[str, float]:
    """Requests/s and CPU microseconds per request (event loop; process) over ``total``."""
    body = json.dumps({"inputs": load_digits().data[:1].tolist()}).encode()
    app = create_app(Settings(log_level="WARNING"))
    async with app.router.lifespan_context(app):
        while await request(app, b"", path="/readyz", method="GET") != 200:
            await asyncio.sleep(0.05)
        limit = asyncio.Semaphore(concurrency)

        async def bounded() -> None:
            async with limit:
                status = await request(app, body)
                assert status == 200, status

        await asyncio.gather(*(bounded() for _ in range(min(total, 500))))  # warm-up
        wall, loop, process = time.perf_counter(), time.thread_time(), time.process_time()
        await asyncio.gather(*(bounded() for _ in range(total)))
        wall = time.perf_counter() - wall
        loop, process = time.thread_time() - loop, time.process_time() - process
    return {
        "rate": total / wall,
        "loop_us": 1e6 * loop / total,
        "process_us": 1e6 * process / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hot_path", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once:
        print(json.dumps(asyncio.run(measure(args.concurrency, args.requests))))
        return
    # Imported here: the --once process above runs this file by path against either checkout.
    from bench.load import code_under_test

    checkouts = code_under_test(args.baseline)
    runs: dict[str, list[dict[str, float]]] = {code: [] for code, _, _ in checkouts}
    for _ in range(args.rounds):
        for code, path, _ in checkouts:
            # this file by path: sys.path[0] is bench/, so snnl and service come from PYTHONPATH
            env = {**os.environ, "PYTHONPATH": str(path if path is not None else ROOT)}
            out = subprocess.run(
                [sys.executable, __file__, "--once", "--concurrency", str(args.concurrency),
                 "--requests", str(args.requests)],
                capture_output=True, text=True, check=True, env=env,
            ).stdout  # fmt: skip
            runs[code].append(json.loads(out.splitlines()[-1]))
    print(f"load average {os.getloadavg()[0]:.2f}; medians of {args.rounds} runs, concurrency "
          f"{args.concurrency}, {args.requests} requests each")  # fmt: skip
    for code, results in runs.items():
        m = {key: statistics.median(r[key] for r in results) for key in results[0]}
        print(f"{code}: {m['rate']:.0f} req/s, event loop {m['loop_us']:.0f} us/request, "
              f"process {m['process_us']:.0f} us/request")  # fmt: skip


if __name__ == "__main__":
    main()
