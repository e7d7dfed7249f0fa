"""``snnl score``: score the samples of an .npz file, one JSON object per sample.

    snnl score --repository models --model digits-mlp FILE.npz [--out FILE.jsonl]

FILE.npz holds ``x`` (N, *input_shape). For an embedding-only model ``x`` holds the embeddings
(N, d) of its single layer, or, with several layers, one key per layer name. Each output line is
the HTTP API's result object (SPEC §5); a summary goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np

from snnl.errors import InputError
from snnl.model.detector import Detector
from snnl.model.runtime import DEVICES
from snnl.scoring.results import ScoreResult
from snnl.scoring.validation import check_alpha, check_neighbors


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``snnl score``."""
    parser = subparsers.add_parser(
        "score",
        help="score an .npz of samples (or embeddings) against a model; JSON lines out",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("data", type=Path, metavar="FILE.npz", help="x (N, *input_shape)")
    parser.add_argument("--repository", type=Path, required=True, help="the model repository")
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument("--out", type=Path, help="write JSON lines here (default stdout)")
    parser.add_argument("--alpha", type=float, help="flag level (default: the model's)")
    parser.add_argument("--neighbors", type=int, default=0, help="ids of the k nearest per layer")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.set_defaults(run=run)


def _read(path: Path, detector: Detector) -> np.ndarray | dict[str, np.ndarray]:
    """The samples, or for an embedding-only model {layer: (N, d)}, from ``path``."""
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise InputError(f"{path}: expected an .npz archive (numpy.savez), got a bare array")
        with loaded as npz:
            arrays = {key: npz[key] for key in npz.files}
    except InputError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise InputError(
            f"{path}: not a readable .npz file without pickled objects ({err})"
        ) from err
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


def _write(results: Iterator[ScoreResult], out: TextIO) -> tuple[int, int, float]:
    count = outliers = 0
    alpha = float("nan")
    for result in results:
        for record in result.to_records():
            out.write(json.dumps(record) + "\n")
        count += len(result)
        outliers += int(result.outlier.sum())
        alpha = result.alpha
    return count, outliers, alpha


def run(args: argparse.Namespace) -> int:
    """Score the file and write JSON lines."""
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    detector = Detector.load(args.repository, args.model, device=args.device)
    check_alpha(args.alpha, detector.manifest.alpha)
    check_neighbors(args.neighbors, min(detector.reference_sizes.values()))
    data = _read(args.data, detector)
    try:
        # The whole file is checked before anything is scored or the output file is opened.
        results = detector.score_in_batches(
            data, args.batch_size, alpha=args.alpha, neighbors=args.neighbors
        )
        if args.out is None:
            count, outliers, alpha = _write(results, sys.stdout)
        else:
            with args.out.open("w") as out:
                count, outliers, alpha = _write(results, out)
    except InputError as err:
        raise InputError(f"{args.data}: {err}") from err
    print(
        f"scored {count} samples with {detector.name} version {detector.version}: "
        f"{outliers} outliers at alpha {alpha:g}",
        file=sys.stderr,
    )
    return 0
