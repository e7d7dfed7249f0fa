"""Load test of ``snnl serve`` with ``hey``: throughput and latency, dynamic batching on and off.

    .venv/bin/python bench/load.py [--repository models] [--model digits-mlp] [--duration 10]

For each server configuration (batching: max batch 128 and a 2 ms wait; no wait: max batch 128,
wait 0, so only requests that queue while a batch runs are merged; off: max batch 1) it starts
``snnl serve`` on a free port, waits for /readyz, warms up, then runs ``hey`` for ``--duration``
seconds per load: 1-sample JSON requests at concurrency 1, 16 and 64, and 256-sample
``application/x-npy`` requests at concurrency 1 and 8. Prints one markdown table (requests/s,
samples/s, p50 and p99 latency, mean samples per scoring call from the server's
snnl_batch_size histogram, non-200 answers) with the machine's load average.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_digits

SNNL = str(Path(sys.executable).with_name("snnl"))
CONFIGS: dict[str, dict[str, str]] = {
    "batching (max 128, wait 2 ms)": {"max_batch_size": "128", "max_batch_wait_ms": "2"},
    "no wait (max 128, wait 0 ms)": {"max_batch_size": "128", "max_batch_wait_ms": "0"},
    "off (max batch 1)": {"max_batch_size": "1", "max_batch_wait_ms": "0"},
}
# (label, samples per request, body kind, concurrency)
LOADS: list[tuple[str, int, str, int]] = [
    ("1 sample, JSON", 1, "json", 1),
    ("1 sample, JSON", 1, "json", 16),
    ("1 sample, JSON", 1, "json", 64),
    ("256 samples, .npy", 256, "npy", 1),
    ("256 samples, .npy", 256, "npy", 8),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bodies(folder: Path) -> dict[str, Path]:
    """Request bodies from scikit-learn's digits: one sample as JSON, 256 as .npy."""
    x = load_digits().data.astype(np.float32)
    one = folder / "one.json"
    one.write_text('{"inputs": [[' + ", ".join(f"{v:g}" for v in x[0]) + "]]}")
    many = folder / "many.npy"
    buffer = io.BytesIO()
    np.save(buffer, x[:256])
    many.write_bytes(buffer.getvalue())
    return {"json": one, "npy": many}


def start(
    repository: Path, settings: dict[str, str], log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNNL_")}
    env.update({f"SNNL_{k.upper()}": v for k, v in settings.items()})
    env["SNNL_LOG_LEVEL"] = "WARNING"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [SNNL, "serve", "--repository", str(repository), "--port", str(port)],
            stdout=sink, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("server not ready after 300 s")


def hey(url: str, body: Path, kind: str, concurrency: int, seconds: float) -> dict[str, float]:
    """Run hey; requests/s, p50/p99 latency in ms, and the count of non-200 answers."""
    content_type = "application/json" if kind == "json" else "application/x-npy"
    out = subprocess.run(
        ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-T", content_type,
         "-D", str(body), "-o", "csv", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = [line.split(",") for line in out.splitlines()[1:] if line.strip()]
    latency = np.array([float(row[0]) for row in rows])  # response-time, seconds
    status = np.array([int(row[6]) for row in rows])  # status-code
    ends = np.array([float(row[7]) for row in rows]) + latency  # offset + response-time
    return {
        "rate": len(rows) / float(ends.max()),
        "p50": float(np.percentile(latency, 50)) * 1000,
        "p99": float(np.percentile(latency, 99)) * 1000,
        "failed": float(np.sum(status != 200)),
    }


def batches(url: str, model: str) -> tuple[float, float]:
    """(samples, scoring calls) so far: snnl_batch_size_sum and _count of ``model``."""
    values = {"sum": 0.0, "count": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name.startswith("snnl_batch_size_") and sample.labels["model"] == model:
                values[sample.name.removeprefix("snnl_batch_size_")] = sample.value
    return values["sum"], values["count"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--model", default="digits-mlp")
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"load average before: {os.getloadavg()[0]:.2f}")  # fmt: skip
    print()
    print("| server | requests | concurrency | requests/s | samples/s | p50 ms | p99 ms "
          "| samples per scoring call | non-200 |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        files = bodies(Path(tmp))
        for name, settings in CONFIGS.items():
            process, url = start(args.repository, settings, Path(tmp) / "server.log")
            score = f"{url}/v1/models/{args.model}/score"
            try:
                hey(score, files["json"], "json", 16, 2.0)  # warm-up, not reported
                for label, samples, kind, concurrency in LOADS:
                    before = batches(url, args.model)
                    r = hey(score, files[kind], kind, concurrency, args.duration)
                    after = batches(url, args.model)
                    mean_batch = (after[0] - before[0]) / max(after[1] - before[1], 1)
                    print(f"| {name} | {label} | {concurrency} | {r['rate']:.0f} | "
                          f"{r['rate'] * samples:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | "
                          f"{mean_batch:.1f} | {r['failed']:.0f} |", flush=True)  # fmt: skip
            finally:
                process.terminate()
                process.wait(30)
    print()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
