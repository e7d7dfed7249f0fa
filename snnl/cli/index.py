"""``snnl index``: an embedding-only model from embeddings you already have.

    snnl index FILE.npz --repository models --name my-encoder [--layer embedding]
               [--distance cosine|euclidean] [--calibration-fraction 0.15]
               [--nonconformity neighbor-mass|neg-log-score]

FILE.npz holds ``x`` (N, d) embeddings and ``y`` (N,) integer labels. Clients then send
``{"embeddings": {"<layer>": [[...], ...]}}`` (HTTP) or call ``Detector.score_embeddings``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from snnl.build.assemble import DEFAULT_NONCONFORMITY
from snnl.build.from_embeddings import DEFAULT_LAYER, index_embeddings
from snnl.core.distances import DISTANCES
from snnl.model.runtime import DEVICES
from snnl.scoring.nonconformity import NONCONFORMITY_KINDS
from snnl.scoring.temperature_rule import DEFAULT_RULE


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``snnl index``."""
    parser = subparsers.add_parser(
        "index",
        help="build an embedding-only model from an .npz of embeddings and labels",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("data", type=Path, metavar="FILE.npz", help="x (N, d) and y (N,)")
    parser.add_argument("--repository", type=Path, required=True, help="the model repository")
    parser.add_argument("--name", required=True, help="model name (letters, digits, . _ -)")
    parser.add_argument("--layer", default=DEFAULT_LAYER, help="layer name (default %(default)s)")
    parser.add_argument("--distance", choices=DISTANCES, default="cosine")
    parser.add_argument("--calibration-fraction", type=float, default=0.15)
    parser.add_argument(
        "--temperature-rule",
        default=DEFAULT_RULE,
        help="class-perplexity[:F], perplexity:P, min-snnl[:FLOOR] or a number "
        "(default %(default)s)",
    )
    parser.add_argument("--reference-dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument(
        "--nonconformity",
        choices=NONCONFORMITY_KINDS,
        default=DEFAULT_NONCONFORMITY,
        help="a(x) of the outlier flag: neighbor-mass (standardized soft-neighbor mass of the "
        "predicted class, cosine and euclidean, per layer) or neg-log-score (sum_l -log s_l, "
        "SPEC's starting point) (default %(default)s)",
    )
    parser.add_argument("--version", default="1")
    parser.add_argument("--created", help="manifest timestamp YYYY-MM-DDTHH:MM:SSZ")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified split")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Build the model and print a summary."""
    manifest = index_embeddings(
        args.data,
        args.repository,
        args.name,
        layer=args.layer,
        distance=args.distance,
        calibration_fraction=args.calibration_fraction,
        temperature_rule=args.temperature_rule,
        nonconformity=args.nonconformity,
        reference_dtype=args.reference_dtype,
        version=args.version,
        created=args.created,
        seed=args.seed,
        device=args.device,
    )
    layer = manifest.layers[0]
    print(
        f"indexed {manifest.name} version {manifest.version} to {args.repository / manifest.name}: "
        f"layer {layer.name} ({layer.dim}-d, {layer.distance}, "
        f"temperature {layer.temperature:.4g}), "
        f"{layer.reference_size} reference rows, {manifest.calibration_size} calibration rows, "
        f"{len(manifest.class_names)} classes, nonconformity {manifest.nonconformity.kind}"
    )
    return 0
