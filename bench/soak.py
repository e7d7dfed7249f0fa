"""Soak test of ``snnl serve``: minutes at ~80% of the measured capacity, every answer checked.

    .venv/bin/python -m bench.soak [--repository models] [--model digits-mlp] [--minutes 3]

Starts ``snnl serve`` on a free port (bench/load.py's ``start``), then:

1. capacity: a closed loop of ``--concurrency`` clients sending the request mix as fast as they
   can for ``--probe`` seconds gives the requests/s this machine sustains;
2. soak: an open loop sends the same mix at ``--load`` (0.8) of that rate for ``--minutes``.

The mix: 300 distinct requests drawn once from scikit-learn's digits (1 sample or 2..64 samples,
JSON or ``application/x-npy``, alpha default / 0.01 / 0.2, neighbors 0 or 3), each with the answer
the in-process ``Detector`` gives for exactly those rows and arguments. Every response is compared
with the answer of its own request (a lost or mixed-up answer cannot match another's). The
server's resident memory and open file descriptors are sampled every 2 s; their growth is fitted
against the request count after the first fifth of the soak (warm-up) and reported per 100k
requests. Prints a markdown summary.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sklearn.datasets import load_digits

from bench.load import start
from snnl.model.detector import Detector

ALPHAS = (None, 0.01, 0.2)


@dataclass(frozen=True)
class Request:
    """One request of the mix and the answer it must get."""

    url: str
    body: bytes
    content_type: str
    expected: list[dict[str, Any]]


def request_mix(detector: Detector, score_url: str, count: int, seed: int) -> list[Request]:
    """``count`` distinct requests with their expected results."""
    digits = load_digits().data.astype(np.float32)
    rng = np.random.default_rng(seed)
    mix = []
    for _ in range(count):
        n = 1 if rng.random() < 0.5 else int(rng.integers(2, 65))
        start = int(rng.integers(0, len(digits) - n))
        x = digits[start : start + n]
        alpha = ALPHAS[int(rng.integers(0, len(ALPHAS)))]
        neighbors = 3 if rng.random() < 0.2 else 0
        expected = detector.score(x, alpha=alpha, neighbors=neighbors).to_records()
        if rng.random() < 0.5:
            body = {"inputs": x.tolist(), "alpha": alpha, "neighbors": neighbors}
            mix.append(Request(score_url, json.dumps(body).encode(), "application/json", expected))
        else:
            buffer = io.BytesIO()
            np.save(buffer, x)
            query = f"?neighbors={neighbors}" + ("" if alpha is None else f"&alpha={alpha}")
            mix.append(Request(score_url + query, buffer.getvalue(), "application/x-npy", expected))
    return mix


class Tally:
    """Outcomes of the requests sent so far."""

    def __init__(self) -> None:
        self.codes: Counter[int] = Counter()
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()  # transport errors by type
        self.wrong = self.done = 0


async def send(client: httpx.AsyncClient, request: Request, tally: Tally) -> None:
    started = time.perf_counter()
    try:
        response = await client.post(
            request.url, content=request.body, headers={"Content-Type": request.content_type}
        )
    except httpx.TransportError as err:
        tally.errors[type(err).__name__] += 1
        return
    finally:
        tally.done += 1
    tally.latencies.append(time.perf_counter() - started)
    tally.codes[response.status_code] += 1
    if response.status_code == 200 and response.json()["results"] != request.expected:
        tally.wrong += 1


async def capacity(mix: list[Request], concurrency: int, seconds: float) -> float:
    """Requests/s of a closed loop of ``concurrency`` clients."""
    tally = Tally()
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker(index: int) -> None:
            i = index
            while time.monotonic() < deadline:
                await send(client, mix[i % len(mix)], tally)
                i += concurrency

        started = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return tally.done / (time.monotonic() - started)


def resources(pid: int) -> tuple[float, int]:
    """(resident memory in MiB, open file descriptors) of process ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return rss / 1024.0, len(os.listdir(f"/proc/{pid}/fd"))


