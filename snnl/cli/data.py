"""``snnl data``: write an evaluation set as an ``.npz`` (``x`` float32, ``y`` int64).

The source is a run directory's split (labels in the model's 0..C-1 space) or a dataset
(digits, mnist1d, mnist, fashion-mnist or a .npz; with --classes the labels are remapped to
0..C-1 in sorted id order, as snnl train does). mnist and fashion-mnist are 28x28 images of
pixel values 0..255, read offline (mnist: pip install 'snnl[images]'; fashion-mnist: apt-get
install dataset-fashion-mnist); --part picks their official train or test part. --noise N
writes N uniform samples over the source's value range instead (no y); --transform changes
the source samples.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snnl.cli.common import DATASET_PARTS, TRANSFORMS, class_ids, dataset
from snnl.errors import InputError

if TYPE_CHECKING:
    import numpy as np

SPLITS: tuple[str, ...] = ("train", "calibration", "test")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``snnl data``."""
    parser = subparsers.add_parser(
        "data",
        help="make an evaluation set (.npz) from a run's split, a dataset, noise or a transform",
        description=__doc__.split("\n\n", 1)[1].strip(),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", dest="run_dir", type=Path, help="a run directory of snnl train")
    source.add_argument(
        "--dataset", type=dataset, help="digits, mnist1d, mnist, fashion-mnist or a .npz file"
    )
    parser.add_argument(
        "--split", choices=SPLITS, default="test", help="which split of the --run directory"
    )
    parser.add_argument(
        "--classes",
        type=class_ids,
        help="with --dataset: keep these class ids, e.g. 5,6 (default: every class)",
    )
    parser.add_argument(
        "--part",
        choices=DATASET_PARTS,
        default="all",
        help="with --dataset mnist or fashion-mnist: the official train part (60,000 images), "
        "the test part (10,000) or all (both)",
    )
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument(
        "--noise",
        type=int,
        metavar="N",
        help="write N uniform samples over the data's value range instead (default: no noise)",
    )
    kind.add_argument(
        "--transform",
        metavar="T",
        help=f"change the samples: one of {', '.join(TRANSFORMS)} (default: none)",
    )
    parser.add_argument(
        "--limit", type=int, metavar="N", help="keep a random N samples at most (default: all)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of noise, permute and --limit")
    parser.add_argument("--out", type=Path, required=True, help="the .npz file to write")
    parser.set_defaults(run=run)


def _source(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    from snnl.training.data import Split, load_dataset
    from snnl.training.run import SPLIT_FILE

    if args.run_dir is not None:
        if args.classes is not None:
            raise InputError("--classes goes with --dataset, not --run")
        if args.part != "all":
            raise InputError("--part goes with --dataset, not --run")
        path = args.run_dir / SPLIT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {args.run_dir} a run directory?")
        split = Split.load(path)
        return getattr(split, f"x_{args.split}"), getattr(split, f"y_{args.split}")
    loaded = load_dataset(args.dataset, args.classes, part=args.part)
    return loaded.x, loaded.y


def run(args: argparse.Namespace) -> int:
    """Write the set; prints one summary line."""
    import numpy as np

    from snnl.evaluation.ood_sets import transform, uniform_noise

    if args.out.suffix != ".npz":
        raise InputError(f"--out: expected a .npz file name, got {args.out}")
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit: expected >= 1, got {args.limit}")
    x, y = _source(args)
    arrays: dict[str, Any]  # Any: numpy's savez stub takes **kwargs as a possible allow_pickle
    if args.noise is not None:
        arrays = {"x": uniform_noise(x, args.noise, args.seed)}
    elif args.transform is not None:
        arrays = {"x": transform(x, args.transform, args.seed), "y": y}
    else:
        arrays = {"x": x.astype(np.float32), "y": y}
    if args.limit is not None:
        n = len(arrays["x"])
        keep = np.sort(np.random.default_rng(args.seed).permutation(n)[: args.limit])
        arrays = {key: value[keep] for key, value in arrays.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **arrays)
    shape = "x".join(str(s) for s in arrays["x"].shape)
    print(f"wrote {args.out}: x {shape}" + (" with labels" if "y" in arrays else ""))
    return 0
