"""``snnl index`` at scale: build time and peak memory at N = 100k, 1M, 10M rows.

    python -m bench.index_build                      # 100k and 1M: bench/results/index_build.md
    python -m bench.index_build --sizes 10000000     # 10M x 128 (5 GB of data on disk)

Per size: random clustered embeddings (d = 128 float32, 10 classes, Gaussian clusters around
random centers) are written in chunks to an uncompressed .npz (``x.npy`` stored, so ``snnl index``
memory-maps it instead of reading it), then ``snnl index`` runs in a child process with the
defaults (calibration size 3,205 stratified, neighbor-mass nonconformity, cosine, float32
reference, CPU). Reported: wall time of the child, and its peak resident memory (``ru_maxrss``
from ``os.wait4``; file-backed pages of the memory-mapped data count when touched). The build
scores n_cal calibration rows against N reference rows, O(n_cal N). Its memory is about
2 x N x d x 4 bytes: while the rows are copied out of the map, the touched map and the
label-ordered copy; after, that copy and the scorer's unit-normalized rows. The temperature
rule and the neighbor-mass fit work on bounded blocks of rows, and reference.safetensors is
written from the tensors.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

D, CLASSES, CHUNK = 128, 10, 250_000
RESULTS = Path(__file__).parent / "results" / "index_build.md"


def write_clustered(path: Path, n: int, seed: int = 0) -> None:
    """An uncompressed .npz with x (n, D) float32 and y (n,) int64, x written chunk by chunk."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(CLASSES, D)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=n)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            header = {"descr": "<f4", "fortran_order": False, "shape": (n, D)}
            np.lib.format.write_array_header_2_0(member, header)
            for start in range(0, n, CHUNK):
                rows = y[start : start + CHUNK]
                noise = rng.normal(scale=0.8, size=(len(rows), D)).astype(np.float32)
                member.write((centers[rows] + noise).tobytes())
        with archive.open("y.npy", "w") as member:
            np.lib.format.write_array(member, y.astype(np.int64))


def run_index(data: Path, repository: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of ``snnl index data`` in a child process."""
    command = [sys.executable, "-m", "snnl.cli", "index", str(data), "--repository",
               str(repository), "--name", "bench", "--force", "--device", "cpu"]  # fmt: skip
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    assert child.stderr is not None
    stderr = child.stderr.read().decode()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"snnl index failed ({child.returncode}): {stderr}")
    return seconds, usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workdir", type=Path, default=None, help="scratch (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        for n in args.sizes:
            data = Path(scratch) / f"emb_{n}.npz"
            write_clustered(data, n)
            seconds, peak = run_index(data, Path(scratch) / "repo")
            data_gib = n * D * 4 / 2**30
            rows.append(f"| {n:,} | {data_gib:.2f} | {seconds:.1f} | {peak:.2f} |")
            print(rows[-1], flush=True)
            data.unlink()
    table = "\n".join(
        [
            "| N (rows, d = 128) | x (GiB) | `snnl index` wall (s) | peak RSS (GiB) |",
            "|---:|---:|---:|---:|",
            *rows,
        ]
    )
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible"
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            f"# `snnl index` build time and memory\n\n`python -m bench.index_build --sizes "
            f"{' '.join(map(str, args.sizes))}` on {cpu} (shared), CPU scoring.\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
