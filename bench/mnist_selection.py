"""Choose the MNIST recipe with in-distribution data only: leave one known class out.

For the first split of the 6-known / 4-unknown protocol (``bench/ood_benchmark.py``'s seed 0),
each fold trains on 5 of the 6 known classes (official MNIST train part) and treats the 6th
known class as the out-of-distribution set. The 4 unknown classes and Fashion-MNIST are never
loaded. Per fold and setting: validation accuracy (the run's test split), and AUROC / FPR95 of
the served detector and the baselines on "validation split of the 5 classes" vs "the held-out
known class" (official train images of that class, never trained on by that fold's model).

With ``--far``, three far-OOD stand-ins are also scored, made only from other images of the
held-out known class (``far_proxies``): strokes without a digit's shape or no strokes at all,
which is what sets far-OOD data apart from an atypical known digit. They were fixed before any
measurement and differ from the benchmark's far sets (noise, inverted, pixel-shuffled digits,
Fashion-MNIST), none of which is loaded here:

* ``blurred``: each image under a Gaussian blur of 2 pixels, rescaled to a peak of 255 (a blob);
* ``dilated``: each image's grey-level dilation over 5 x 5 pixels (strokes thickened into
  filled shapes);
* ``mosaic``: each quarter of the image taken from another random image of the class, turned by
  a random multiple of 90 degrees (digit strokes in no digit's arrangement).

Settings compared: the SNNL factor (0 = plain cross-entropy, +1 = cosine SNNL on every hidden
layer), the served layers (fc1; conv2 + fc1; conv1 + conv2 + fc1), the epochs (validation
accuracy is recorded after each), the net's widths (``--net-kwargs``), further training settings
(``--train-kwargs``) and export options (``--exports``: e.g. the neighbor mass's perplexity and
distances); ``--work DIR --reuse`` evaluates other exports of fold runs kept earlier.

    .venv/bin/python -m bench.mnist_selection --json bench/results/mnist_selection.json

One torch thread; about 15 minutes on the shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from bench.ood_benchmark import known_classes, train_or_reuse
from snnl.build.from_run import export_run
from snnl.evaluation.benchmark import evaluate
from snnl.model.detector import Detector
from snnl.training.data import load_mnist
from snnl.training.loop import TrainSettings, load_run

LAYER_SETS: dict[str, list[str]] = {
    "fc1": ["fc1"],
    "conv2+fc1": ["conv2", "fc1"],
    "conv1+conv2+fc1": ["conv1", "conv2", "fc1"],
}
CREATED = "2024-01-01T00:00:00Z"
FAR_PROXIES = ("blurred", "dilated", "mosaic")


def far_proxies(images: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """The far-OOD stand-ins of the module doc, {name: (N, 28, 28) float32}, from 28 x 28
    pixel images (N, 28, 28) with values 0..255."""
    x = images.astype(np.float32)
    blurred = ndimage.gaussian_filter(x, sigma=(0, 2, 2))
    blurred *= 255.0 / np.maximum(blurred.max(axis=(1, 2), keepdims=True), 1e-6)
    np.minimum(blurred, 255.0, out=blurred)
    dilated = ndimage.grey_dilation(x, size=(1, 5, 5))
    rng = np.random.default_rng(seed)
    mosaic = np.empty_like(x)
    half = x.shape[1] // 2
    for rows in (slice(0, half), slice(half, None)):
        for cols in (slice(0, half), slice(half, None)):
            source = x[rng.integers(len(x), size=len(x))]
            turns = rng.integers(4, size=len(x))
            for k in range(4):
                mosaic[turns == k, rows, cols] = np.rot90(source[turns == k], k, axes=(1, 2))[
                    :, rows, cols
                ]
    return {"blurred": blurred, "dilated": dilated, "mosaic": mosaic}


def fold(
    train_file: Path,
    known: list[int],
    held_out: int,
    factor: float,
    epochs: int,
    work: Path,
    limit: int,
    exports: dict[str, dict[str, Any]],
    net_kwargs: dict[str, object],
    train_kwargs: dict[str, object],
    reuse: bool,
    far: bool = False,
    seed: int = 0,
) -> list[dict[str, object]]:
    """Train on ``known`` minus ``held_out`` (or, with ``reuse``, load the run already under
    ``work``); evaluate each export ({name: export_run options}) against the held-out class
    (first ``limit`` images) and, with ``far``, against ``far_proxies`` of its next ``limit``
    images. ``seed`` seeds the fold's run (its split, initialization and batches)."""
    x, y = load_mnist("train")
    classes = [c for c in known if c != held_out]
    settings = TrainSettings(
        dataset=str(train_file), classes=classes, arch="cnn2d", factor=factor, epochs=epochs,
        seed=seed, calibration_fraction=0.05, test_fraction=0.1, net_kwargs=net_kwargs,
        **train_kwargs,
    )  # fmt: skip
    start = time.perf_counter()
    history = train_or_reuse(settings, work / "run", reuse)
    split = load_run(work / "run").split
    train_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    keep = np.sort(rng.permutation(len(split.y_test))[:limit])
    id_x, id_y = split.x_test[keep], split.y_test[keep]
    held_x = x[y == held_out]
    ood = {"held_out": held_x[:limit].astype(np.float32)}
    if far:
        ood.update(far_proxies(held_x[limit : 2 * limit], seed=held_out))
    rows = []
    for name, options in exports.items():
        export_run(work / "run", work / "models", "m", created=CREATED, **options)
        det = Detector.load(work / "models", "m", device="cpu")
        start = time.perf_counter()
        ev = evaluate(det, id_x, id_y, ood)
        metrics = {s: {d: m.as_dict() for d, m in per.items()} for s, per in ev.ood.items()}
        rows.append(
            {
                "held_out": held_out,
                "factor": factor,
                "net_kwargs": net_kwargs,
                "train_kwargs": train_kwargs,
                "epochs": epochs,
                "seed": seed,
                "layers": name,
                "export": options,
                "val_accuracy": history[-1]["test_accuracy"],
                "val_accuracy_per_epoch": [r["test_accuracy"] for r in history],
                "train_seconds": train_s,
                "eval_seconds": time.perf_counter() - start,
                "metrics": metrics["held_out"],
                **({"far": {s: metrics[s] for s in FAR_PROXIES}} if far else {}),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        for path in (work / "models" / "m").iterdir():
            path.unlink()
        (work / "models" / "m").rmdir()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.mnist_selection", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--folds", type=int, default=2, help="held-out known classes to try")
    parser.add_argument(
        "--held-out", help="comma-separated known classes to hold out (default: the first --folds)"
    )
    parser.add_argument(
        "--layer-sets", default=",".join(LAYER_SETS), help="served layer sets to compare"
    )
    parser.add_argument("--factors", default="0,1")
    parser.add_argument("--limit", type=int, default=1000, help="ID / OOD samples per fold")
    parser.add_argument(
        "--net-kwargs",
        type=json.loads,
        default={},
        help='cnn2d widths, e.g. {"channels": [32, 64]}',
    )
    parser.add_argument(
        "--train-kwargs",
        type=json.loads,
        default={},
        help='further training settings, e.g. {"lr_schedule": "cosine", "random_shift": 2}',
    )
    parser.add_argument(
        "--exports",
        type=json.loads,
        help="export_run options to compare instead of --layer-sets, a JSON list, e.g. "
        '[{"layers": ["conv2", "fc1"], "mass_perplexity": 10}]',
    )
    parser.add_argument("--work", type=Path, help="keep the fold runs here (default: a temp dir)")
    parser.add_argument(
        "--reuse", action="store_true", help="evaluate the fold runs already under --work"
    )
    parser.add_argument(
        "--far", action="store_true", help="also score the far-OOD stand-ins (far_proxies)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="training seed of the fold runs (split, init, batches)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    known = known_classes(0)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        x, y = load_mnist("train")
        train_file = Path(tmp) / "train.npz"
        np.savez(train_file, x=x.astype(np.float32), y=y)
        del x, y
        held = [int(c) for c in args.held_out.split(",")] if args.held_out else known[: args.folds]
        chosen = (
            {json.dumps(options): options for options in args.exports}
            if args.exports
            else {name: {"layers": LAYER_SETS[name]} for name in args.layer_sets.split(",")}
        )
        for held_out in held:
            for factor in (float(f) for f in args.factors.split(",")):
                work = root / f"{held_out}_{factor}"
                rows += fold(
                    train_file, known, held_out, factor, args.epochs, work, args.limit, chosen,
                    args.net_kwargs, args.train_kwargs, args.reuse, args.far, args.seed,
                )  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"known": known, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
