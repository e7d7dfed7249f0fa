"""``snnl train``: train a net with CE + factor * SNNL and write a run directory (SPEC §4)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from snnl.core.distances import DISTANCES
from snnl.errors import InputError
from snnl.training.nets import ARCHS
from snnl.training.run import DEFAULT_FACTOR, DEFAULT_TEMPERATURE, TemperatureSetting, TrainSettings

DEFAULT_ARCH = {"mnist1d": "cnn1d"}


def _classes(text: str) -> list[int]:
    try:
        classes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated class ids, got {text!r}"
        ) from err
    if not classes:
        raise argparse.ArgumentTypeError("expected at least one class id")
    return classes


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated layer names")
    return names


def _temperature(text: str) -> TemperatureSetting:
    if text in ("learned", "annealed"):
        return text  # type: ignore[return-value]
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected learned, annealed or a positive number, got {text!r}"
        ) from err
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"temperature must be a positive number, got {text!r}")
    return value


def add_parser(subparsers: Any) -> None:
    """Register ``snnl train``."""
    parser = subparsers.add_parser(
        "train",
        help="train a net with the SNNL regularizer and write a run directory",
        description=(
            "Train with loss = CE + factor * sum over hidden layers of SNNL. Prints per epoch "
            "the loss, accuracies and each layer's entanglement; writes config.json, "
            "model.safetensors, split.npz, history.jsonl and entanglement.png to --out."
        ),
    )
    parser.add_argument("--data", required=True, help="digits, mnist1d or a FILE.npz (x, y)")
    parser.add_argument(
        "--classes", type=_classes, default=None, help="train on these class ids only, e.g. 0,1,2"
    )
    parser.add_argument(
        "--snnl-layers",
        type=_names,
        default=None,
        help="comma-separated layers whose SNNL enters the loss (default: all hidden layers)",
    )
    parser.add_argument(
        "--arch", choices=ARCHS, default=None, help="default: cnn1d for mnist1d, else mlp"
    )
    parser.add_argument(
        "--factor",
        type=float,
        default=DEFAULT_FACTOR,
        help=(
            f"SNNL weight; > 0 clusters classes, < 0 entangles them, each row's term then "
            f"bounded at -log(1e-5) (default {DEFAULT_FACTOR})"
        ),
    )
    parser.add_argument(
        "--temperature",
        type=_temperature,
        default=DEFAULT_TEMPERATURE,
        help=f"learned, annealed or a fixed number (default {DEFAULT_TEMPERATURE})",
    )
    parser.add_argument("--distance", choices=DISTANCES, default="cosine")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam step size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the nets are small, more threads mostly add overhead)",
    )
    parser.add_argument("--out", required=True, type=Path, help="run directory to write")
    parser.set_defaults(run=run)


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """Validated settings; InputError naming the first bad option."""
    try:
        return TrainSettings(
            dataset=args.data,
            classes=args.classes,
            arch=args.arch or DEFAULT_ARCH.get(args.data, "mlp"),
            snnl_layers=args.snnl_layers,
            seed=args.seed,
            factor=args.factor,
            temperature=args.temperature,
            distance=args.distance,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            calibration_fraction=args.calibration_fraction,
            test_fraction=args.test_fraction,
        )
    except ValidationError as err:
        first = err.errors()[0]
        option = "--" + str(first["loc"][0]).replace("_", "-")
        raise InputError(f"{option}: {first['msg']}") from err


def run(args: argparse.Namespace) -> int:
    """Train and write the run directory; one line per epoch on stdout, a progress bar on stderr."""
    import torch
    from tqdm import tqdm

    from snnl.training.loop import EpochRecord, prepare_run, train

    settings = settings_from_args(args)
    if args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} exists and is not a directory")
    start = prepare_run(settings)
    args.out.mkdir(parents=True, exist_ok=True)  # fail on an unwritable --out before training
    with tqdm(total=settings.epochs, desc="train", unit="epoch", file=sys.stderr) as bar:

        def report(record: EpochRecord) -> None:
            layers = " ".join(f"{k}={v:.4f}" for k, v in record.entanglement.items())
            tqdm.write(
                f"epoch {record.epoch}/{settings.epochs} loss {record.loss:.4f} "
                f"train_accuracy {record.train_accuracy:.4f} "
                f"test_accuracy {record.test_accuracy:.4f} entanglement {layers}",
                file=sys.stdout,
            )
            bar.update(1)

        train(start, args.out, on_epoch=report)
    print(f"wrote {args.out}")
    return 0
