"""SNNL factor study: factor 0 vs -10 vs +1 on digits (MLP) and mnist1d (1-D CNN), three seeds.

Reports test accuracy and the final per-layer entanglement (SNNL at the optimal temperature, on
the 300-point training subsample that ``snnl train`` logs) as mean ± std over seeds, as a
markdown table, and optionally the raw numbers as JSON.

    .venv/bin/python -m bench.train_factors --json bench/results/train_factors.json

Runs in-process with one torch thread (about 5-7 minutes on this shared 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import TypedDict

import torch

from snnl.training.loop import TrainSettings, train

SETUPS: dict[str, dict[str, object]] = {
    "digits": {"arch": "mlp", "epochs": 30, "lr": 1e-3},
    "mnist1d": {"arch": "cnn1d", "epochs": 40, "lr": 3e-3},
}
FACTORS = (0.0, -10.0, 1.0)


class Result(TypedDict):
    """One training run's final epoch, as written to ``--json``."""

    dataset: str
    arch: str
    factor: float
    seed: int
    test_accuracy: float
    train_accuracy: float
    entanglement: dict[str, float]
    temperature: dict[str, float]
    seconds: float


def run_one(dataset: str, factor: float, seed: int) -> Result:
    """Train one setting with the CLI's defaults otherwise; the final epoch's numbers."""
    settings = TrainSettings(dataset=dataset, factor=factor, seed=seed, **SETUPS[dataset])
    start = time.perf_counter()
    last = train(settings).history[-1]
    return {
        "dataset": dataset,
        "arch": settings.arch,
        "factor": factor,
        "seed": seed,
        "test_accuracy": last.test_accuracy,
        "train_accuracy": last.train_accuracy,
        "entanglement": last.entanglement,
        "temperature": last.temperature,
        "seconds": time.perf_counter() - start,
    }


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def table(results: list[Result]) -> str:
    """One markdown table per dataset: rows = factors, columns = accuracy and layers."""
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        rows = [r for r in results if r["dataset"] == dataset]
        layers = list(rows[0]["entanglement"])
        lines.append(f"**{dataset}** ({rows[0]['arch']}, {len({r['seed'] for r in rows})} seeds)\n")
        lines.append(
            "| factor | test accuracy | " + " | ".join(f"entanglement {n}" for n in layers) + " |"
        )
        lines.append("|---" * (2 + len(layers)) + "|")
        for factor in dict.fromkeys(r["factor"] for r in rows):
            group = [r for r in rows if r["factor"] == factor]
            cells = [mean_std([r["test_accuracy"] for r in group])]
            cells += [mean_std([r["entanglement"][n] for r in group]) for n in layers]
            lines.append(f"| {factor:g} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.train_factors", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--datasets", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", type=Path, default=None, help="write the raw results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: list[Result] = []
    for dataset in args.datasets:
        for factor in FACTORS:
            for seed in args.seeds:
                result = run_one(dataset, factor, seed)
                print(
                    f"{dataset} factor {factor:g} seed {seed}: test {result['test_accuracy']:.4f} "
                    f"({result['seconds']:.0f} s)",
                    file=sys.stderr,
                )
                results.append(result)
    print(table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
