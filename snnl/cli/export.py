"""``snnl export``: a training run -> a model folder of the repository.

Writes model.onnx (checked against PyTorch), the reference set of the training split, the
calibration of the held-out split and the manifest with the sha256 of every file. An existing
model of the same name is replaced only with --force.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from snnl.cli.common import (
    DEFAULT_FLOOR_QUANTILE,
    DEFAULT_NONCONFORMITY,
    DEFAULT_RULE,
    DEVICES,
    DISTANCES,
    NONCONFORMITY_HELP,
    NONCONFORMITY_KINDS,
    REFERENCE_DTYPES,
    TEMPERATURE_RULE_HELP,
    add_guarantee_options,
    comma_list,
    weight_map,
)
from snnl.errors import InputError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``snnl export``."""
    parser = subparsers.add_parser(
        "export",
        help="export a training run to the model repository (ONNX, reference set, calibration)",
        description="Export a training run to a model folder of the repository: model.onnx "
        "(checked against PyTorch), the reference set of the training split, the calibration "
        "of the held-out split and the manifest with the sha256 of every file.",
    )
    parser.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="a run directory of snnl train"
    )
    parser.add_argument("--repository", type=Path, required=True, help="the model repository")
    parser.add_argument("--name", required=True, help="model name (letters, digits, . _ -)")
    parser.add_argument("--version", default="1", help="model version")
    parser.add_argument(
        "--force", action="store_true", help="replace an existing model of the same name"
    )
    parser.add_argument(
        "--calibration-fraction",
        type=float,
        default=None,
        help="re-split the run's calibration + test pool to this fraction of all samples "
        "(default: the run's calibration split)",
    )
    parser.add_argument(
        "--calibration-size",
        type=int,
        help="at most this many calibration samples, a stratified draw with enough samples per "
        "class for --guarantee class where possible (default: all of the calibration split)",
    )
    add_guarantee_options(parser, default=True)
    parser.add_argument(
        "--reference-dtype",
        choices=REFERENCE_DTYPES,
        default="float32",
        help="storage of the reference activations",
    )
    parser.add_argument(
        "--nonconformity",
        choices=NONCONFORMITY_KINDS,
        default=DEFAULT_NONCONFORMITY,
        help=NONCONFORMITY_HELP,
    )
    parser.add_argument(
        "--one-sided",
        type=comma_list,
        default=[],
        metavar="LAYERS",
        help="served layers, comma-separated, whose neighbor-mass terms are one-sided: they add "
        "nonconformity only below the --floor-quantile of their in-distribution range "
        "(default: none)",
    )
    parser.add_argument(
        "--floor-quantile",
        type=float,
        help=f"floor of the one-sided terms, a quantile of the reference; only with --one-sided "
        f"(default {DEFAULT_FLOOR_QUANTILE})",
    )
    parser.add_argument(
        "--layer-weights",
        type=weight_map,
        default={},
        metavar="LAYER=W,...",
        help="weights of the served layers' neighbor-mass terms, e.g. conv2=2; a term's weight "
        "is its layer's times its distance's (--geometry-weights); neighbor-mass only "
        "(default: 1 each)",
    )
    parser.add_argument(
        "--geometry-weights",
        type=weight_map,
        default={},
        metavar="DISTANCE=W,...",
        help="weights of the neighbor-mass terms per distance (cosine, euclidean), multiplied "
        "with the layer's, e.g. cosine=2; neighbor-mass only (default: 1 each)",
    )
    parser.add_argument(
        "--distance", choices=DISTANCES, default="cosine", help="distance of the served scores"
    )
    parser.add_argument("--temperature-rule", default=DEFAULT_RULE, help=TEMPERATURE_RULE_HELP)
    parser.add_argument(
        "--layers", type=comma_list, help="served layers, comma-separated (default: all hidden)"
    )
    parser.add_argument(
        "--created",
        help="manifest timestamp YYYY-MM-DDTHH:MM:SSZ (default: SOURCE_DATE_EPOCH, else now)",
    )
    parser.add_argument(
        "--device", choices=DEVICES, default="auto", help="where the export's scoring runs"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Export and print a summary of the written model."""
    from snnl.build.assemble import ENTANGLEMENT_POINTS
    from snnl.build.from_run import export_run
    from snnl.evaluation.report import format_temperature

    if args.floor_quantile is not None and not args.one_sided:
        raise InputError("--floor-quantile: only means something with --one-sided LAYERS")
    target = args.repository / args.name
    if target.exists() and not args.force:
        raise InputError(f"--name {args.name}: {target} exists; add --force to replace it")
    manifest = export_run(
        args.run_dir,
        args.repository,
        args.name,
        version=args.version,
        calibration_fraction=args.calibration_fraction,
        calibration_size=args.calibration_size,
        guarantee=args.guarantee,
        delta=args.delta,
        reference_dtype=args.reference_dtype,
        distance=args.distance,
        temperature_rule=args.temperature_rule,
        nonconformity=args.nonconformity,
        mass_one_sided=args.one_sided,
        mass_layer_weights=args.layer_weights,
        mass_geometry_weights=args.geometry_weights,
        mass_floor_quantile=(
            DEFAULT_FLOOR_QUANTILE if args.floor_quantile is None else args.floor_quantile
        ),
        layers=args.layers,
        created=args.created,
        device=args.device,
    )
    print(
        f"exported {manifest.name} version {manifest.version} to {args.repository / manifest.name}"
    )
    print(
        f"  per layer: served temperature (rule {args.temperature_rule}); T* and entanglement "
        f"SNNL(T*) on a stratified subsample of at most {ENTANGLEMENT_POINTS} reference rows"
    )
    for layer in manifest.layers:
        # Both are always set by export; a manifest may leave them out (older models).
        t_star = layer.optimal_temperature
        entangled = layer.entanglement
        print(
            f"  {layer.name}: {layer.dim}-d, {layer.distance}, "
            f"served temperature {layer.temperature:.4g}, "
            f"{layer.reference_size} reference rows, "
            f"T* {'-' if t_star is None else format_temperature(t_star)}, "
            f"entanglement {'-' if entangled is None else f'{entangled:.3g}'}"
        )
    print(f"  nonconformity: {manifest.nonconformity.kind}")
    test = manifest.provenance.get("test", {})
    print(
        f"  calibration: {manifest.calibration_size} samples; test: {test.get('size')} samples, "
        f"accuracy {test.get('accuracy', float('nan')):.4f}, "
        f"flag rate {test.get('flag_rate', float('nan')):.4f} at alpha {manifest.alpha} "
        f"({manifest.guarantee}"
        + (f", delta {manifest.delta or 0.1:g})" if manifest.guarantee == "pac" else ")")
    )
    return 0
