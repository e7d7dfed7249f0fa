"""The MNIST open-set benchmark: 6 known / 4 unknown classes, 5 seeded splits, end to end.

Per split (seed s = 0..4): the 6 known classes are drawn by ``known_classes(s)``; a cnn2d is
trained on the official MNIST train images of those classes (SNNL factor, epochs and served
layers: the recipe chosen on in-distribution data only, docs/experiments/mnist.md), exported
(ONNX, reference set of the training split, calibration split), and evaluated with
``snnl.evaluation.benchmark.evaluate`` against every baseline on:

* ID: the official test images of the known classes;
* near-OOD ``held_out_classes``: the official test images of the 4 unknown classes;
* far-OOD ``fashion_mnist`` (Fashion-MNIST test images), ``noise`` (uniform pixels 0..255),
  ``inverted`` (255 - x) and ``permuted`` (each image's pixels shuffled), the last three made
  from the ID test images (``snnl.evaluation.ood_sets``).

Writes ``OUT/ood_benchmark.md`` (mean ± std over splits; the goals checked) and
``OUT/ood_benchmark.json`` (every split's metrics). Runs on the CPU with one torch thread.

    .venv/bin/python -m bench.ood_benchmark            # the full protocol
    .venv/bin/python -m bench.ood_benchmark --quick    # 2 splits, 1 epoch, subsets
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from snnl.training.loop import TrainSettings

KNOWN = 6
SPLITS = 5
CREATED = "2024-01-01T00:00:00Z"
# The recipe, chosen with in-distribution data only (bench/mnist_selection.py).
FACTOR = 1.0
EPOCHS = 10
NET = {"channels": [32, 64], "hidden": [256]}  # cnn2d widths
TRAIN: dict[str, Any] = {"lr_schedule": "cosine", "random_shift": 2}  # further TrainSettings
LAYERS = ("conv1", "conv2", "fc1")
EXPORT: dict[str, Any] = {  # further export_run options
    "mass_one_sided": ["conv1"],
    "mass_layer_weights": {"conv2": 2.0},
    "mass_geometry_weights": {"cosine": 2.0},
}
# Far-OOD subsets (samples per set) keep one split's evaluation near two minutes on 2 cores.
FAR_LIMITS = {"fashion_mnist": 5000, "noise": 1000, "inverted": 2000, "permuted": 2000}
DETECTOR_ORDER = ("soft_neighbor", "msp", "energy", "mahalanobis", "knn", "vim")
GOALS = "held_out_classes AUROC >= 99.0 and FPR95 <= 5%; fashion_mnist AUROC >= 99.9"


def known_classes(seed: int) -> list[int]:
    """The 6 known MNIST classes of split ``seed`` (the other 4 are unknown), sorted."""
    rng = np.random.default_rng(seed)
    return sorted(int(c) for c in rng.choice(10, KNOWN, replace=False))


def _subset(x: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or len(x) <= limit:
        return x
    keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:limit])
    return x[keep]


def train_or_reuse(settings: TrainSettings, run_dir: Path, reuse: bool) -> list[dict[str, Any]]:
    """Train ``settings`` into ``run_dir``, or with ``reuse`` keep the run
    already there (refused when it was trained with other settings, the data file's path
    aside); the run's history, one dict per epoch."""
    from snnl.training.loop import train
    from snnl.training.run import HISTORY_FILE, load_config

    if reuse and (run_dir / "config.json").is_file():
        fields = set(type(settings).model_fields) - {"dataset"}
        if load_config(run_dir).model_dump(include=fields) != settings.model_dump(include=fields):
            raise SystemExit(f"--reuse: {run_dir} was trained with other settings")
        lines = (run_dir / HISTORY_FILE).read_text().splitlines()
        return [json.loads(line) for line in lines]
    return [asdict(record) for record in train(settings, run_dir).history]


