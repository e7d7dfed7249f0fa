"""Small batches against the memory floor, this checkout against a baseline checkout.

    .venv/bin/python -m bench.small_batch [--baseline /tmp/kbase] [--rounds 5] [--threads 1]

The goals' case of ``bench.scoring`` (N = 50k reference rows, d = 128, one layer, the cosine
score with two mass terms, embedding-only, k = 50) at B = 1, 16 and 256. Each round starts one
process per checkout (``PYTHONPATH`` = that checkout), alternating, and each process times, in
turns, a scorer call per batch size and the memory floor: one ``sum`` over the reference tensor
(N d 4 bytes, the least any exact scorer reads for one query). A figure is the median over the
calls of all rounds; the ratios (scorer / floor, baseline / this) are the robust figures on a
shared machine. Writes ``small_batch.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

BATCHES = (1, 16, 256)
ROOT = Path(__file__).resolve().parents[1]


def worker(calls: int, threads: int) -> None:
    """Times of this process's checkout (on PYTHONPATH), printed as JSON."""
    import torch

    import snnl
    from bench.scoring import CLASSES, MASS_TERMS, SCORE_T, Case, make_data
    from snnl.scoring.scorer import SoftNeighborScorer

    torch.set_num_threads(threads)
    refs, labels, queries = make_data(Case(max(BATCHES), 50_000, 128))
    scorer = SoftNeighborScorer(
        {"l0": torch.from_numpy(refs[0])},
        torch.from_numpy(labels),
        num_classes=CLASSES,
        temperatures={"l0": SCORE_T},
        distances={"l0": "cosine"},
        mass_terms=[("l0", g, t) for g, t in MASS_TERMS],
    )
    reference = torch.from_numpy(refs[0])
    jobs: dict[str, Callable[[], object]] = {"floor": reference.sum}
    for b in BATCHES:
        q = {"l0": torch.from_numpy(queries[0][:b])}
        jobs[f"B={b}"] = functools.partial(scorer.score, q, None, k=50)
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for job in jobs.values():
        job()  # warm-up
    for _ in range(calls):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - start)
    print(json.dumps({"snnl": str(Path(snnl.__file__).parent), "times": times}))


def run(checkout: Path, calls: int, threads: int) -> dict[str, list[float]]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    command = [sys.executable, __file__, "--worker", "--calls", str(calls)]
    command += ["--threads", str(threads)]
    out = subprocess.run(command, env=env, cwd=checkout, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(result["snnl"]).resolve() == (checkout / "snnl").resolve(), result["snnl"]
    times: dict[str, list[float]] = result["times"]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.small_batch", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--baseline", type=Path, help="another checkout (git worktree add)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10, help="timed calls per process")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.calls, args.threads)
        return
    variants = {"this": ROOT}
    if args.baseline is not None:
        variants = {"baseline": args.baseline.resolve(), **variants}
    load = os.getloadavg()
    times: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
    for _ in range(args.rounds):
        for name, checkout in variants.items():
            for job, values in run(checkout, args.calls, args.threads).items():
                times[name].setdefault(job, []).extend(values)
    end_load = os.getloadavg()
    median = {v: {j: statistics.median(t) for j, t in jobs.items()} for v, jobs in times.items()}
    lines = [
        "| B | checkout | scorer ms | memory floor ms | scorer / floor |"
        + (" baseline / this |" if "baseline" in median else ""),
        "|---:|---|---:|---:|---:|" + ("---:|" if "baseline" in median else ""),
    ]
    for b in BATCHES:
        for name in variants:
            m = median[name]
            row = f"| {b} | {name} | {m[f'B={b}'] * 1e3:.2f} | {m['floor'] * 1e3:.2f} "
            row += f"| {m[f'B={b}'] / m['floor']:.1f}x |"
            if "baseline" in median:
                speedup = median["baseline"][f"B={b}"] / m[f"B={b}"]
                row += f" {speedup:.2f}x |" if name == "this" else " |"
            lines.append(row)
    baseline = f" --baseline {args.baseline}" if args.baseline else ""
    head = [
        "# Small batches against the memory floor",
        "",
        f"`.venv/bin/python -m bench.small_batch{baseline}"
        f" --rounds {args.rounds} --calls {args.calls} --threads {args.threads}`: N = 50,000, "
        f"d = 128, one layer, float32; medians of {args.rounds * args.calls} calls per figure.",
        "",
        f"- load average (1/5/15 min) at start {' '.join(f'{x:.1f}' for x in load)}, "
        f"at end {' '.join(f'{x:.1f}' for x in end_load)}; {os.cpu_count()} logical cores",
        "",
    ]
    text = "\n".join([*head, *lines, ""])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "small_batch.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
