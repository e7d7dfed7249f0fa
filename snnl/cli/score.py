"""``snnl score``: score the samples of an .npz file, one JSON object per sample.

FILE.npz holds x (N, *input_shape). For an embedding-only model x holds the embeddings (N, d) of
its single layer, or, with several layers, one key per layer name. Each output line is the HTTP
API's result object; a progress bar (on a terminal) and a summary go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from snnl.cli.common import DEVICES, load_detector, progress_bar
from snnl.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from snnl.model.detector import Detector
    from snnl.scoring.results import ScoreResult


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``snnl score``."""
    parser = subparsers.add_parser(
        "score",
        help="score an .npz of samples (or embeddings) against a model; JSON lines out",
        description=__doc__.split("\n\n", 1)[1].strip(),
    )
    parser.add_argument(
        "data", type=Path, metavar="FILE.npz", help="x (N, *input_shape), or embeddings"
    )
    parser.add_argument("--repository", type=Path, required=True, help="the model repository")
    parser.add_argument("--model", required=True, help="the model's name in the repository")
    parser.add_argument("--out", type=Path, help="write JSON lines here (default: stdout)")
    parser.add_argument(
        "--alpha", type=float, help="level of the outlier flag (default: the model's alpha)"
    )
    parser.add_argument(
        "--neighbors",
        type=int,
        default=0,
        help="also return the ids of the k nearest reference points per layer (0: none)",
    )
    parser.add_argument("--batch-size", type=int, default=1024, help="samples per scoring call")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where scoring runs")
    parser.set_defaults(run=run)


def _read(path: Path, detector: Detector) -> np.ndarray | dict[str, np.ndarray]:
    """The samples, or for an embedding-only model {layer: (N, d)}, from ``path`` (checked
    later, by ``Detector.score_in_batches``)."""
    from snnl.training.data import read_npz_arrays

    arrays = read_npz_arrays(path)
    if detector.input_shape is not None or len(detector.layers) == 1:
        if "x" not in arrays:
            raise InputError(f"{path}: missing key 'x' (the samples, (N, ...))")
        embeddings = {detector.layers[0]: arrays["x"]}
    else:
        missing = [layer for layer in detector.layers if layer not in arrays]
        if missing:
            raise InputError(f"{path}: missing key {missing[0]!r} (one (N, d) array per layer)")
        embeddings = {layer: arrays[layer] for layer in detector.layers}
    return arrays["x"] if detector.input_shape is not None else embeddings


def _write(results: Iterator[ScoreResult], total: int, out: TextIO) -> tuple[int, int, float]:
    count = outliers = 0
    alpha = float("nan")
    with progress_bar(total, desc="score", unit="sample") as bar:
        for result in results:
            for record in result.to_records():
                out.write(json.dumps(record) + "\n")
            count += len(result)
            outliers += int(result.outlier.sum())
            alpha = result.alpha
            bar.update(len(result))
    return count, outliers, alpha


def run(args: argparse.Namespace) -> int:
    """Score the file and write JSON lines."""
    from snnl.scoring.batch import num_rows
    from snnl.scoring.validation import check_alpha, check_neighbors

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    detector = load_detector(args.repository, args.model, args.device)
    check_alpha(args.alpha, detector.manifest.alpha)
    check_neighbors(args.neighbors, min(detector.reference_sizes.values()))
    data = _read(args.data, detector)
    try:
        # The whole file is checked before anything is scored or the output file is opened.
        results = detector.score_in_batches(
            data, args.batch_size, alpha=args.alpha, neighbors=args.neighbors
        )
        total = num_rows(data)
        if args.out is None:
            count, outliers, alpha = _write(results, total, sys.stdout)
        else:
            with args.out.open("w") as out:
                count, outliers, alpha = _write(results, total, out)
    except InputError as err:
        raise InputError(f"{args.data}: {err}") from err
    print(
        f"scored {count} samples with {detector.name} version {detector.version}: "
        f"{outliers} outliers at alpha {alpha:g}",
        file=sys.stderr,
    )
    return 0
