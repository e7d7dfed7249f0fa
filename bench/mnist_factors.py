"""Maximizing or minimizing hidden-layer entanglement on MNIST: SNNL factor -10 vs 0 vs +1.

Frosst, Papernot & Hinton (2019) report that *maximizing* the soft nearest neighbor loss of the
hidden layers (factor -10 in their reference code, cleverhans' ``SNNLCrossEntropy``) improves
generalization and uncertainty on outliers. Their recipe, as that code defines it: squared
euclidean distance, each row's term -log(eps + p_i) with eps = 1e-5, a temperature that starts at
100 and follows its own gradient to *minimize* the SNNL while the net maximizes it, on every
hidden layer. The ``frosst`` arms use exactly that recipe in ``snnl train`` terms
(``--distance euclidean --temperature learned --initial-temperature 100``; the bound is on for
factor < 0), on the small ``cnn2d`` (hidden layers conv1, conv2, fc1). ``default +1`` is the
product's image recipe (cosine, learned temperature from 1).

Every arm and seed is one split of the MNIST open-set protocol of ``bench.ood_benchmark``
(split 0: known digits 0,2,3,4,6,8; training seed s), trained for the same epochs, exported with
the served layers conv2 + fc1, and evaluated against every baseline on the near (held-out
digits) and far sets. Reported per arm, mean ± std over the seeds: ID test accuracy, the final
entanglement of each hidden layer (SNNL at the optimal temperature, in the run's own distance,
on 300 training points), and AUROC / FPR95 per detector, near and far.

    .venv/bin/python -m bench.mnist_factors      # writes bench/results/mnist_factors.{md,json}
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.ood_benchmark import DETECTOR_ORDER, LAYERS, run_split, save, write_mnist_train

SPLIT = 0
EPOCHS = 3
SEEDS = (0, 1, 2)
FROSST = {"distance": "euclidean", "temperature": "learned", "initial_temperature": 100.0}
ARMS: dict[str, dict[str, Any]] = {
    "frosst -10": {"factor": -10.0, **FROSST},
    "frosst 0": {"factor": 0.0, **FROSST},
    "frosst +1": {"factor": 1.0, **FROSST},
    "default +1": {"factor": 1.0, "distance": "cosine", "temperature": "learned"},
}
HIDDEN = ("conv1", "conv2", "fc1")


def _mean_std(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.fmean(values):.{digits}f} ± {scale * std:.{digits}f}"


def tables(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Markdown: accuracy and entanglement per arm; then AUROC / FPR95 per arm and detector."""
    lines = [
        "| arm | ID test accuracy % | entanglement conv1 | conv2 | fc1 | final learned T "
        "conv1 / conv2 / fc1 |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for arm, splits in runs.items():
        ent = [_mean_std([s["entanglement"][h] for s in splits], 1.0, 3) for h in HIDDEN]
        temps = " / ".join(
            f"{statistics.fmean(s['temperature'][h] for s in splits):.3g}"
            for h in HIDDEN
            if h in splits[0]["temperature"]
        )
        acc = _mean_std([s["accuracy"] for s in splits])
        lines.append(f"| {arm} | {acc} | {' | '.join(ent)} | {temps or '-'} |")
    lines += [
        "",
        "AUROC % / FPR95 % (ID positive), mean ± std over the seeds; near = held-out digits, "
        "far = mean over Fashion-MNIST, noise, inverted and permuted. The best mean per column "
        "in bold.",
        "",
        "| arm | detector | near AUROC | near FPR95 | far AUROC | far FPR95 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    cells = [(g, m) for g in ("near", "far") for m in ("auroc", "fpr95")]
    rows = [(a, d) for a in runs for d in DETECTOR_ORDER if d in runs[a][0]["summary"]["near"]]

    def mean(arm: str, detector: str, group: str, metric: str) -> float:
        return statistics.fmean(s["summary"][group][detector][metric] for s in runs[arm])

    best = {
        (g, m): (min if m == "fpr95" else max)(round(100 * mean(a, d, g, m), 2) for a, d in rows)
        for g, m in cells
    }
    for arm, detector in rows:
        texts = []
        for g, m in cells:
            text = _mean_std([s["summary"][g][detector][m] for s in runs[arm]])
            bold = round(100 * mean(arm, detector, g, m), 2) == best[(g, m)]
            texts.append(f"**{text}**" if bold else text)
        lines.append(f"| {arm} | {detector} | {' | '.join(texts)} |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]
    return "\n".join(
        [
            "# SNNL factor -10 vs 0 vs +1 on MNIST (open-set split 0)",
            "",
            f"Command: `{results['command']}`. cnn2d, {cfg['epochs']} epochs, split {cfg['split']}"
            f" (known digits {', '.join(map(str, cfg['known']))}), training seeds "
            f"{', '.join(map(str, cfg['seeds']))}, served layers {', '.join(cfg['layers'])}, "
            f"{cfg['machine']}. Arms: "
            + "; ".join(f"`{arm}` {json.dumps(opts)}" for arm, opts in cfg["arms"].items())
            + ". Entanglement is measured in each run's own distance (squared euclidean for "
            "the frosst arms, cosine for default +1), so compare it within the frosst arms.",
            "",
            *tables(results["runs"]),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.mnist_factors", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--arms", default=",".join(ARMS), help=f"of {', '.join(ARMS)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--quick", action="store_true", help="small ID and OOD sets")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--work", type=Path, help="keep runs, models and reports here")
    args = parser.parse_args(argv)
    arms = {name: ARMS[name] for name in args.arms.split(",")}
    torch.set_num_threads(1)
    from bench.ood_benchmark import known_classes

    results: dict[str, Any] = {
        "command": ".venv/bin/python -m bench.mnist_factors",
        "config": {
            "split": SPLIT, "known": known_classes(SPLIT), "seeds": args.seeds,
            "epochs": args.epochs, "layers": list(LAYERS), "arms": arms, "quick": args.quick,
            "machine": f"{platform.machine()} CPU, 1 torch thread",
        },
        "runs": {},
    }  # fmt: skip
    stem = "mnist_factors_quick" if args.quick else "mnist_factors"
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = write_mnist_train(work)
        for arm, options in arms.items():
            results["runs"][arm] = []
            for seed in args.seeds:
                run = run_split(
                    SPLIT, data, work / arm.replace(" ", ""),
                    layers=LAYERS, quick=args.quick, seed=seed, epochs=args.epochs, **options,
                )  # fmt: skip
                results["runs"][arm].append(run)
                near = run["summary"]["near"]["soft_neighbor"]
                print(
                    f"{arm} seed {seed}: accuracy {run['accuracy']:.4f}, entanglement "
                    f"{run['entanglement']}, near AUROC {100 * near['auroc']:.2f} FPR95 "
                    f"{100 * near['fpr95']:.2f}",
                    flush=True,
                )
                save(args.out, stem, results)
    save(args.out, stem, results, markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
