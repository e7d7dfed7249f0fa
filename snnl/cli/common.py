"""What every subcommand shares: the help format, option values, and run-time helpers.

Building the parser must stay light (``snnl --help`` answers without importing torch, numpy or
ONNX Runtime), so the subcommand modules import the library only inside ``run``. The option
values they offer at parse time are therefore restated here as plain constants;
``tests/cli/test_help.py`` checks that each equals the library constant it mirrors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from snnl.errors import InputError

if TYPE_CHECKING:
    from tqdm import tqdm

    from snnl.model.detector import Detector

# Mirrors of library constants (checked equal by the tests).
DISTANCES: tuple[str, ...] = ("cosine", "euclidean")  # snnl.core.distances.DISTANCES
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")  # snnl.model.runtime.DEVICES
ARCHS: tuple[str, ...] = ("mlp", "cnn1d", "cnn2d")  # snnl.training.nets.ARCHS
BUILTIN_DATASETS: tuple[str, ...] = (  # snnl.training.data.BUILTIN_DATASETS
    "digits",
    "mnist1d",
    "mnist",
    "fashion-mnist",
)
DATASET_PARTS: tuple[str, ...] = ("all", "train", "test")  # snnl.training.data.DATASET_PARTS
DEFAULT_FACTOR = 1.0  # snnl.training.run.DEFAULT_FACTOR
DEFAULT_TEMPERATURE = "learned"  # snnl.training.run.DEFAULT_TEMPERATURE
NONCONFORMITY_KINDS: tuple[str, ...] = ("neighbor-mass", "neg-log-score")  # scoring.nonconformity
DEFAULT_NONCONFORMITY = "neighbor-mass"  # snnl.build.assemble.DEFAULT_NONCONFORMITY
DEFAULT_RULE = "class-perplexity:2"  # snnl.scoring.temperature_rule.DEFAULT_RULE
DEFAULT_FLOOR_QUANTILE = 0.01  # snnl.scoring.neighbor_mass.DEFAULT_FLOOR_QUANTILE
DEFAULT_LAYER = "embedding"  # snnl.build.from_embeddings.DEFAULT_LAYER
TRANSFORMS: tuple[str, ...] = ("invert", "scale=F", "shift=F", "permute")  # ood_sets
REFERENCE_DTYPES: tuple[str, ...] = ("float32", "float16")  # snnl.model.reference
GUARANTEES: tuple[str, ...] = ("marginal", "class", "pac")  # snnl.scoring.guarantees.GUARANTEES
DEFAULT_DELTA = 0.1  # snnl.scoring.guarantees.DEFAULT_DELTA
DEFAULT_CALIBRATION_SIZE = 3205  # snnl.build.from_embeddings.DEFAULT_CALIBRATION_SIZE

NONCONFORMITY_HELP = (
    "a(x) of the outlier flag: neighbor-mass (standardized soft-neighbor mass of the predicted "
    "class, cosine and euclidean, every served layer) or neg-log-score (sum over layers of "
    "-log s_l); see docs/method.md"
)
TEMPERATURE_RULE_HELP = (
    "served temperature per layer: class-perplexity[:F], perplexity:P, min-snnl[:FLOOR] or a "
    "number; see docs/method.md"
)


def add_guarantee_options(parser: argparse.ArgumentParser, *, default: bool) -> None:
    """``--guarantee`` and ``--delta``: the model's default rule of the flag (``default``) or a
    run's override (docs/method.md)."""
    whose = "the model's default" if default else "override the model's default"
    parser.add_argument(
        "--guarantee",
        choices=GUARANTEES,
        default="marginal" if default else None,
        help=f"guarantee of the outlier flag ({whose}): marginal (P(flag) <= alpha on average), "
        "class (the same within each predicted class) or pac (P(flag rate > alpha) <= delta "
        "over calibration draws)",
    )
    parser.add_argument(
        "--delta",
        type=float,
        help=f"delta of --guarantee pac ({whose}; default {DEFAULT_DELTA})",
    )


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to every optional flag whose help does not state its default.

    Required flags, positionals and flags whose default is None (meaning "not given") are left
    alone; their help says what happens without them.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or action.required
            or not action.option_strings
            or action.default in (None, argparse.SUPPRESS)
            or isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction)
        ):
            return text
        return f"{text} (default: %(default)s)"

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        """Wraps each paragraph; keeps a paragraph that starts indented (examples) line by line."""
        fill = super()._fill_text
        return "\n\n".join(
            part if part.startswith(" ") else fill(part, width, indent)
            for part in text.split("\n\n")
        )


def comma_list(text: str) -> list[str]:
    """argparse type: "a,b, c" -> ["a", "b", "c"]; at least one name."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated names")
    return names


def weight_map(text: str) -> dict[str, float]:
    """argparse type: "conv2=2, fc1=0.5" -> {"conv2": 2.0, "fc1": 0.5}; at least one
    name=weight pair, each name once (the weights are checked where they are used)."""
    weights: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        name, sep, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = None
        if not part or not sep or not name.strip() or weight is None:
            raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT pairs, got {part!r}")
        if name.strip() in weights:
            raise argparse.ArgumentTypeError(f"{name.strip()} given twice")
        weights[name.strip()] = weight
    return weights


def class_ids(text: str) -> list[int]:
    """argparse type: "0,1,2" -> [0, 1, 2]; at least one id."""
    try:
        classes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated class ids, got {text!r}"
        ) from err
    if not classes:
        raise argparse.ArgumentTypeError("expected at least one class id")
    return classes


def dataset(text: str) -> str:
    """argparse type: a built-in dataset name or a path to a ``.npz`` file."""
    if text in BUILTIN_DATASETS or text.endswith(".npz") or Path(text).exists():
        return text
    raise argparse.ArgumentTypeError(
        f"expected {', '.join(BUILTIN_DATASETS)} or a .npz file, got {text!r}"
    )


def existing_repository(path: Path) -> Path:
    """``path`` if it is a folder; InputError naming --repository otherwise."""
    if not path.exists():
        raise InputError(f"--repository {path}: no such folder")
    if not path.is_dir():
        raise InputError(f"--repository {path}: not a folder")
    return path


def load_detector(repository: Path, name: str, device: str) -> Detector:
    """``Detector.load`` after checking that the repository folder exists."""
    from snnl.model.detector import Detector

    return Detector.load(existing_repository(repository), name, device=device)


def progress_bar(total: int, desc: str, unit: str) -> tqdm[NoReturn]:
    """A progress bar on stderr (use it as a context manager, ``update(n)`` per step of work);
    it draws nothing when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None)
