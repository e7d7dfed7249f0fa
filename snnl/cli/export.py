"""``snnl export``: a training run -> a model folder of the repository.

    snnl export RUN_DIR --repository models --name digits-mlp [--version 1]
                [--calibration-fraction 0.15] [--reference-dtype float32|float16]
                [--nonconformity neighbor-mass|neg-log-score]

Writes model.onnx (checked against PyTorch), the reference set of the training split, the
calibration of the held-out split and the manifest with sha256s (SPEC §3).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from snnl.build.assemble import DEFAULT_NONCONFORMITY
from snnl.build.from_run import export_run
from snnl.core.distances import DISTANCES
from snnl.model.runtime import DEVICES
from snnl.scoring.nonconformity import NONCONFORMITY_KINDS
from snnl.scoring.temperature_rule import DEFAULT_RULE


def _layers(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``snnl export``."""
    parser = subparsers.add_parser(
        "export",
        help="export a training run to the model repository (ONNX, reference set, calibration)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="a run directory of snnl train"
    )
    parser.add_argument("--repository", type=Path, required=True, help="the model repository")
    parser.add_argument("--name", required=True, help="model name (letters, digits, . _ -)")
    parser.add_argument("--version", default="1", help="model version (default 1)")
    parser.add_argument(
        "--calibration-fraction",
        type=float,
        default=None,
        help="re-split the run's calibration + test pool to this fraction of all samples "
        "(default: the run's calibration split)",
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
    parser.add_argument(
        "--distance", choices=DISTANCES, default="cosine", help="served distance (default cosine)"
    )
    parser.add_argument(
        "--temperature-rule",
        default=DEFAULT_RULE,
        help="class-perplexity[:F], perplexity:P, min-snnl[:FLOOR] or a number "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--layers", type=_layers, help="served layers, comma-separated (default all)"
    )
    parser.add_argument(
        "--created",
        help="manifest timestamp YYYY-MM-DDTHH:MM:SSZ (default SOURCE_DATE_EPOCH, else now)",
    )
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Export and print a summary of the written model."""
    manifest = export_run(
        args.run_dir,
        args.repository,
        args.name,
        version=args.version,
        calibration_fraction=args.calibration_fraction,
        reference_dtype=args.reference_dtype,
        distance=args.distance,
        temperature_rule=args.temperature_rule,
        nonconformity=args.nonconformity,
        layers=args.layers,
        created=args.created,
        device=args.device,
    )
    print(
        f"exported {manifest.name} version {manifest.version} to {args.repository / manifest.name}"
    )
    for layer in manifest.layers:
        print(
            f"  {layer.name}: {layer.dim}-d, {layer.distance}, "
            f"temperature {layer.temperature:.4g}, "
            f"{layer.reference_size} reference rows, "
            f"T* {layer.optimal_temperature:.3g}, entanglement {layer.entanglement:.3g}"
        )
    print(f"  nonconformity: {manifest.nonconformity.kind}")
    test = manifest.provenance.get("test", {})
    print(
        f"  calibration: {manifest.calibration_size} samples; test: {test.get('size')} samples, "
        f"accuracy {test.get('accuracy', float('nan')):.4f}, "
        f"flag rate {test.get('flag_rate', float('nan')):.4f} at alpha {manifest.alpha}"
    )
    return 0
