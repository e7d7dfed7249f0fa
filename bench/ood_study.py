"""OOD study: the soft-neighbor detector against MSP, energy, Mahalanobis, KNN.

For digits (MLP) and mnist1d (1-D CNN), trained on classes 0-4 with SNNL factor 0, -10 and +1:
train -> export (the product's defaults) -> evaluate on the run's test split (ID) against six OOD
sets made from data the model never saw:

    classes   the held-out classes 5-9 (all samples of the dataset)
    noise     500 uniform samples over the training data's value range
    invert    the ID test samples, x' = lo + hi - x
    scale4    the ID test samples times 4
    permute   each ID test sample's features in random order
    shift     the ID test samples + 0.5 (hi - lo)

The served detector ``soft_neighbor`` is the model's nonconformity (the default neighbor-mass);
``soft_neighbor_ratio`` is the textbook sum_l -log s_l on the same export. Then ablations of the
ratio (temperature rule, served layers; re-exports with ``nonconformity="neg-log-score"``) and of
the mass (one geometry only; re-exports with ``mass_geometries``). Everything is fitted on
in-distribution data only. The flag's false-positive rate on ID data is measured on the test
split and as the mean over 1000 random calibration/test re-splits of the pooled
calibration + test scores.

    .venv/bin/python -m bench.ood_study --work runs/ood_study --json bench/results/ood_study.json

Prints markdown tables. One torch thread; about 3-4 minutes for one seed on the 2-core dev
machine (training dominates; runs already in --work are reused, exports are redone).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from snnl.build.from_run import export_run
from snnl.evaluation.benchmark import evaluate
from snnl.evaluation.ood_metrics import ood_metrics
from snnl.evaluation.ood_sets import transform, uniform_noise
from snnl.model.detector import Detector
from snnl.training.data import Split, load_dataset
from snnl.training.loop import TrainSettings, train
from snnl.training.run import SPLIT_FILE

SETUPS: dict[str, dict[str, object]] = {  # as bench/train_factors.py
    "digits": {"arch": "mlp", "epochs": 30, "lr": 1e-3},
    "mnist1d": {"arch": "cnn1d", "epochs": 40, "lr": 3e-3},
}
FACTORS = (0.0, -10.0, 1.0)
IN_CLASSES = [0, 1, 2, 3, 4]
OUT_CLASSES = [5, 6, 7, 8, 9]
CREATED = "2024-01-01T00:00:00Z"
# Ratio (neg-log-score) variants: (tag, temperature rule, first layer only).
# The default (all layers, the default rule) is the main table's soft_neighbor_ratio row.
VARIANTS = (
    ("default-first", None, True),
    ("ppl30-all", "perplexity:30", False),
    ("minsnnl-all", "min-snnl", False),
    ("T0.1-all", "0.1", False),
    ("T1-all", "1.0", False),
)
MASS_VARIANTS = (("mass-cos", ("cosine",)), ("mass-euc", ("euclidean",)))
RESPLITS = 1000


def ood_sets(dataset: str, split: Split, seed: int) -> dict[str, np.ndarray]:
    """The six OOD sets of the module docstring, float32."""
    x = split.x_test
    return {
        "classes": load_dataset(dataset, OUT_CLASSES).x,
        "noise": uniform_noise(split.x_train, 500, seed=seed + 1),
        "invert": transform(x, "invert"),
        "scale4": transform(x, "scale=4"),
        "permute": transform(x, "permute", seed=seed),
        "shift": transform(x, "shift=0.5"),
    }


def aurocs(id_scores: np.ndarray, ood_scores: dict[str, np.ndarray]) -> dict[str, float]:
    """{set: AUROC %}."""
    return {stem: 100 * ood_metrics(id_scores, s).auroc for stem, s in ood_scores.items()}


def variant(
    run_dir: Path, work: Path, name: str, options: dict, x: np.ndarray, sets: dict
) -> dict[str, float]:
    """AUROC % of -nonconformity of a re-export of the run with ``options`` (export_run)."""
    export_run(run_dir, work / "models", name, created=CREATED, **options)
    det = Detector.load(work / "models", name, device="cpu")
    id_scores = -det.score(x).nonconformity
    return aurocs(id_scores, {stem: -det.score(s).nonconformity for stem, s in sets.items()})


def resplit_flag_rate(det: Detector, split: Split, alpha: float, seed: int) -> float:
    """Mean flag rate over RESPLITS random calibration/test re-splits of the pooled calibration
    + test nonconformities (same calibration size): p = (1 + #{a_i >= a}) / (n + 1) < alpha."""
    a = np.concatenate(
        [det.score(split.x_calibration).nonconformity, det.score(split.x_test).nonconformity]
    )
    n = len(split.y_calibration)
    rng = np.random.default_rng(seed)
    rates = []
    for _ in range(RESPLITS):
        order = rng.permutation(len(a))
        calibration = np.sort(a[order[:n]])
        below = np.searchsorted(calibration, a[order[n:]], side="left")
        rates.append(np.mean((1.0 + n - below) / (n + 1.0) < alpha))
    return float(np.mean(rates))


def study_one(dataset: str, factor: float, seed: int, work: Path) -> dict[str, object]:
    """Train (or reuse), export, evaluate and ablate one (dataset, factor, seed)."""
    name = f"{dataset}-f{factor:g}-s{seed}"
    run_dir = work / "runs" / name
    start = time.perf_counter()
    if not (run_dir / "model.safetensors").is_file():
        settings = TrainSettings(
            dataset=dataset, classes=IN_CLASSES, factor=factor, seed=seed, **SETUPS[dataset]
        )
        train(settings, run_dir)
    trained = time.perf_counter()
    manifest = export_run(run_dir, work / "models", name, created=CREATED)
    det = Detector.load(work / "models", name, device="cpu")
    split = Split.load(run_dir / SPLIT_FILE)
    sets = ood_sets(dataset, split, seed)
    ev = evaluate(det, split.x_test, split.y_test, sets)
    table = {
        detector: {stem: 100 * ev.ood[stem][detector].auroc for stem in sets}
        for detector in ev.id_scores
    }
    first_layer = [json.loads((run_dir / "config.json").read_text())["hidden_layers"][0]]
    for tag, rule, first in VARIANTS:
        options: dict = {"nonconformity": "neg-log-score"}
        if rule is not None:
            options["temperature_rule"] = rule
        if first:
            options["layers"] = first_layer
        table[f"ratio:{tag}"] = variant(run_dir, work, f"{name}-{tag}", options, split.x_test, sets)
    for tag, geometries in MASS_VARIANTS:
        options = {"mass_geometries": geometries}
        table[tag] = variant(run_dir, work, f"{name}-{tag}", options, split.x_test, sets)
    return {
        "dataset": dataset,
        "factor": factor,
        "seed": seed,
        "accuracy": ev.accuracy,
        "flag_false_positive_rate": ev.flag_false_positive_rate,
        "resplit_flag_rate": resplit_flag_rate(det, split, manifest.alpha, seed),
        "test_size": len(split.y_test),
        "calibration_size": len(split.y_calibration),
        "temperatures": {layer.name: layer.temperature for layer in manifest.layers},
        "entanglement": ev.entanglement,
        "auroc": table,
        "fpr95": {d: {s: 100 * ev.ood[s][d].fpr95 for s in sets} for d in ev.id_scores},
        "train_seconds": trained - start,
        "seconds": time.perf_counter() - start,
    }


MAIN = ("soft_neighbor", "msp", "energy", "mahalanobis", "knn", "soft_neighbor_ratio")
BASELINES = ("msp", "energy", "mahalanobis", "knn")


def main_table(results: list[dict]) -> str:
    """Per (dataset, factor): AUROC % per OOD set and the mean, for the report's detectors; the
    served mean in bold where it beats every baseline's mean."""
    stems = list(results[0]["auroc"]["soft_neighbor"])
    lines = [
        "| data | factor | acc % | flag FPR % (test, re-splits) | detector | "
        + " | ".join(stems)
        + " | mean |",
        "|---|---:|---:|---:|---|" + "---:|" * (len(stems) + 1),
    ]
    for r in results:
        base = max(statistics.fmean(r["auroc"][d].values()) for d in BASELINES)
        for d in MAIN:
            values = [r["auroc"][d][s] for s in stems]
            mean = statistics.fmean(values)
            mark = "**" if d == "soft_neighbor" and mean > base else ""
            lines.append(
                f"| {r['dataset']} | {r['factor']:g} | {100 * r['accuracy']:.1f} "
                f"| {100 * r['flag_false_positive_rate']:.1f}, "
                f"{100 * r['resplit_flag_rate']:.2f} | {d} | "
                + " | ".join(f"{v:.1f}" for v in values)
                + f" | {mark}{mean:.1f}{mark} |"
            )
    return "\n".join(lines)


def wins(results: list[dict]) -> str:
    """How often the served detector beats (> 0.1), ties (within 0.1) or loses to the best
    baseline, over every (model, OOD set) cell."""
    counts = {"win": 0, "tie": 0, "loss": 0}
    losses = []
    for r in results:
        for stem, served in r["auroc"]["soft_neighbor"].items():
            best = max(r["auroc"][d][stem] for d in BASELINES)
            key = "win" if served > best + 0.1 else "tie" if served >= best - 0.1 else "loss"
            counts[key] += 1
            if key == "loss":
                losses.append(f"{r['dataset']} {r['factor']:g} {stem}: {served:.1f} vs {best:.1f}")
    return f"{counts} losses: {losses}"


def ablation_table(results: list[dict]) -> str:
    """Mean AUROC % over the OOD sets (and on 'classes') of the variants."""
    keys = ["soft_neighbor_ratio"] + [f"ratio:{tag}" for tag, _, _ in VARIANTS]
    keys += [t for t, _ in MASS_VARIANTS] + ["soft_neighbor"]
    lines = [
        "| data | factor | " + " | ".join(keys) + " |",
        "|---|---:|" + "---:|" * len(keys),
    ]
    for r in results:
        cells = [
            f"{statistics.fmean(r['auroc'][k].values()):.1f} ({r['auroc'][k]['classes']:.1f})"
            for k in keys
        ]
        lines.append(f"| {r['dataset']} | {r['factor']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ood_study", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--work", type=Path, default=Path("runs/ood_study"))
    parser.add_argument("--datasets", default="digits,mnist1d")
    parser.add_argument("--factors", default=",".join(f"{f:g}" for f in FACTORS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for dataset in args.datasets.split(","):
        for factor in (float(f) for f in args.factors.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                result = study_one(dataset, factor, seed, args.work)
                print(
                    f"{dataset} factor {factor:g} seed {seed}: {result['seconds']:.0f} s",
                    file=sys.stderr,
                )
                results.append(result)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print("## AUROC % per OOD set\n")
    print(main_table(results))
    print("\nServed vs best baseline per cell:", wins(results))
    print("\n## Ablations: mean AUROC % over the six OOD sets (AUROC % on held-out classes)\n")
    print(ablation_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
