"""In-process scoring at the hardware limit: the scorer against the bare product, faiss, sklearn.

    .venv/bin/pip install -c constraints.txt -e '.[bench]'      # faiss-cpu
    .venv/bin/python -m bench.scoring [--threads N] [--quick] [--out bench/results]

Writes ``scoring.md`` (machine, table, goals) and ``scoring.png`` to ``--out``. Data: synthetic
clustered embeddings (10 classes, unit-variance noise around random centers), rows sorted by
label, float32. The scorer is configured as ``snnl index`` builds an embedding-only model: per
layer a cosine score at T = 0.1 and two neighbor-mass terms (cosine T = 0.05, euclidean T = 30),
prediction from the soft neighbors (two rounds), k = 50 hard count. Every figure is the median
of repeats, each row's competitors timed in the same run on the same data:

* bare: ``q @ ref.T`` of the same shape (one full product per layer, float32);
* faiss: ``IndexFlatIP`` top-50 on the unit rows (cosine), 1 layer;
* sklearn: ``NearestNeighbors(algorithm="brute", metric="cosine")`` top-50, 1 layer
  (pytorch-ood's KNN needs torchvision, which has no build beside torch 2.13 here);
* floor: bytes of the reference (L N d 4) / the read bandwidth measured in this run (a sum over a
  512 MiB tensor), the least time any exact scorer needs for one query.

The grid is every B in {1, 16, 256} x N in {10k, 100k, 1M} x d in {64, 128, 512} x 1 and 3
layers (float32), then the goals' set (N = 50k, d = 128, one layer) in float32 and bfloat16.
The baselines run on one-layer rows; sklearn is left out at 1M rows (a B x 1M float64 distance
matrix per call; 3.3 s at B = 16, d = 512 here). Each figure is the median of 3 to 5 calls after
a warm-up (fewer once 0.75 s are spent); a warm-up call slower than 0.25 s counts as one of
them. The whole grid takes about 8-10 minutes on an idle 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from snnl.core.distances import Distance
from snnl.scoring.scorer import SoftNeighborScorer

CLASSES = 10
K = 50
SCORE_T = 0.1
MASS_TERMS: tuple[tuple[Distance, float], ...] = (("cosine", 0.05), ("euclidean", 30.0))


@dataclass(frozen=True)
class Case:
    batch: int
    size: int
    dim: int
    layers: int = 1
    dtype: str = "float32"
    baselines: bool = True


def grid(quick: bool) -> list[Case]:
    """The measured rows: every B x N x d x layers of the sets below, then the goals' set
    (N = 50k, d = 128, one layer) in float32 and bfloat16."""
    if quick:
        return [Case(b, 20_000, 128) for b in (1, 16, 256)] + [Case(16, 20_000, 128, layers=3)]
    cases = [
        Case(b, n, d, layers)
        for b in (1, 16, 256)
        for n in (10_000, 100_000, 1_000_000)
        for d in (64, 128, 512)
        for layers in (1, 3)
    ]
    cases += [Case(b, 50_000, 128) for b in (1, 16, 256)]
    cases += [Case(b, 50_000, 128, dtype="bfloat16", baselines=False) for b in (1, 256)]
    return cases


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], budget: float = 0.75, repeats: int = 5) -> float:
    """Median wall time of ``fn`` after one warm-up call: up to ``repeats`` calls, fewer (at
    least 3) once ``budget`` seconds are spent (GPU work is waited for). A warm-up call slower
    than ``budget`` / 3 counts as one of the 3 (nothing left to warm in a call that long)."""
    start = time.perf_counter()
    fn()
    _sync()
    warm_up = time.perf_counter() - start
    times: list[float] = [warm_up] if warm_up > budget / 3 else []
    spent = sum(times)
    while len(times) < repeats and (len(times) < 3 or spent < budget):
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return statistics.median(times)


def bandwidth(device: str) -> float:
    """Read bandwidth in bytes/s: the median time to sum a 512 MiB float32 tensor."""
    x = torch.ones(128 * 1024 * 1024, device=device)
    seconds = median_seconds(lambda: x.sum(), repeats=5)
    return x.numel() * 4 / seconds


def machine(threads: int) -> list[str]:
    """Lines describing the CPU, BLAS, GPU and load of this run."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from threadpoolctl import threadpool_info

    blas = ", ".join(
        f"{i.get('internal_api')} {i.get('version')} ({i.get('num_threads')} threads)"
        for i in threadpool_info()
    )
    config = torch.__config__.show()
    found = re.search(r"BLAS_INFO=(\w+)", config)
    torch_blas = f"torch BLAS: {found.group(1)}" if found else "torch BLAS: unknown"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; torch {torch.__version__} with "
        f"{threads} threads; {torch_blas}",
        f"- BLAS libraries loaded (threadpoolctl): {blas}",
        f"- GPU: {gpu}",
        f"- load average at start (1/5/15 min): {load} — a shared machine: compare the ratios",
    ]


