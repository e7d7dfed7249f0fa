"""``snnl score``: score the samples of an .npz or .npy file, one JSON object per sample.

    snnl score --repository models --model digits-mlp FILE.npz [--out FILE.jsonl]
    snnl score --url http://127.0.0.1:8000 --model digits-mlp FILE.npy

FILE.npz holds x (N, *input_shape); FILE.npy is that one array (as the HTTP API takes it). For an
embedding-only model x holds the embeddings (N, d) of its single layer, or, with several layers,
an .npz with one key per layer name. Each output line is the HTTP
API's result object; a progress bar (on a terminal) and a summary go to stderr. With --url a
running service scores (the Python client, the API key from SNNL_API_KEY) instead of a local model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from snnl.cli.common import DEVICES, add_guarantee_options, load_detector, progress_bar
from snnl.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from snnl.client import Client
    from snnl.scoring.batch import CheckedBatch

Records = list[dict[str, Any]]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``snnl score``."""
    parser = subparsers.add_parser(
        "score",
        help="score an .npz or .npy of samples (or embeddings) against a model; JSON lines out",
        description=__doc__.split("\n\n", 2)[2].strip(),
        epilog="examples:\n\n" + __doc__.split("\n\n", 2)[1],  # indented: kept as is
    )
    parser.add_argument(
        "data",
        type=Path,
        metavar="FILE",
        help=".npz with x (N, *input_shape) or embeddings, or .npy holding x alone",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--repository", type=Path, help="the model repository")
    where.add_argument(
        "--url", help="score with the service at this URL instead (API key: $SNNL_API_KEY)"
    )
    parser.add_argument("--model", required=True, help="the model's name in the repository")
    parser.add_argument("--out", type=Path, help="write JSON lines here (default: stdout)")
    parser.add_argument(
        "--alpha", type=float, help="level of the outlier flag (default: the model's alpha)"
    )
    add_guarantee_options(parser, default=False)
    parser.add_argument(
        "--fdr",
        type=float,
        help="also write outlier_fdr: Benjamini-Hochberg at this level over each --batch-size "
        "batch's p-values",
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


def _read(
    path: Path, input_shape: tuple[int, ...] | None, layers: Sequence[str]
) -> np.ndarray | dict[str, np.ndarray]:
    """The samples, or for an embedding-only model {layer: (N, d)}, from ``path`` (checked
    later, before anything is scored)."""
    from snnl.training.data import read_sample_arrays

    arrays = read_sample_arrays(path)
    if input_shape is not None or len(layers) == 1:
        if "x" not in arrays:
            raise InputError(f"{path}: missing key 'x' (the samples, (N, ...))")
        embeddings = {layers[0]: arrays["x"]}
    else:
        missing = [layer for layer in layers if layer not in arrays]
        if missing:
            raise InputError(f"{path}: missing key {missing[0]!r} (one (N, d) array per layer)")
        embeddings = {layer: arrays[layer] for layer in layers}
    return arrays["x"] if input_shape is not None else embeddings


def _write(batches: Iterator[Records], total: int, out: TextIO) -> tuple[int, int]:
    count = outliers = 0
    with progress_bar(total, desc="score", unit="sample") as bar:
        for records in batches:
            for record in records:
                out.write(json.dumps(record) + "\n")
            count += len(records)
            outliers += sum(bool(record["outlier"]) for record in records)
            bar.update(len(records))
    return count, outliers


def _output(args: argparse.Namespace, batches: Iterator[Records], total: int) -> tuple[int, int]:
    if args.out is None:
        return _write(batches, total, sys.stdout)
    with args.out.open("w") as out:
        return _write(batches, total, out)


def _remote_batches(
    client: Client, samples: CheckedBatch, args: argparse.Namespace
) -> Iterator[Records]:
    from snnl.scoring.batch import CheckedSamples, row_chunks

    for rows in row_chunks(samples, args.batch_size):
        given: dict[str, Any] = (
            {"inputs": rows.x}
            if isinstance(rows, CheckedSamples)
            else {"embeddings": rows.features}
        )
        records = client.score(
            args.model,
            alpha=args.alpha,
            guarantee=args.guarantee,
            delta=args.delta,
            fdr=args.fdr,
            neighbors=args.neighbors,
            **given,
        )
        yield [dict(record) for record in records]


def _summary(
    count: int, outliers: int, name: str, version: str, alpha: float, guarantee: str
) -> None:
    print(
        f"scored {count} samples with {name} version {version}: "
        f"{outliers} outliers at alpha {alpha:g} ({guarantee})",
        file=sys.stderr,
    )


def run(args: argparse.Namespace) -> int:
    """Score the file (locally, or with the service at ``--url``) and write JSON lines."""
    from snnl.scoring.batch import row_chunks
    from snnl.scoring.validation import check_neighbors

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.url is not None:
        return _run_remote(args)
    detector = load_detector(args.repository, args.model, args.device)
    rule = detector.flag_rule(args.alpha, args.guarantee, args.delta, args.fdr)
    check_neighbors(args.neighbors, min(detector.reference_sizes.values()))
    data = _read(args.data, detector.input_shape, detector.layers)
    try:
        # The whole file is checked before anything is scored or the output file is opened.
        checked = detector.check(data)
        batches = (
            detector.score(
                rows,
                alpha=rule.alpha,
                guarantee=rule.guarantee,
                delta=rule.delta,
                fdr=rule.fdr,
                neighbors=args.neighbors,
            ).to_records()
            for rows in row_chunks(checked, args.batch_size)
        )
        count, outliers = _output(args, batches, len(checked))
    except InputError as err:
        raise InputError(f"{args.data}: {err}") from err
    _summary(count, outliers, detector.name, detector.version, rule.alpha, rule.guarantee)
    return 0


def _run_remote(args: argparse.Namespace) -> int:
    """Score through the service: the whole file is checked here first, as locally."""
    from snnl.client import Client  # httpx only when a service scores
    from snnl.scoring.validation import check_embeddings, check_inputs

    with Client(args.url, api_key=os.environ.get("SNNL_API_KEY")) as client:
        info = next((m for m in client.models() if m["name"] == args.model), None)
        if info is None:
            raise InputError(f"--model: {args.model!r} is not served at {args.url}")
        shape = None if info["input_shape"] is None else tuple(info["input_shape"])
        dims = {layer["name"]: layer["dim"] for layer in info["layers"]}
        data = _read(args.data, shape, list(dims))
        try:
            checked: CheckedBatch = (
                check_embeddings(data, dims)
                if isinstance(data, dict)
                else check_inputs(data, shape or data.shape[1:])
            )
        except InputError as err:
            raise InputError(f"{args.data}: {err}") from err
        count, outliers = _output(args, _remote_batches(client, checked, args), len(checked))
    alpha = info["alpha"] if args.alpha is None else args.alpha
    guarantee = info.get("guarantee", "marginal") if args.guarantee is None else args.guarantee
    _summary(count, outliers, info["name"], info["version"], alpha, guarantee)
    return 0
