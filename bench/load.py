"""Load test of ``snnl serve`` with ``wrk``: throughput and latency against in-process scoring.

    .venv/bin/python -m bench.load [--repository models] [--model digits-mlp] [--duration 10]
        [--configs batching,no-wait,off] [--workers 1,2] [--litserve]
        [--baseline /path/to/other/checkout] [--vary SETTING=V1,V2] [--out bench/results/load.md]

Needs ``wrk`` (``apt-get install wrk``) and, for ``--litserve``, ``pip install litserve`` (the
``bench`` extra). The load generator runs on the same machine as the server and shares its cores.

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
requests/s of a quiet 2-core machine (with workers: the CPU of the parent and every worker).
``--workers 1,2`` serves each configuration with each number of worker processes and adds a
table of resident memory per process (RSS, PSS and USS from /proc/PID/smaps_rollup, after the
loads). ``--litserve`` also serves the model with LitServe (``bench/litserve_server.py``, the
same max batch and wait) and runs the 1-sample JSON loads against it in the same run.
``--baseline DIR`` also serves another checkout (its
``snnl`` and ``service`` packages, on ``PYTHONPATH``) beside this one and runs every load
against it right before this one's, so a change is compared within one run; ``--vary SETTING=V1,V2``
likewise serves one server per value of a setting (e.g. ``drift_enabled=false,true``) and runs
every load against each in turn. Writes a markdown
table with the machine to ``--out`` and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
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


def start_litserve(
    repository: Path, model: str, settings: dict[str, str], log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """``bench/litserve_server.py`` with the max batch and wait of ``settings``; (process, URL)."""
    port = free_port()
    script = Path(__file__).with_name("litserve_server.py")
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, str(script), "--repository", str(repository), "--model", model,
             "--port", str(port), "--max-batch-size", settings["max_batch_size"],
             "--max-batch-wait-ms", settings["max_batch_wait_ms"]],
            stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_ready(process, f"{url}/health", log)
    return process, url


def wait_ready(process: subprocess.Popen[bytes], probe: str, log: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(probe).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("server not ready after 300 s")


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
    wait_ready(process, f"{url}/readyz", log)
    return process, url


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


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                pids += tree(int(child))
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and its children so far (Linux /proc), all
    threads."""
    total = 0
    for one in tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def memory(pid: int) -> list[tuple[int, str, dict[str, float]]]:
    """(pid, command, {RSS, PSS, USS} in MiB) of ``pid`` and each descendant."""
    rows = []
    for one in tree(pid):
        with contextlib.suppress(OSError):
            kb = {}
            for line in Path(f"/proc/{one}/smaps_rollup").read_text().splitlines()[1:]:
                key, value = line.split(":", 1)
                kb[key] = int(value.split()[0])
            cmd = Path(f"/proc/{one}/cmdline").read_text().replace("\0", " ")
            role = "worker" if "spawn_main" in cmd else "tracker" if "resource_tracker" in cmd \
                else "server"  # fmt: skip
            uss = kb["Private_Clean"] + kb["Private_Dirty"]
            rows.append((one, role, {"RSS": kb["Rss"] / 1024, "PSS": kb["Pss"] / 1024,
                                     "USS": uss / 1024}))  # fmt: skip
    return rows


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
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--model", default="digits-mlp")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="of " + ", ".join(CONFIGS))
    parser.add_argument("--workers", default="1", help="worker counts to serve with, e.g. 1,2")
    parser.add_argument("--litserve", action="store_true", help="also serve it with LitServe")
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
        memory_rows: list[str] = []
        runs = [(k, n) for k in args.configs.split(",") for n in args.workers.split(",")]
        for key, workers in runs:
            name, settings = CONFIGS[key]
            settings = {**settings, "workers": workers}
            name = f"{name}, {workers} worker{'s' if workers != '1' else ''}"
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
                for (code, _, _), (process, _) in zip(checkouts, servers, strict=True):
                    for pid, role, m in memory(process.pid):
                        memory_rows.append(
                            f"| {code} | {name} | {role} {pid} | {m['RSS']:.0f} | "
                            f"{m['PSS']:.0f} | {m['USS']:.0f} |"
                        )
            finally:
                for process, _ in servers:
                    process.terminate()
                    process.wait(30)
            if args.litserve:
                lines += litserve_rows(args, detector, x, files, script, Path(tmp))
        lines += [
            "",
            "Resident memory per process after the loads, MiB (PSS: shared pages split among "
            "the processes that map them; USS: pages of this process alone):",
            "",
            "| code | server | process | RSS | PSS | USS |",
            "|---|---|---|---:|---:|---:|",
            *memory_rows,
        ]
    lines += ["", f"Load average after the run: {os.getloadavg()[0]:.2f}."]
    print(lines[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


def litserve_rows(
    args: argparse.Namespace,
    detector: Detector,
    x: np.ndarray,
    files: dict[str, Path],
    script: Path,
    tmp: Path,
) -> list[str]:
    """The 1-sample JSON loads against LitServe serving the same model (batching as snnl's
    first configuration); LitServe reports no batch sizes, so no in-process comparison."""
    name, settings = CONFIGS[args.configs.split(",")[0]]
    process, url = start_litserve(args.repository, args.model, settings, tmp / "litserve.log")
    rows = []
    try:
        wrk(f"{url}/predict", script, files["json"], "json", 16, 2)
        for label, samples, kind, concurrency in LOADS:
            if kind != "json":
                continue
            cpu = cpu_seconds(process.pid)
            r = wrk(f"{url}/predict", script, files[kind], kind, concurrency, args.duration)
            cpu = cpu_seconds(process.pid) - cpu
            requests = r["rate"] * args.duration
            row = (
                f"| LitServe {version('litserve')} | {name} | {label} | {concurrency} | "
                f"{r['rate']:.0f} | {r['rate'] * samples:.0f} | {r['p50']:.1f} | "
                f"{r['p99']:.1f} | - | {1000 * cpu / max(requests, 1):.2f} | - | - | "
                f"{r['failed']:.0f} |"
            )
            rows.append(row)
            print(row, flush=True)
    finally:
        process.terminate()
        process.wait(30)
    return rows


if __name__ == "__main__":
    main()
