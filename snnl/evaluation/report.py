"""Reports of ``snnl evaluate``: report.json, report.md, ROC curves and score histograms (PNG).

DIR/report.json        Evaluation.to_json() (SPEC §4 keys, plus extras)
DIR/report.md          the tables in Markdown
DIR/roc_<stem>.png     ROC curves of every detector, ID positive, one file per OOD set
DIR/hist_<stem>.png    ID vs OOD score histograms, one panel per detector
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve

from snnl.evaluation.benchmark import Evaluation
from snnl.evaluation.ood_metrics import labels_and_scores


def ood_table(evaluation: Evaluation) -> str:
    """Markdown table: one row per (OOD set, detector); AUROC and AUPR in %, FPR95 in %."""
    lines = [
        "| OOD set | detector | AUROC % | FPR95 % | AUPR-In % |",
        "|---|---|---:|---:|---:|",
    ]
    for stem, per_detector in evaluation.ood.items():
        best = max(m.auroc for m in per_detector.values())
        for name, m in per_detector.items():
            auroc = f"{100 * m.auroc:.1f}"
            if m.auroc == best:
                auroc = f"**{auroc}**"
            lines.append(
                f"| {stem} | {name} | {auroc} | {100 * m.fpr95:.1f} | {100 * m.aupr:.1f} |"
            )
    return "\n".join(lines)


def auroc_matrix(evaluation: Evaluation) -> str:
    """Markdown table of AUROC % only: one row per OOD set, one column per detector."""
    names = list(next(iter(evaluation.ood.values())))
    lines = ["| OOD set | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for stem, per_detector in evaluation.ood.items():
        lines.append(
            f"| {stem} | "
            + " | ".join(f"{100 * m.auroc:.1f}" for m in per_detector.values())
            + " |"
        )
    return "\n".join(lines)


def layer_table(evaluation: Evaluation) -> str:
    """Markdown table of the per-layer embedding evaluation on the ID set."""
    lines = [
        "| layer | distance | served T | SNNL at T | T* | entanglement SNNL(T*) | k-NN acc % |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for layer in evaluation.layers.layers:
        t = "-" if layer.temperature is None else f"{layer.temperature:.4g}"
        snnl = "-" if layer.snnl is None else f"{layer.snnl:.4f}"
        lines.append(
            f"| {layer.name} | {layer.distance} | {t} | {snnl} | {layer.optimal_temperature:.4g} "
            f"| {layer.entanglement:.4f} | {100 * layer.knn_accuracy:.1f} |"
        )
    return "\n".join(lines)


def markdown(evaluation: Evaluation) -> str:
    """The whole report.md text."""
    flag_rate = 100 * evaluation.flag_false_positive_rate
    sizes = ", ".join(
        [f"ID {evaluation.sizes['id']}"] + [f"{s} {n}" for s, n in evaluation.sizes["ood"].items()]
    )
    return "\n".join(
        [
            f"# OOD evaluation of {evaluation.model} (version {evaluation.version})",
            "",
            f"Samples: {sizes}. Scores: higher = more in-distribution; ID is the positive class.",
            "",
            f"- accuracy on the ID set: {100 * evaluation.accuracy:.2f}%",
            f"- flag false-positive rate on the ID set: {flag_rate:.2f}%"
            f" (alpha = {evaluation.alpha:g})",
            "",
            "## AUROC %",
            "",
            auroc_matrix(evaluation),
            "",
            "## OOD detection",
            "",
            ood_table(evaluation),
            "",
            f"soft_neighbor: -nonconformity of the served flag ({evaluation.nonconformity})."
            " soft_neighbor_ratio: -sum_l -log s_l, the fraction of soft-neighbor mass in the"
            " predicted class (SPEC §2's starting point), for comparison.",
            "",
            "## Layers on the ID set",
            "",
            layer_table(evaluation),
            "",
        ]
    )


def _roc_plot(evaluation: Evaluation, stem: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, m in evaluation.ood[stem].items():
        labels, scores = labels_and_scores(
            evaluation.id_scores[name], evaluation.ood_scores[stem][name]
        )
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {100 * m.auroc:.1f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false-positive rate (OOD accepted)", ylabel="true-positive rate (ID accepted)")
    ax.set_title(f"{evaluation.model}: ID vs {stem}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _histogram_plot(evaluation: Evaluation, stem: str, path: Path) -> None:
    names = list(evaluation.ood[stem])
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        id_scores, ood_scores = evaluation.id_scores[name], evaluation.ood_scores[stem][name]
        # Bins over the central 98% of all scores; the tails are clipped into the end bins.
        lo, hi = np.quantile(np.concatenate([id_scores, ood_scores]), [0.01, 0.99])
        edges = np.linspace(lo, hi, 41) if hi > lo else 40
        for values, label in ((id_scores, "ID"), (ood_scores, stem)):
            ax.hist(np.clip(values, lo, hi), bins=edges, alpha=0.6, density=True, label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("score (higher = more ID; tails clipped)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(evaluation: Evaluation, out_dir: str | Path) -> list[Path]:
    """Write report.json, report.md and the PNGs into ``out_dir``; the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json", out / "report.md"]
    written[0].write_text(json.dumps(evaluation.to_json(), indent=2) + "\n")
    written[1].write_text(markdown(evaluation))
    for stem in evaluation.ood:
        roc, hist = out / f"roc_{stem}.png", out / f"hist_{stem}.png"
        _roc_plot(evaluation, stem, roc)
        _histogram_plot(evaluation, stem, hist)
        written += [roc, hist]
    return written
