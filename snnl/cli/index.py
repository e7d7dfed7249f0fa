"""``snnl index``: an embedding-only model from embeddings you already have.

FILE.npz holds ``x`` (N, d) embeddings and ``y`` (N,) integer labels. Clients then send
``{"embeddings": {"<layer>": [[...], ...]}}`` (HTTP) or call ``Detector.score_embeddings``.
An existing model of the same name is replaced only with --force. Without ``--calibration``
(held-out embeddings) a one-line warning goes to stderr: calibrating on rows of FILE.npz is
optimistic when the encoder was trained on them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from snnl.cli.common import (
    DEFAULT_CALIBRATION_SIZE,
    DEFAULT_LAYER,
    DEFAULT_NONCONFORMITY,
    DEFAULT_RULE,
    DEVICES,
    DISTANCES,
    NONCONFORMITY_HELP,
    NONCONFORMITY_KINDS,
    REFERENCE_DTYPES,
    TEMPERATURE_RULE_HELP,
    add_guarantee_options,
)
from snnl.errors import InputError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``snnl index``."""
    parser = subparsers.add_parser(
        "index",
        help="build an embedding-only model from an .npz of embeddings and labels",
        description="Build an embedding-only model from FILE.npz: x (N, d) embeddings and y (N,) "
        "integer labels. Clients then send embeddings instead of inputs.",
    )
    parser.add_argument("data", type=Path, metavar="FILE.npz", help="x (N, d) and y (N,)")
    parser.add_argument("--repository", type=Path, required=True, help="the model repository")
    parser.add_argument("--name", required=True, help="model name (letters, digits, . _ -)")
    parser.add_argument(
        "--force", action="store_true", help="replace an existing model of the same name"
    )
    parser.add_argument("--layer", default=DEFAULT_LAYER, help="the served layer's name")
    parser.add_argument(
        "--distance", choices=DISTANCES, default="cosine", help="distance of the served scores"
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        metavar="FILE.npz",
        help="held-out calibration embeddings x (n, d) and labels y (n,) of samples the encoder "
        "never saw (default: hold out rows of FILE.npz, optimistic if the encoder was trained "
        "on them)",
    )
    parser.add_argument(
        "--calibration-size",
        type=int,
        default=DEFAULT_CALIBRATION_SIZE,
        help="calibration rows, a stratified draw with enough rows per class for --guarantee "
        "class where possible (the default: where pac's level reaches 0.9 alpha at alpha 0.05, "
        "delta 0.1)",
    )
    parser.add_argument(
        "--calibration-fraction",
        type=float,
        default=0.15,
        help="without --calibration: at most this fraction of each class is held out for "
        "calibration (the rest is the reference set)",
    )
    parser.add_argument(
        "--alpha", type=float, default=0.05, help="the model's default level of the outlier flag"
    )
    add_guarantee_options(parser, default=True)
    parser.add_argument("--temperature-rule", default=DEFAULT_RULE, help=TEMPERATURE_RULE_HELP)
    parser.add_argument(
        "--reference-dtype",
        choices=REFERENCE_DTYPES,
        default="float32",
        help="storage of the reference embeddings",
    )
    parser.add_argument(
        "--nonconformity",
        choices=NONCONFORMITY_KINDS,
        default=DEFAULT_NONCONFORMITY,
        help=NONCONFORMITY_HELP,
    )
    parser.add_argument("--version", default="1", help="model version")
    parser.add_argument(
        "--created",
        help="manifest timestamp YYYY-MM-DDTHH:MM:SSZ (default: SOURCE_DATE_EPOCH, else now)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified split")
    parser.add_argument(
        "--device", choices=DEVICES, default="auto", help="where the calibration's scoring runs"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Build the model and print a summary."""
    from snnl.build.from_embeddings import index_embeddings

    target = args.repository / args.name
    if target.exists() and not args.force:
        raise InputError(f"--name {args.name}: {target} exists; add --force to replace it")
    manifest = index_embeddings(
        args.data,
        args.repository,
        args.name,
        layer=args.layer,
        distance=args.distance,
        calibration=args.calibration,
        calibration_size=args.calibration_size,
        calibration_fraction=args.calibration_fraction,
        alpha=args.alpha,
        guarantee=args.guarantee,
        delta=args.delta,
        temperature_rule=args.temperature_rule,
        nonconformity=args.nonconformity,
        reference_dtype=args.reference_dtype,
        version=args.version,
        created=args.created,
        seed=args.seed,
        device=args.device,
    )
    layer = manifest.layers[0]
    if args.calibration is None:
        print(
            f"warning: no --calibration file: calibrating on held-out rows of {args.data}; if "
            "the encoder was trained on them, flags on new data will exceed alpha",
            file=sys.stderr,
        )
    print(
        f"indexed {manifest.name} version {manifest.version} to {args.repository / manifest.name}: "
        f"layer {layer.name} ({layer.dim}-d, {layer.distance}, "
        f"served temperature {layer.temperature:.4g}), "
        f"{layer.reference_size} reference rows, {manifest.calibration_size} calibration rows, "
        f"{len(manifest.class_names)} classes, nonconformity {manifest.nonconformity.kind}, "
        f"default flag: {manifest.guarantee} at alpha {manifest.alpha:g}"
        + ("" if manifest.guarantee != "pac" else f", delta {manifest.delta or 0.1:g}")
    )
    return 0
