"""``snnl evaluate``: OOD detection of a served model against MSP, energy, Mahalanobis, KNN and ViM.

The ID file needs x and y (labels in the model's 0..C-1 space); OOD files need x. Each --ood may
be prefixed near: (new classes of the same data) or far: (other data, noise, transforms; the
default), and the report gives the mean over each group beside each set (AUROC, FPR95, AUPR-In,
AUPR-Out, ID accuracy; the best of every column in bold). Prints the tables and writes
report.json, report.md, roc_<stem>.png, hist_<stem>.png and fpr_resplits.png (the flag's rate
over calibration/test re-splits of the ID scores) to --report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from snnl.cli.common import DEVICES, load_detector, progress_bar
from snnl.errors import InputError

OOD_GROUPS: tuple[str, ...] = ("near", "far")  # snnl.evaluation.benchmark.GROUPS


def ood_file(text: str) -> tuple[str, Path]:
    """argparse type: "near:FILE.npz", "far:FILE.npz" or "FILE.npz" (far) -> (group, path)."""
    group, sep, rest = text.partition(":")
    if sep and group in OOD_GROUPS and rest:
        return group, Path(rest)
    return "far", Path(text)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``snnl evaluate``."""
    parser = subparsers.add_parser(
        "evaluate",
        help="AUROC / FPR95 / AUPR of the soft-neighbor detector and baselines on ID vs OOD sets",
        description=__doc__.split("\n\n", 1)[1].strip(),
    )
    parser.add_argument("--repository", type=Path, required=True, help="the model repository")
    parser.add_argument("--model", required=True, help="the model's name in the repository")
    parser.add_argument(
        "--id", dest="id_file", type=Path, required=True, help="ID set (.npz, x and y)"
    )
    parser.add_argument(
        "--ood",
        type=ood_file,
        action="append",
        required=True,
        metavar="[near:|far:]FILE",
        help="an OOD set (.npz, x), prefixed near: or far: (no prefix: far); repeatable",
    )
    parser.add_argument(
        "--report", type=Path, default=Path("report"), help="folder for the report files"
    )
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where scoring runs")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load, evaluate, print the tables, write the report."""
    from snnl.evaluation.benchmark import SOFT_NEIGHBOR, evaluate
    from snnl.evaluation.report import markdown, write_report
    from snnl.evaluation.resplits import plot_resplits
    from snnl.training.data import read_npz

    id_x, id_y = read_npz(args.id_file)
    assert id_y is not None  # read_npz requires labels by default
    ood_sets = {}
    groups = {}
    for group, path in args.ood:
        if path.stem in ood_sets:
            raise InputError(
                f"--ood: two files share the name {path.stem!r}; report keys must differ"
            )
        ood_sets[path.stem] = read_npz(path, require_labels=False)[0]
        groups[path.stem] = group
    det = load_detector(args.repository, args.model, args.device)
    total = len(id_x) + sum(len(x) for x in ood_sets.values())
    with progress_bar(total, desc="evaluate", unit="sample") as bar:
        evaluation = evaluate(det, id_x, id_y, ood_sets, on_scored=bar.update, groups=groups)
    written = write_report(evaluation, args.report)
    written.append(plot_resplits(-evaluation.id_scores[SOFT_NEIGHBOR], args.report))
    print(markdown(evaluation))
    print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stdout)
    return 0