async def soak(
    mix: list[Request], rate: float, seconds: float, pid: int
) -> tuple[Tally, list[tuple[int, float, int]]]:
    """An open loop at ``rate`` requests/s; (outcomes, [(requests done, RSS MiB, fds)])."""
    tally = Tally()
    samples: list[tuple[int, float, int]] = []
    pending: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=256)) as client:
        started = time.monotonic()
        next_sample = started
        sent = 0
        while (now := time.monotonic()) < started + seconds:
            if now >= next_sample:
                samples.append((tally.done, *resources(pid)))
                next_sample += 2.0
            due = int((now - started) * rate) + 1
            while sent < due:
                task = asyncio.create_task(send(client, mix[sent % len(mix)], tally))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            await asyncio.sleep(min(0.005, 1.0 / rate))
        await asyncio.gather(*pending)
    samples.append((tally.done, *resources(pid)))
    return tally, samples


def growth_per_100k(samples: list[tuple[int, float, int]], column: int) -> float:
    """Slope of ``column`` (1: RSS MiB, 2: fds) against requests done, per 100k requests, fitted
    after the first fifth of the samples."""
    kept = samples[len(samples) // 5 :]
    done = np.array([s[0] for s in kept], dtype=float)
    values = np.array([s[column] for s in kept], dtype=float)
    if np.ptp(done) == 0:
        return 0.0
    return float(np.polyfit(done, values, 1)[0] * 100_000)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--model", default="digits-mlp")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--load", type=float, default=0.8, help="fraction of the capacity")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--probe", type=float, default=20.0, help="capacity probe, seconds")
    args = parser.parse_args()
    detector = Detector.load(args.repository, args.model, device="cpu", threads=1)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"load average before: {os.getloadavg()[0]:.2f}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        process, url = start(args.repository, {"request_timeout_s": "60"}, log)
        try:
            mix = request_mix(detector, f"{url}/v1/models/{args.model}/score", 300, seed=0)
            asyncio.run(capacity(mix, args.concurrency, 3.0))  # warm-up
            rate = asyncio.run(capacity(mix, args.concurrency, args.probe))
            target = rate * args.load
            print(f"capacity: {rate:.0f} requests/s (closed loop, {args.concurrency} clients); "
                  f"soak at {target:.0f} requests/s for {args.minutes:g} min")  # fmt: skip
            tally, samples = asyncio.run(soak(mix, target, args.minutes * 60.0, process.pid))
        finally:
            process.terminate()
            code = process.wait(60)
    latency = np.array(tally.latencies) * 1000.0
    print()
    print("| requests | achieved/s | 200 | other status | transport errors | wrong answers "
          "| p50 ms | p99 ms | RSS MiB start -> end | RSS MiB / 100k req | fds start -> end "
          "| fds / 100k req |")  # fmt: skip
    print("|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---|---:|")
    others = ", ".join(f"{c}: {n}" for c, n in sorted(tally.codes.items()) if c != 200) or "none"
    errors = ", ".join(f"{kind}: {n}" for kind, n in tally.errors.most_common()) or "none"
    print(f"| {tally.done} | {tally.done / (args.minutes * 60):.0f} | {tally.codes[200]} | "
          f"{others} | {errors} | {tally.wrong} | {np.percentile(latency, 50):.1f} | "
          f"{np.percentile(latency, 99):.1f} | {samples[0][1]:.0f} -> {samples[-1][1]:.0f} | "
          f"{growth_per_100k(samples, 1):+.1f} | {samples[0][2]} -> {samples[-1][2]} | "
          f"{growth_per_100k(samples, 2):+.1f} |")  # fmt: skip
    print()
    print(f"server exit code after SIGTERM: {code}; load average after: "
          f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    failed = tally.wrong or tally.errors or any(c >= 500 for c in tally.codes)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
