"""``snnl score``: score the samples of an .npz file, one JSON object per sample.

    snnl score --repository models --model digits-mlp FILE.npz [--out FILE.jsonl]
    snnl score --url http://127.0.0.1:8000 --model digits-mlp FILE.npz

FILE.npz holds ``x`` (N, *input_shape). For an embedding-only model ``x`` holds the embeddings
(N, d) of its single layer, or, with several layers, one key per layer name. Each output line is
the HTTP API's result object; a summary goes to stderr. With ``--url`` a running service scores
(``snnl.client``, the API key from ``SNNL_API_KEY``) instead of a local model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from snnl.errors import InputError
from snnl.model.detector import Detector
from snnl.model.runtime import DEVICES
from snnl.scoring.batch import Samples, row_chunks
from snnl.scoring.validation import check_alpha, check_embeddings, check_inputs, check_neighbors

if TYPE_CHECKING:
    from snnl.client import Client

Records = list[dict[str, Any]]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``snnl score``."""
    parser = subparsers.add_parser(
        "score",
        help="score an .npz of samples (or embeddings) against a model; JSON lines out",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("data", type=Path, metavar="FILE.npz", help="x (N, *input_shape)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--repository", type=Path, help="the model repository")
    where.add_argument(
        "--url", help="score with the service at URL instead (API key: $SNNL_API_KEY)"
    )
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument("--out", type=Path, help="write JSON lines here (default stdout)")
    parser.add_argument("--alpha", type=float, help="flag level (default: the model's)")
    parser.add_argument("--neighbors", type=int, default=0, help="ids of the k nearest per layer")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.set_defaults(run=run)


def _read(
    path: Path, input_shape: tuple[int, ...] | None, layers: Sequence[str]
) -> np.ndarray | dict[str, np.ndarray]:
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


def _write(batches: Iterator[Records], out: TextIO) -> tuple[int, int]:
    count = outliers = 0
    for records in batches:
        for record in records:
            out.write(json.dumps(record) + "\n")
        count += len(records)
        outliers += sum(bool(record["outlier"]) for record in records)
    return count, outliers


def _output(args: argparse.Namespace, batches: Iterator[Records]) -> tuple[int, int]:
    if args.out is None:
        return _write(batches, sys.stdout)
    with args.out.open("w") as out:
        return _write(batches, out)


def _remote_batches(
    client: Client, samples: Samples, args: argparse.Namespace
) -> Iterator[Records]:
    for rows in row_chunks(samples, args.batch_size):
        given = {"inputs": rows} if isinstance(rows, np.ndarray) else {"embeddings": rows}
        records = client.score(args.model, alpha=args.alpha, neighbors=args.neighbors, **given)
        yield [dict(record) for record in records]


def _summary(count: int, outliers: int, name: str, version: str, alpha: float) -> None:
    print(
        f"scored {count} samples with {name} version {version}: "
        f"{outliers} outliers at alpha {alpha:g}",
        file=sys.stderr,
    )


def run(args: argparse.Namespace) -> int:
    """Score the file (locally, or with the service at ``--url``) and write JSON lines."""
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.url is not None:
        return _run_remote(args)
    detector = Detector.load(args.repository, args.model, device=args.device)
    alpha = check_alpha(args.alpha, detector.manifest.alpha)
    check_neighbors(args.neighbors, min(detector.reference_sizes.values()))
    data = _read(args.data, detector.input_shape, detector.layers)
    try:
        # The whole file is checked before anything is scored or the output file is opened.
        results = detector.score_in_batches(
            data, args.batch_size, alpha=args.alpha, neighbors=args.neighbors
        )
        count, outliers = _output(args, (result.to_records() for result in results))
    except InputError as err:
        raise InputError(f"{args.data}: {err}") from err
    _summary(count, outliers, detector.name, detector.version, alpha)
    return 0


def _run_remote(args: argparse.Namespace) -> int:
    """Score through the service: the whole file is checked here first, as locally."""
    from snnl.client import Client  # httpx only when a service scores

    with Client(args.url, api_key=os.environ.get("SNNL_API_KEY")) as client:
        info = next((m for m in client.models() if m["name"] == args.model), None)
        if info is None:
            raise InputError(f"--model: {args.model!r} is not served at {args.url}")
        shape = None if info["input_shape"] is None else tuple(info["input_shape"])
        dims = {layer["name"]: layer["dim"] for layer in info["layers"]}
        data = _read(args.data, shape, list(dims))
        try:
            checked: Samples = (
                check_embeddings(data, dims)
                if isinstance(data, dict)
                else check_inputs(data, shape or data.shape[1:])
            )
        except InputError as err:
            raise InputError(f"{args.data}: {err}") from err
        count, outliers = _output(args, _remote_batches(client, checked, args))
    alpha = info["alpha"] if args.alpha is None else args.alpha
    _summary(count, outliers, info["name"], info["version"], alpha)
    return 0
