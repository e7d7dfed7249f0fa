"""``snnl train``: train a net with CE + factor * SNNL and write a run directory."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snnl.cli.common import (
    ARCHS,
    BUILTIN_DATASETS,
    DEFAULT_FACTOR,
    DEFAULT_TEMPERATURE,
    DISTANCES,
    class_ids,
    comma_list,
    dataset,
)
from snnl.errors import InputError

if TYPE_CHECKING:
    from snnl.training.run import TemperatureSetting, TrainSettings

DEFAULT_ARCH = {"mnist1d": "cnn1d", "mnist": "cnn2d", "fashion-mnist": "cnn2d"}


def _temperature(text: str) -> TemperatureSetting | float:
    if text in ("learned", "annealed"):
        return text  # type: ignore[return-value]  # one of the two literals
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected learned, annealed or a positive number, got {text!r}"
        ) from err
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"temperature must be a positive number, got {text!r}")
    return value


def _widths(text: str) -> list[int]:
    """argparse type: "32,64" -> [32, 64]; positive layer widths."""
    try:
        widths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated widths, got {text!r}") from err
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected positive comma-separated widths, got {text!r}")
    return widths


def net_kwargs(arch: str, channels: list[int] | None, hidden: list[int] | None) -> dict[str, Any]:
    """The net's widths from ``--channels`` / ``--hidden`` (None: the architecture's default).

    mlp: ``hidden`` lists the dense widths (no channels); cnn1d: two ``channels`` and one
    ``hidden`` width; cnn2d: two ``channels`` and one or more ``hidden`` dense widths."""
    kwargs: dict[str, Any] = {}
    if channels is not None:
        if arch == "mlp":
            raise InputError("--channels: the mlp has no convolutions (use --hidden)")
        if len(channels) != 2:
            raise InputError(f"--channels: {arch} takes 2 widths, got {channels}")
        kwargs["channels"] = channels
    if hidden is not None:
        if arch == "cnn1d" and len(hidden) != 1:
            raise InputError(f"--hidden: cnn1d takes 1 dense width, got {hidden}")
        kwargs["hidden"] = hidden[0] if arch == "cnn1d" else hidden
    return kwargs


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
    parser.add_argument(
        "--data",
        required=True,
        type=dataset,
        help=f"{', '.join(BUILTIN_DATASETS)} or a FILE.npz (x, y)",
    )
    parser.add_argument(
        "--classes",
        type=class_ids,
        default=None,
        help="train on these class ids only, e.g. 0,1,2 (default: every class)",
    )
    parser.add_argument(
        "--snnl-layers",
        type=comma_list,
        default=None,
        help="comma-separated layers whose SNNL enters the loss (default: all hidden layers)",
    )
    parser.add_argument(
        "--arch",
        choices=ARCHS,
        default=None,
        help="the net (default: cnn1d for mnist1d, cnn2d for mnist and fashion-mnist, else mlp)",
    )
    parser.add_argument(
        "--channels",
        type=_widths,
        default=None,
        help="conv widths of cnn1d / cnn2d, e.g. 32,64 (default 32,32 and 16,32)",
    )
    parser.add_argument(
        "--hidden",
        type=_widths,
        default=None,
        help="dense widths: mlp e.g. 256,128,64 (the default); cnn2d e.g. 256 (default 128); "
        "cnn1d one width (default 128)",
    )
    parser.add_argument(
        "--factor",
        type=float,
        default=DEFAULT_FACTOR,
        help="SNNL weight: > 0 pulls classes apart, < 0 entangles them (each row's term is then "
        "bounded at -log(1e-5)); 0 is plain cross-entropy",
    )
    parser.add_argument(
        "--temperature",
        type=_temperature,
        default=DEFAULT_TEMPERATURE,
        help="the loss's T: learned, annealed or a fixed positive number",
    )
    parser.add_argument(
        "--initial-temperature",
        type=float,
        default=1.0,
        help="where a learned T starts (e.g. 100 for squared-euclidean distances of raw features)",
    )
    parser.add_argument(
        "--distance", choices=DISTANCES, default="cosine", help="distance inside the SNNL"
    )
    parser.add_argument("--epochs", type=int, default=30, help="passes over the training split")
    parser.add_argument("--batch-size", type=int, default=128, help="samples per Adam step")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam step size")
    parser.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="Adam's step over training: constant, or cosine decay from --lr to 0",
    )
    parser.add_argument(
        "--random-shift",
        type=int,
        default=0,
        help="images only: translate each training image by up to this many pixels (default 0)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, init and batches")
    parser.add_argument(
        "--calibration-fraction",
        type=float,
        default=0.15,
        help="fraction of the data held out for the calibration split",
    )
    parser.add_argument(
        "--test-fraction", type=float, default=0.2, help="fraction held out for the test split"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (the nets are small: more threads mostly add overhead)",
    )
    parser.add_argument("--out", required=True, type=Path, help="run directory to write")
    parser.set_defaults(run=run)


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """Validated settings; InputError naming the first bad option."""
    from pydantic import ValidationError

    from snnl.training.run import TrainSettings

    arch = args.arch or DEFAULT_ARCH.get(args.data, "mlp")
    try:
        return TrainSettings(
            dataset=args.data,
            classes=args.classes,
            arch=arch,
            net_kwargs=net_kwargs(arch, args.channels, args.hidden),
            snnl_layers=args.snnl_layers,
            seed=args.seed,
            factor=args.factor,
            temperature=args.temperature,
            initial_temperature=args.initial_temperature,
            distance=args.distance,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr_schedule=args.lr_schedule,
            random_shift=args.random_shift,
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

    from snnl.evaluation.report import format_temperature
    from snnl.training.loop import ENTANGLEMENT_POINTS, EpochRecord, prepare_run, train

    settings = settings_from_args(args)
    if args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} exists and is not a directory")
    start = prepare_run(settings)
    args.out.mkdir(parents=True, exist_ok=True)  # fail on an unwritable --out before training
    print(
        f"entanglement per hidden layer: SNNL(T*) with T* = argmin_T SNNL(T), on a fixed "
        f"stratified subsample of {ENTANGLEMENT_POINTS} training points"
    )
    with tqdm(
        total=settings.epochs, desc="train", unit="epoch", file=sys.stderr, disable=None
    ) as bar:

        def report(record: EpochRecord) -> None:
            layers = ", ".join(
                f"{name} {value:.3g} (T* {format_temperature(record.optimal_temperature[name])})"
                for name, value in record.entanglement.items()
            )
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
