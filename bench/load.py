"""Load test of ``snnl serve`` with ``wrk``: throughput and latency against in-process scoring.

    .venv/bin/python bench/load.py [--repository models] [--model digits-mlp] [--duration 10]
        [--configs batching,no-wait,off] [--baseline /path/to/other/checkout]
        [--vary SETTING=V1,V2] [--out bench/results/load.md]

For each server configuration (batching: max batch 128 and a 2 ms wait; no wait: max batch 128,
wait 0, so only requests that queue while a batch runs are merged; off: max batch 1) it starts
``snnl serve`` on a free port, waits for /readyz, warms up, then runs ``wrk`` (one client thread,
C connections, each sending its next request when the last is answered) for ``--duration``
seconds per load: 1-sample JSON requests at concurrency 1, 16, 64 and 256, and 256-sample
``application/x-npy`` requests at concurrency 1 and 8.

Each row also times ``Detector.score`` in this process (the server's one scoring thread) at the
batch size the row compares with: the mean samples per scoring call the server ran (from its
``snnl_batch_size`` histogram) for 1-sample requests, the request's 256 samples for ``.npy``
requests. ``HTTP / in-process`` is the row's samples/s over that in-process samples/s, measured
right after the load on the same, equally busy machine. ``server CPU per request`` is the
server process's CPU time (user + system, both threads) over the requests answered: unlike
requests/s it hardly depends on what else the machine runs, and 2 cores / that time bounds the
requests/s of a quiet 2-core machine. ``--baseline DIR`` also serves another checkout (its
``snnl`` and ``service`` packages, on ``PYTHONPATH``) beside this one and runs every load
against it right before this one's, so a change is compared within one run; ``--vary SETTING=V1,V2``
likewise serves one server per value of a setting (e.g. ``drift_enabled=false,true``) and runs
every load against each in turn. Writes a markdown
table with the machine to ``--out`` and prints it.
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
import torch
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_digits

from snnl.model.detector import Detector

SNNL = str(Path(sys.executable).with_name("snnl"))
CONFIGS: dict[str, tuple[str, dict[str, str]]] = {
    "batching": (
        "batching (max 128, wait 2 ms)",
        {"max_batch_size": "128", "max_batch_wait_ms": "2"},
    ),
    "no-wait": (
        "no wait (max 128, wait 0 ms)",
        {"max_batch_size": "128", "max_batch_wait_ms": "0"},
    ),
    "off": ("off (max batch 1)", {"max_batch_size": "1", "max_batch_wait_ms": "0"}),
}
# (label, samples per request, body kind, concurrency)
LOADS: list[tuple[str, int, str, int]] = [
    ("1 sample, JSON", 1, "json", 1),
    ("1 sample, JSON", 1, "json", 16),
    ("1 sample, JSON", 1, "json", 64),
    ("1 sample, JSON", 1, "json", 256),
    ("256 samples, .npy", 256, "npy", 1),
    ("256 samples, .npy", 256, "npy", 8),
]
MEDIA_TYPES = {"json": "application/json", "npy": "application/x-npy"}
# wrk prints one line from its `done` hook: requests, microseconds, p50/p99 latency in
# microseconds, non-2xx answers, socket errors (connect, read, write, timeout).
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("SNNL_BENCH_TYPE")
local f = assert(io.open(os.getenv("SNNL_BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""


def code_under_test(
    baseline: Path | None, vary: str | None = None
) -> list[tuple[str, Path | None, dict[str, str]]]:
    """(label, PYTHONPATH, settings) of each server to measure: the baseline checkout first, then
    this one; with ``vary`` ("SETTING=V1,V2"), each of them once per value of that setting."""
    this: list[tuple[str, Path | None]] = [("this checkout", None)]
    checkouts = this if baseline is None else [(f"baseline {baseline}", baseline.resolve()), *this]
    if vary is None:
        return [(label, path, {}) for label, path in checkouts]
    setting, _, values = vary.partition("=")
    return [
        (f"{label}, {setting}={value}", path, {setting: value})
        for label, path in checkouts
        for value in values.split(",")
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> str:
    """CPU model, core count, BLAS threads of this process, and the load average now."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{model}, {os.cpu_count()} cores, no GPU used, Python {platform.python_version()}, "
        f"torch {torch.__version__}; load average {os.getloadavg()[0]:.2f}"
    )


def bodies(folder: Path) -> tuple[dict[str, Path], np.ndarray]:
    """Request bodies from scikit-learn's digits: one sample as JSON, 256 as .npy; the samples."""
    x = load_digits().data.astype(np.float32)
    one = folder / "one.json"
    one.write_text('{"inputs": [[' + ", ".join(f"{v:g}" for v in x[0]) + "]]}")
    many = folder / "many.npy"
    buffer = io.BytesIO()
    np.save(buffer, x[:256])
    many.write_bytes(buffer.getvalue())
    return {"json": one, "npy": many}, x


