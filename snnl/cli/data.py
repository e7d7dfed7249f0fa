"""``snnl data``: write an evaluation set as a SPEC §3 ``.npz`` (``x`` float32, ``y`` int64).

    snnl data --run RUN_DIR --split test --out id.npz
    snnl data --dataset digits --classes 5,6,7,8,9 --out ood.npz
    snnl data --run RUN_DIR --split test --noise 300 --out noise.npz
    snnl data --run RUN_DIR --split test --transform invert --out inverted.npz

The source is a run directory's split (labels in the model's 0..C-1 space) or a dataset
(``digits``, ``mnist1d`` or a .npz; with ``--classes`` the labels are remapped to 0..C-1 in
sorted id order, as ``snnl train`` does). ``--noise N`` writes N uniform samples over the
source's value range instead (no ``y``); ``--transform`` changes the source samples.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from snnl.errors import InputError
from snnl.evaluation.ood_sets import TRANSFORMS, transform, uniform_noise
from snnl.training.data import Split, load_dataset
from snnl.training.run import SPLIT_FILE

SPLITS: tuple[str, ...] = ("train", "calibration", "test")


def _classes(text: str) -> list[int]:
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated class ids, got {text!r}"
        ) from err


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``snnl data``."""
    parser = subparsers.add_parser(
        "data",
        help="make an evaluation set (.npz) from a run's split, a dataset, noise or a transform",
        description=__doc__.split("\n\n")[0],
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", dest="run_dir", type=Path, help="a run directory of snnl train")
    source.add_argument("--dataset", help="digits, mnist1d or a .npz file")
    parser.add_argument("--split", choices=SPLITS, default="test", help="with --run (default test)")
    parser.add_argument("--classes", type=_classes, help="with --dataset: keep these class ids")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument(
        "--noise", type=int, metavar="N", help="N uniform samples over the data's range"
    )
    kind.add_argument("--transform", metavar="T", help=f"one of {', '.join(TRANSFORMS)}")
    parser.add_argument("--limit", type=int, metavar="N", help="keep a random N samples at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="the .npz file to write")
    parser.set_defaults(run=run)


def _source(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    if args.run_dir is not None:
        if args.classes is not None:
            raise InputError("--classes goes with --dataset, not --run")
        path = args.run_dir / SPLIT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {args.run_dir} a run directory?")
        split = Split.load(path)
        return getattr(split, f"x_{args.split}"), getattr(split, f"y_{args.split}")
    dataset = load_dataset(args.dataset, args.classes)
    return dataset.x, dataset.y


def run(args: argparse.Namespace) -> int:
    """Write the set; prints one summary line."""
    if args.out.suffix != ".npz":
        raise InputError(f"--out: expected a .npz file name, got {args.out}")
    x, y = _source(args)
    arrays: dict[str, Any]  # Any: numpy's savez stub takes **kwargs as a possible allow_pickle
    if args.noise is not None:
        arrays = {"x": uniform_noise(x, args.noise, args.seed)}
    elif args.transform is not None:
        arrays = {"x": transform(x, args.transform, args.seed), "y": y}
    else:
        arrays = {"x": x.astype(np.float32), "y": y}
    if args.limit is not None:
        if args.limit < 1:
            raise InputError(f"--limit: expected >= 1, got {args.limit}")
        n = len(arrays["x"])
        keep = np.sort(np.random.default_rng(args.seed).permutation(n)[: args.limit])
        arrays = {key: value[keep] for key, value in arrays.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **arrays)
    shape = "x".join(str(s) for s in arrays["x"].shape)
    print(
        f"wrote {args.out}: x {shape}" + (" with labels" if "y" in arrays else ""), file=sys.stdout
    )
    return 0