def run_split(
    split: int,
    data: Path,
    work: Path,
    *,
    layers: tuple[str, ...],
    quick: bool,
    seed: int | None = None,
    reuse: bool = False,
    export_options: dict[str, Any] | None = None,
    **train_options: Any,
) -> dict[str, Any]:
    """Train, export and evaluate split ``split``; its metrics, timings and training record.

    ``data``: the MNIST training images as an .npz (x, y). ``seed`` seeds the training (its
    train/calibration/validation split, init and batches; default: ``split``);
    ``train_options`` are further ``TrainSettings`` (factor, epochs, ...), ``export_options``
    further ``export_run`` options (e.g. ``mass_geometries``). Runs and models go
    under ``work``, named by split and seed; with ``reuse``, a run already there is exported
    and evaluated again without training.
    """
    from snnl.build.from_run import export_run
    from snnl.evaluation.benchmark import evaluate
    from snnl.evaluation.ood_sets import transform, uniform_noise
    from snnl.evaluation.report import write_report
    from snnl.model.detector import Detector
    from snnl.training.data import load_fashion_mnist, load_mnist
    from snnl.training.loop import TrainSettings

    known = known_classes(split)
    seed = split if seed is None else seed
    settings = TrainSettings(
        dataset=str(data), classes=known, arch="cnn2d", seed=seed,
        calibration_fraction=0.05, test_fraction=0.05, **train_options,
    )  # fmt: skip
    name = f"mnist-split{split}-seed{seed}"
    start = time.perf_counter()
    history = train_or_reuse(settings, work / name, reuse)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    export_run(
        work / name, work / "models", name, layers=list(layers), created=CREATED,
        **(export_options or {}),
    )  # fmt: skip
    export_s = time.perf_counter() - start

    test_x, test_y = load_mnist("test")
    is_known = np.isin(test_y, known)
    id_x = test_x[is_known].astype(np.float32)
    id_y = np.searchsorted(np.asarray(known), test_y[is_known])
    limit = 1000 if quick else None
    id_x, id_y = _subset(id_x, limit, split), _subset(id_y, limit, split)
    fashion = load_fashion_mnist("test")[0].astype(np.float32)
    far_limits = {k: (min(v, 500) if quick else v) for k, v in FAR_LIMITS.items()}
    ood = {
        "held_out_classes": _subset(test_x[~is_known].astype(np.float32), limit, split),
        "fashion_mnist": _subset(fashion, far_limits["fashion_mnist"], split),
        "noise": uniform_noise(id_x, far_limits["noise"], split),
        "inverted": _subset(transform(id_x, "invert"), far_limits["inverted"], split),
        "permuted": _subset(transform(id_x, "permute", split), far_limits["permuted"], split),
    }
    groups = {stem: ("near" if stem == "held_out_classes" else "far") for stem in ood}
    det = Detector.load(work / "models", name, device="cpu")
    start = time.perf_counter()
    evaluation = evaluate(det, id_x, id_y, ood, groups=groups)
    evaluate_s = time.perf_counter() - start
    write_report(evaluation, work / f"report-{name}")
    last = history[-1]
    return {
        "seed": split,
        "training_seed": seed,
        "known": known,
        "unknown": [c for c in range(10) if c not in known],
        "validation_accuracy": last["test_accuracy"],
        "train_accuracy": last["train_accuracy"],
        "entanglement": last["entanglement"],
        "temperature": last["temperature"],
        "accuracy": evaluation.accuracy,
        "flag_false_positive_rate": evaluation.flag_false_positive_rate,
        "sizes": evaluation.sizes,
        "ood": {
            stem: {d: m.as_dict() for d, m in per.items()} for stem, per in evaluation.ood.items()
        },
        "summary": {
            group: {d: m.as_dict() for d, m in per.items()}
            for group, per in evaluation.summary().items()
        },
        "seconds": {"train": train_s, "export": export_s, "evaluate": evaluate_s},
    }


