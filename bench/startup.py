"""Start-up time and resident memory of ``snnl serve``: the default model and large references.

    .venv/bin/python -m bench.startup [--rows 1000000] [--dim 128] [--repeats 3]
        [--baseline /path/to/other/checkout] [--out bench/results/startup.md]

For each served repository it starts ``snnl serve`` on a free port and records the time from
process start to the first ``/healthz`` 200 (imports, app, listening) and to the first
``/readyz`` 200 (every model loaded: checksums, reference to memory, ONNX session, warm-up
scoring calls), then the process's resident memory (VmRSS, split into anonymous and file-backed
pages) and its peak (VmHWM), and stops it; medians of ``--repeats`` starts.

Repositories: the committed ``models`` (digits-mlp, 3 layers x 1,167 reference rows) and two
synthetic embedding-only models of ``--dim`` dimensions and 10 classes, with 10,000 and ``--rows``
reference rows. They are built from a small ``snnl index`` model (10,000 rows) whose reference
file is replaced by random label-sorted rows (the calibration stays the small model's: the
p-values mean nothing, start-up and memory are what is measured). Resident memory per million
reference rows is the difference between the two synthetic models over the difference in rows;
the floor is the features themselves, rows x dim x 4 bytes (plus 8 bytes of label per row).
``--baseline DIR`` also starts another checkout's server (its packages on ``PYTHONPATH``) on
every repository, right before this one's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from bench.load import code_under_test, free_port, machine
from snnl.build.from_embeddings import index_embeddings
from snnl.model.manifest import CALIBRATION_FILE, REFERENCE_FILE
from snnl.model.reference import ReferenceSet
from snnl.model.store import load_manifest, write_model

SNNL = str(Path(sys.executable).with_name("snnl"))
CLASSES = 10
SMALL = 10_000


def synthetic(folder: Path, rows: int, dim: int, seed: int = 0) -> Path:
    """A repository with one embedding-only model 'synthetic' of ``rows`` reference rows."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((CLASSES, dim)).astype(np.float32) * 3
    y = np.arange(SMALL) % CLASSES
    x = centers[y] + rng.standard_normal((SMALL, dim), dtype=np.float32)
    data = folder / "small.npz"
    np.savez(data, x=x, y=y)
    repository = folder / f"repo-{rows}"
    index_embeddings(data, repository, "synthetic", created="2026-01-01T00:00:00Z", device="cpu")
    manifest = load_manifest(repository, "synthetic")
    labels = np.repeat(np.arange(CLASSES), -(-rows // CLASSES))[:rows]
    features = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 100_000):  # in slices: no second full-size temporary
        stop = min(start + 100_000, rows)
        features[start:stop] = centers[labels[start:stop]]
        features[start:stop] += rng.standard_normal((stop - start, dim), dtype=np.float32)
    layer = manifest.layers[0].name
    reference = ReferenceSet({layer: torch.from_numpy(features)}, torch.from_numpy(labels))
    files = {
        REFERENCE_FILE: reference.to_bytes(),
        CALIBRATION_FILE: (repository / "synthetic" / CALIBRATION_FILE).read_bytes(),
    }
    layers = [spec.model_copy(update={"reference_size": rows}) for spec in manifest.layers]
    write_model(repository, manifest.model_copy(update={"layers": layers}), files)
    return repository


def memory(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon, RssFile and VmHWM of ``pid`` in MiB (Linux /proc)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def start_once(repository: Path, pythonpath: Path | None) -> dict[str, float]:
    """Seconds to /healthz and /readyz 200, and memory once ready, of one fresh server."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNNL_")}
    env["SNNL_LOG_LEVEL"] = "WARNING"
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    process = subprocess.Popen(
        [SNNL, "serve", "--repository", str(repository), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    times: dict[str, float] = {}
    try:
        with httpx.Client(timeout=5) as client:
            while "readyz" not in times:
                if process.poll() is not None:
                    raise SystemExit(f"server for {repository} exited")
                if time.perf_counter() - started > 600:
                    raise SystemExit(f"server for {repository} not ready after 600 s")
                for probe in ("healthz", "readyz"):
                    if probe in times:
                        continue
                    try:
                        if client.get(f"{url}/{probe}").status_code == 200:
                            times[probe] = time.perf_counter() - started
                    except httpx.TransportError:
                        break
                time.sleep(0.01)
        return times | memory(process.pid)
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.startup", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    parser.add_argument("--out", type=Path, default=Path("bench/results/startup.md"))
    args = parser.parse_args()
    checkouts = code_under_test(args.baseline)
    lines = [
        f"Machine: {machine()} (before the run). Medians of {args.repeats} starts.",
        "",
        "| code | model | reference rows x dims | to /healthz s | to /readyz s | RSS MiB "
        "| anonymous MiB | file-backed MiB | peak RSS MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        served = [("digits-mlp (default)", "3 layers x 1,167 x 256/128/64", Path("models"))]
        for rows in (SMALL, args.rows):
            repository = synthetic(Path(tmp), rows, args.dim)
            served.append((f"synthetic {rows:,}", f"{rows:,} x {args.dim}", repository))
        medians: dict[tuple[str, str], dict[str, float]] = {}
        for name, shape, repository in served:
            for code, path, _ in checkouts:
                runs = [start_once(repository, path) for _ in range(args.repeats)]
                m = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
                medians[code, name] = m
                row = (
                    f"| {code} | {name} | {shape} | {m['healthz']:.2f} | {m['readyz']:.2f} | "
                    f"{m['VmRSS']:.0f} | {m['RssAnon']:.0f} | {m['RssFile']:.0f} | "
                    f"{m['VmHWM']:.0f} |"
                )
                lines.append(row)
                print(row, flush=True)
    millions = (args.rows - SMALL) / 1e6
    floor = (args.dim * 4 + 8) / 1.048576  # MiB per million rows
    lines.append("")
    for code, _, _ in checkouts:
        small = medians[code, f"synthetic {SMALL:,}"]
        large = medians[code, f"synthetic {args.rows:,}"]
        lines.append(
            f"- {code}, per million reference rows (d = {args.dim}): resident "
            f"{(large['VmRSS'] - small['VmRSS']) / millions:.0f} MiB (anonymous "
            f"{(large['RssAnon'] - small['RssAnon']) / millions:.0f}), peak "
            f"{(large['VmHWM'] - small['VmHWM']) / millions:.0f} MiB, /readyz "
            f"{(large['readyz'] - small['readyz']) / millions:.1f} s later."
        )
    lines += [
        "",
        f"The features alone are {floor:.0f} MiB per million rows. "
        f"Load average after the run: {os.getloadavg()[0]:.2f}.",
    ]
    print("\n".join(lines[-len(checkouts) - 3 :]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