def start(
    repository: Path, settings: dict[str, str], log: Path, pythonpath: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNNL_")}
    env.update({f"SNNL_{k.upper()}": v for k, v in settings.items()})
    env["SNNL_LOG_LEVEL"] = "WARNING"
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
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


def wrk(
    url: str, script: Path, body: Path, kind: str, concurrency: int, seconds: float
) -> dict[str, float]:
    """Run wrk; requests/s, p50/p99 latency in ms, non-200 answers and socket errors."""
    env = {**os.environ, "SNNL_BENCH_TYPE": MEDIA_TYPES[kind], "SNNL_BENCH_BODY": str(body)}
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(concurrency), "-d", f"{seconds:g}s", "--timeout", "30s",
         "-s", str(script), url],
        capture_output=True, text=True, check=True, env=env,
    ).stdout  # fmt: skip
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    requests, micros, p50, p99, status, errors = (int(v) for v in line.split()[1:])
    return {
        "rate": requests / (micros / 1e6),
        "p50": p50 / 1000,
        "p99": p99 / 1000,
        "failed": float(status + errors),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc), all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batches(url: str, model: str) -> tuple[float, float]:
    """(samples, scoring calls) so far: snnl_batch_size_sum and _count of ``model``."""
    values = {"sum": 0.0, "count": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name.startswith("snnl_batch_size_") and sample.labels["model"] == model:
                values[sample.name.removeprefix("snnl_batch_size_")] = sample.value
    return values["sum"], values["count"]


def in_process(detector: Detector, x: np.ndarray, batch: int, seconds: float) -> float:
    """Samples/s of ``detector.score`` on ``batch`` digits, after two warm-up calls."""
    rows = np.resize(x, (batch, x.shape[1]))
    for _ in range(2):
        detector.score(rows)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        detector.score(rows)
        count += 1
    return count * batch / (time.perf_counter() - start)


def measure(
    server: tuple[subprocess.Popen[bytes], str],
    files: dict[str, Path],
    script: Path,
    model: str,
    load: tuple[str, int, str, int],
    seconds: float,
) -> dict[str, float]:
    """One load against one server: wrk's figures, mean batch, server CPU per request."""
    process, url = server
    _, samples, kind, concurrency = load
    score = f"{url}/v1/models/{model}/score"
    before, cpu = batches(url, model), cpu_seconds(process.pid)
    r = wrk(score, script, files[kind], kind, concurrency, seconds)
    cpu = cpu_seconds(process.pid) - cpu
    after = batches(url, model)
    requests = (after[0] - before[0]) / samples
    r["batch"] = (after[0] - before[0]) / max(after[1] - before[1], 1)
    r["cpu_ms"] = 1000 * cpu / max(requests, 1)
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--model", default="digits-mlp")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="of " + ", ".join(CONFIGS))
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    parser.add_argument("--vary", help="SETTING=V1,V2: one server per value, measured in turn")
    parser.add_argument("--out", type=Path, default=Path("bench/results/load.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the server's scoring thread (SNNL_SCORING_THREADS=1)
    detector = Detector.load(args.repository, args.model, device="cpu", threads=1)
    checkouts = code_under_test(args.baseline, args.vary)
    lines = [
        f"Machine: {machine()} (before the run).",
        "",
        "| code | server | requests | concurrency | requests/s | samples/s | p50 ms | p99 ms "
        "| samples per scoring call | server CPU ms per request "
        "| in-process samples/s at that batch | HTTP / in-process | non-200 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        files, x = bodies(Path(tmp))
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_SCRIPT)
        for key in args.configs.split(","):
            name, settings = CONFIGS[key]
            servers = [
                start(args.repository, settings | extra, Path(tmp) / f"server{i}.log", path)
                for i, (_, path, extra) in enumerate(checkouts)
            ]
            try:
                for _, url in servers:  # warm-up, not reported
                    wrk(f"{url}/v1/models/{args.model}/score", script, files["json"], "json", 16, 2)
                for load in LOADS:
                    label, samples, _, concurrency = load
                    for (code, *_), server in zip(checkouts, servers, strict=True):
                        r = measure(server, files, script, args.model, load, args.duration)
                        compare = samples if samples > 1 else max(round(r["batch"]), 1)
                        local = in_process(detector, x, compare, min(args.duration, 3.0))
                        rate = r["rate"] * samples
                        row = (
                            f"| {code} | {name} | {label} | {concurrency} | {r['rate']:.0f} | "
                            f"{rate:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['batch']:.1f} | "
                            f"{r['cpu_ms']:.2f} | {local:.0f} (B = {compare}) | "
                            f"{rate / local:.2f} | {r['failed']:.0f} |"
                        )
                        lines.append(row)
                        print(row, flush=True)
            finally:
                for process, _ in servers:
                    process.terminate()
                    process.wait(30)
    lines += ["", f"Load average after the run: {os.getloadavg()[0]:.2f}."]
    print(lines[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