def _mean_std(values: list[float], scale: float = 100.0) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.fmean(values):.2f} ± {scale * std:.2f}"


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def table(splits: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: per set (and near/far mean) and detector, AUROC / FPR95 / AUPR-In /
    AUPR-Out as mean ± std over splits, the best mean per set and column in bold."""
    rows = {**{f"{g} (mean)": ("summary", g) for g in ("near", "far")}}
    rows.update({stem: ("ood", stem) for stem in splits[0]["ood"]})
    metrics = (("auroc", True), ("fpr95", False), ("aupr", True), ("aupr_out", True))
    lines = [
        "| OOD set | detector | AUROC % | FPR95 % | AUPR-In % | AUPR-Out % |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label, (key, stem) in rows.items():
        detectors = [d for d in DETECTOR_ORDER if d in splits[0][key][stem]]
        means = {
            (d, m): _mean([s[key][stem][d][m] for s in splits])
            for d in detectors
            for m, _ in metrics
        }
        best = {
            m: (max if higher else min)(round(100 * means[(d, m)], 2) for d in detectors)
            for m, higher in metrics
        }
        for d in detectors:
            cells = []
            for m, _ in metrics:
                text = _mean_std([s[key][stem][d][m] for s in splits])
                cells.append(f"**{text}**" if round(100 * means[(d, m)], 2) == best[m] else text)
            lines.append(f"| {label} | {d} | {' | '.join(cells)} |")
    return lines


def goals(splits: list[dict[str, Any]]) -> list[str]:
    """Each goal with the measured mean and whether it is met."""

    def mean(stem: str, detector: str, metric: str) -> float:
        return 100 * _mean([s["ood"][stem][detector][metric] for s in splits])

    checks = [
        ("held_out_classes AUROC >= 99.0", mean("held_out_classes", "soft_neighbor", "auroc"),
         lambda v: v >= 99.0),
        ("held_out_classes FPR95 <= 5%", mean("held_out_classes", "soft_neighbor", "fpr95"),
         lambda v: v <= 5.0),
        ("fashion_mnist AUROC >= 99.9", mean("fashion_mnist", "soft_neighbor", "auroc"),
         lambda v: v >= 99.9),
    ]  # fmt: skip
    lines = [f"- {name}: {value:.3f} — {'met' if ok(value) else 'NOT met'}"
             for name, value, ok in checks]  # fmt: skip
    for stem in splits[0]["ood"]:
        baselines = [d for d in DETECTOR_ORDER[1:] if d in splits[0]["ood"][stem]]
        ours_auroc = mean(stem, "soft_neighbor", "auroc")
        ours_fpr = mean(stem, "soft_neighbor", "fpr95")
        best_auroc = max(baselines, key=lambda d: mean(stem, d, "auroc"))
        best_fpr = min(baselines, key=lambda d: mean(stem, d, "fpr95"))
        ok = round(ours_auroc, 2) >= round(mean(stem, best_auroc, "auroc"), 2) and round(
            ours_fpr, 2
        ) <= round(mean(stem, best_fpr, "fpr95"), 2)
        lines.append(
            f"- {stem}: soft_neighbor AUROC {ours_auroc:.2f} vs best baseline {best_auroc} "
            f"{mean(stem, best_auroc, 'auroc'):.2f}; FPR95 {ours_fpr:.2f} vs {best_fpr} "
            f"{mean(stem, best_fpr, 'fpr95'):.2f} — {'met' if ok else 'NOT met'}"
        )
    return lines


def markdown(results: dict[str, Any]) -> str:
    splits = results["splits"]
    cfg = results["config"]
    acc = _mean_std([s["accuracy"] for s in splits])
    flag = _mean_std([s["flag_false_positive_rate"] for s in splits])
    seconds = {k: _mean([s["seconds"][k] for s in splits]) for k in ("train", "export", "evaluate")}
    known = "; ".join(f"{s['seed']}: {','.join(map(str, s['known']))}" for s in splits)
    sizes = splits[0]["sizes"]
    return "\n".join(
        [
            "# MNIST open-set benchmark (6 known / 4 unknown classes)",
            "",
            f"Command: `{results['command']}`{' (quick run)' if cfg['quick'] else ''}. "
            f"{len(splits)} splits (known classes by seed: {known}"
            + (
                f"; training seeds {', '.join(str(s['training_seed']) for s in splits)}"
                if any(s["training_seed"] != s["seed"] for s in splits)
                else ""
            )
            + ").",
            "",
            f"Recipe (docs/experiments/mnist.md says how it was chosen): cnn2d"
            f"{' ' + json.dumps(cfg['net_kwargs']) if cfg.get('net_kwargs') else ''}, "
            f"SNNL factor {cfg['factor']:g} (cosine, learned temperature, every hidden layer), "
            + "".join(f"{k} {v}, " for k, v in cfg.get("train_kwargs", {}).items())
            + f"{cfg['epochs']} epochs on the known classes' official training images (90% "
            f"training / 5% calibration / 5% validation), served layers "
            f"{', '.join(cfg['layers'])}, "
            + "".join(f"{k} {v}, " for k, v in cfg.get("export_kwargs", {}).items())
            + "the export's default temperature rule and neighbor-mass nonconformity.",
            "",
            f"ID test accuracy {acc}%, flag false-positive rate on ID {flag}% (alpha 5%). "
            f"Samples of split 0: ID {sizes['id']}, "
            + ", ".join(f"{k} {v}" for k, v in sizes["ood"].items())
            + f". Mean time per split on {cfg['machine']}: train "
            + (
                "(runs reused, trained earlier by the same recipe)"
                if cfg.get("reuse")
                else f"{seconds['train']:.0f} s"
            )
            + ", "
            f"export {seconds['export']:.0f} s, evaluate {seconds['evaluate']:.0f} s.",
            "",
            "Mean ± std over splits, in %; the best mean of every column per set in bold "
            "(lowest for FPR95). near: held_out_classes; far: the other sets.",
            "",
            *table(splits),
            "",
            f"## Goals ({GOALS}; on every set at least as good as the best baseline)",
            "",
            *goals(splits),
            "",
        ]
    )


def write_mnist_train(work: Path) -> Path:
    """The official MNIST training images as ``work/mnist_train.npz`` (x float32, y): the
    ``data`` of :func:`run_split`."""
    from snnl.training.data import load_mnist

    path = work / "mnist_train.npz"
    x, y = load_mnist("train")
    np.savez(path, x=x.astype(np.float32), y=y)
    return path


def save(out: Path, stem: str, results: dict[str, Any], text: str | None = None) -> None:
    """Write ``out/stem.json`` (``results``) and, with ``text``, ``out/stem.md``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    if text is not None:
        (out / f"{stem}.md").write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ood_benchmark", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="2 splits, 1 epoch, small sets")
    parser.add_argument("--splits", type=int, default=None, help=f"default {SPLITS} (quick: 2)")
    parser.add_argument("--epochs", type=int, default=None, help=f"default {EPOCHS} (quick: 1)")
    parser.add_argument("--factor", type=float, default=FACTOR)
    parser.add_argument("--layers", default=",".join(LAYERS), help="served layers")
    parser.add_argument(
        "--net-kwargs",
        type=json.loads,
        default=NET,
        help=f"cnn2d widths, default {json.dumps(NET)}",
    )
    parser.add_argument(
        "--train-kwargs",
        type=json.loads,
        default=TRAIN,
        help=f"further training settings, default {json.dumps(TRAIN)}",
    )
    parser.add_argument(
        "--export-kwargs",
        type=json.loads,
        default=EXPORT,
        help=f"further export options, default {json.dumps(EXPORT)}",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--work", type=Path, help="keep runs, models and reports here")
    parser.add_argument(
        "--reuse", action="store_true", help="export and evaluate the runs already under --work"
    )
    parser.add_argument(
        "--training-seed-offset",
        type=int,
        default=0,
        help="seed split s's training with s + this (default 0: the split's seed); another "
        "offset trains other runs of the same splits",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    splits = args.splits or (2 if args.quick else SPLITS)
    epochs = args.epochs or (1 if args.quick else EPOCHS)
    layers = tuple(args.layers.split(","))
    config = {
        "splits": splits, "epochs": epochs, "factor": args.factor, "layers": list(layers),
        "net_kwargs": args.net_kwargs, "train_kwargs": args.train_kwargs,
        "export_kwargs": args.export_kwargs,
        "quick": args.quick, "threads": args.threads, "reuse": args.reuse,
        "training_seed_offset": args.training_seed_offset,
        "machine": f"{platform.machine()} CPU, {args.threads} torch thread(s)",
    }  # fmt: skip
    results: dict[str, Any] = {
        "command": shlex.join(
            [
                ".venv/bin/python",
                "-m",
                "bench.ood_benchmark",
                *(sys.argv[1:] if argv is None else argv),
            ]
        ),
        "config": config,
        "splits": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = write_mnist_train(work)
        for seed in range(splits):
            split = run_split(
                seed, data, work, layers=layers, quick=args.quick, reuse=args.reuse,
                seed=seed + args.training_seed_offset, export_options=args.export_kwargs,
                epochs=epochs, factor=args.factor, net_kwargs=args.net_kwargs,
                **args.train_kwargs,
            )  # fmt: skip
            results["splits"].append(split)
            near = split["ood"]["held_out_classes"]["soft_neighbor"]
            print(
                f"split {seed} (known {split['known']}): accuracy {split['accuracy']:.4f}, "
                f"held-out classes AUROC {100 * near['auroc']:.2f} FPR95 "
                f"{100 * near['fpr95']:.2f}, seconds {split['seconds']}",
                flush=True,
            )
    stem = "ood_benchmark_quick" if args.quick else "ood_benchmark"
    save(args.out, stem, results, markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