def make_data(case: Case, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """Reference (N, d) per layer, sorted labels (N,), queries (B, d) per layer."""
    rng = np.random.default_rng(seed)
    labels = np.sort(rng.integers(0, CLASSES, case.size))
    refs, queries = [], []
    for _ in range(case.layers):
        centers = rng.standard_normal((CLASSES, case.dim), dtype=np.float32)
        ref = rng.standard_normal((case.size, case.dim), dtype=np.float32)
        ref += centers[labels]
        q = centers[rng.integers(0, CLASSES, case.batch)]
        refs.append(ref)
        queries.append(q + rng.standard_normal(q.shape, dtype=np.float32))
    return refs, labels, queries


def measure(case: Case, floor_bandwidth: float, device: str) -> dict[str, float | None]:
    refs, labels, queries = make_data(case)
    names = [f"l{i}" for i in range(case.layers)]
    scorer = SoftNeighborScorer(
        {n: torch.from_numpy(r).to(device) for n, r in zip(names, refs, strict=True)},
        torch.from_numpy(labels).to(device),
        num_classes=CLASSES,
        temperatures=dict.fromkeys(names, SCORE_T),
        distances=dict.fromkeys(names, "cosine"),
        mass_terms=[(n, g, t) for n in names for g, t in MASS_TERMS],
        compute_dtype=getattr(torch, case.dtype),
    )
    q = {n: torch.from_numpy(x) for n, x in zip(names, queries, strict=True)}
    row: dict[str, float | None] = {"scorer": median_seconds(lambda: scorer.score(q, None, k=K))}
    tensors = [
        (torch.from_numpy(x).to(device), torch.from_numpy(r).to(device))
        for x, r in zip(queries, refs, strict=True)
    ]

    def bare() -> None:
        for x, r in tensors:  # one product at a time: an output of B x N floats each
            x @ r.T

    row["bare"] = median_seconds(bare)
    row["floor"] = sum(r.nbytes for r in refs) / floor_bandwidth
    row["faiss"] = row["sklearn"] = None
    if case.baselines and case.layers == 1 and device == "cpu":
        unit = refs[0] / np.linalg.norm(refs[0], axis=1, keepdims=True)
        unit_q = queries[0] / np.linalg.norm(queries[0], axis=1, keepdims=True)
        try:
            import faiss

            index = faiss.IndexFlatIP(case.dim)
            index.add(unit)
            row["faiss"] = median_seconds(lambda: index.search(unit_q, K))
        except ImportError:
            pass
        if case.size <= 100_000:  # beyond, many seconds per call and a B x N float64 matrix
            from sklearn.neighbors import NearestNeighbors

            knn = NearestNeighbors(n_neighbors=K, algorithm="brute", metric="cosine")
            knn.fit(refs[0])
            row["sklearn"] = median_seconds(lambda: knn.kneighbors(queries[0]))
    return row


def _ms(x: float | None) -> str:
    return "" if x is None else f"{x * 1e3:.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "" if a is None or b is None else f"{a / b:.2f}x"


def table(cases: list[Case], rows: list[dict[str, float | None]]) -> list[str]:
    out = [
        "| B | N | d | layers | dtype | scorer ms | bare product ms | scorer / bare | faiss ms "
        "| faiss / scorer | sklearn ms | sklearn / scorer | floor ms | scorer / floor |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c, r in zip(cases, rows, strict=True):
        floor = r["floor"] if c.batch == 1 else None
        out.append(
            f"| {c.batch} | {c.size:,} | {c.dim} | {c.layers} | {c.dtype} | {_ms(r['scorer'])} "
            f"| {_ms(r['bare'])} | {_ratio(r['scorer'], r['bare'])} | {_ms(r['faiss'])} "
            f"| {_ratio(r['faiss'], r['scorer'])} | {_ms(r['sklearn'])} "
            f"| {_ratio(r['sklearn'], r['scorer'])} | {_ms(floor)} "
            f"| {_ratio(r['scorer'], floor)} |"
        )
    return out


def goals(cases: list[Case], rows: list[dict[str, float | None]]) -> list[str]:
    """The goals at N = 50k, d = 128, one layer, float32, met or not."""

    def find(batch: int) -> dict[str, float | None] | None:
        for c, r in zip(cases, rows, strict=True):
            if (c.batch, c.size, c.dim, c.layers, c.dtype) == (batch, 50_000, 128, 1, "float32"):
                return r
        return None

    big, one = find(256), find(1)
    if big is None or one is None:
        return ["(goals need the full grid: run without --quick)"]
    checks = [
        (
            "B = 256: scorer within 1.25x of the bare float32 product",
            big["scorer"],
            big["bare"],
            lambda v: v <= 1.25,
            "scorer / bare",
        ),
        (
            "B = 256: at least 3x faster than faiss IndexFlatIP top-50",
            big["faiss"],
            big["scorer"],
            lambda v: v >= 3.0,
            "faiss / scorer",
        ),
        (
            "B = 256: at least 10x faster than KNN (sklearn brute)",
            big["sklearn"],
            big["scorer"],
            lambda v: v >= 10.0,
            "sklearn / scorer",
        ),
        (
            "B = 1: within 2x of the memory floor",
            one["scorer"],
            one["floor"],
            lambda v: v <= 2.0,
            "scorer / floor",
        ),
    ]
    out = []
    for text, a, b, ok, what in checks:
        if a is None or b is None:
            out.append(f"- {text}: not measured")
            continue
        out.append(f"- {text}: **{'met' if ok(a / b) else 'not met'}** ({what} = {a / b:.2f})")
    return out


def plot(cases: list[Case], rows: list[dict[str, float | None]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, batch in zip(axes, (1, 256), strict=True):
        pick = [
            (c, r)
            for c, r in zip(cases, rows, strict=True)
            if c.batch == batch and c.dim == 128 and c.layers == 1 and c.dtype == "float32"
        ]
        if not pick:
            ax.set_visible(False)
            continue
        pick.sort(key=lambda cr: cr[0].size)
        sizes = [c.size for c, _ in pick]
        for key, label in (
            ("scorer", "snnl scorer"),
            ("bare", "bare q @ ref.T"),
            ("faiss", "faiss IndexFlatIP top-50"),
            ("sklearn", "sklearn brute KNN"),
            ("floor", "memory floor"),
        ):
            if key == "floor" and batch != 1:
                continue
            points = [(n, r[key]) for n, (_, r) in zip(sizes, pick, strict=True)]
            shown = [(n, v * 1e3) for n, v in points if v is not None]
            if shown:
                ax.plot(*zip(*shown, strict=True), marker="o", label=label)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="reference rows N",
            ylabel="ms per batch",
            title=f"B = {batch}, d = 128, 1 layer",
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scoring", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="a small grid (seconds), no goals")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (faiss/sklearn: CPU only)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        print("faiss-cpu is not installed (pip install -e '.[bench]'): its column stays empty")
    started = time.perf_counter()
    lines = machine(args.threads)
    rate = bandwidth(args.device)
    lines.append(f"- read bandwidth measured in this run: {rate / 1e9:.1f} GB/s")
    cases, rows = grid(args.quick), []
    for case in cases:
        rows.append(measure(case, rate, args.device))
        print(table([case], rows[-1:])[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "scoring" if args.device == "cpu" else f"scoring-{args.device}"
    plot(cases, rows, args.out / f"{stem}.png")
    text = [
        "# In-process scoring benchmark",
        "",
        f"`.venv/bin/python -m bench.scoring{' --quick' if args.quick else ''}"
        f"{'' if args.device == 'cpu' else ' --device ' + args.device}` "
        f"({time.perf_counter() - started:.0f} s). Medians of repeats; ms per batch.",
        "",
        *lines,
        "",
        *table(cases, rows),
        "",
        "Goals (N = 50k, d = 128, one layer, float32):",
        "",
        *goals(cases, rows),
        "",
        f"![scoring]({stem}.png)",
        "",
    ]
    (args.out / f"{stem}.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
