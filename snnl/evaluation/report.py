"""Reports of ``snnl evaluate``: report.json, report.md, ROC curves and score histograms (PNG).

DIR/report.json        Evaluation.to_json(): accuracy, flag_false_positive_rate, entanglement,
                       ood (per set and detector), plus per-layer details
DIR/report.md          the tables in Markdown, linking the PNGs
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
from matplotlib.ticker import FuncFormatter, MaxNLocator
from sklearn.metrics import roc_curve

from snnl.core.temperature import TEMPERATURE_BOUNDS
from snnl.evaluation.benchmark import Evaluation
from snnl.evaluation.ood_metrics import labels_and_scores

ROC_FILE = "roc_{stem}.png"
HISTOGRAM_FILE = "hist_{stem}.png"


def format_temperature(t: float, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> str:
    """A temperature for people: 3 significant digits, or "<= 0.0001 (search bound)" /
    ">= 10000 (search bound)" when T* is the end of the searched interval ``bounds``: the
    SNNL still decreases there, so the true minimizer lies beyond and the number is a bound."""
    low, high = bounds
    if t <= low * (1 + 1e-6):
        return f"<= {low:g} (search bound)"
    if t >= high * (1 - 1e-6):
        return f">= {high:g} (search bound)"
    return f"{t:.3g}"


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
    """Markdown table of the per-layer embedding evaluation of the ID set's features: the served
    T (from the model) with the SNNL it gives on this set, and this set's own T* and SNNL(T*)."""
    lines = [
        "| layer | distance | served T | SNNL at served T | T* of this set "
        "| entanglement SNNL(T*) | k-NN acc % |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for layer in evaluation.layers.layers:
        t = "-" if layer.temperature is None else f"{layer.temperature:.4g}"
        snnl = "-" if layer.snnl is None else f"{layer.snnl:.4f}"
        lines.append(
            f"| {layer.name} | {layer.distance} | {t} | {snnl} | "
            f"{format_temperature(layer.optimal_temperature)} | {layer.entanglement:.3g} "
            f"| {100 * layer.knn_accuracy:.1f} |"
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
            " predicted class (the textbook soft-neighbor score), for comparison."
            " Definitions: docs/method.md.",
            "",
            "## Layers on the ID set",
            "",
            "Served T: the model's temperature (from its reference set); T* and entanglement:"
            " measured on this ID set (a stratified subsample of at most 2000 samples).",
            "",
            layer_table(evaluation),
            "",
        ]
    )


def figures(evaluation: Evaluation) -> str:
    """The report.md section that links each OOD set's ROC and histogram PNGs."""
    lines = ["## Figures", ""]
    for stem in evaluation.ood:
        lines += [
            f"![ROC curves, ID vs {stem}]({ROC_FILE.format(stem=stem)})",
            f"![score histograms, ID vs {stem}]({HISTOGRAM_FILE.format(stem=stem)})",
            "",
        ]
    return "\n".join(lines)


def _roc_plot(evaluation: Evaluation, stem: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 6.4))
    for name, m in evaluation.ood[stem].items():
        labels, scores = labels_and_scores(
            evaluation.id_scores[name], evaluation.ood_scores[stem][name]
        )
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {100 * m.auroc:.1f}%)")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set(
        xlabel=f"false-positive rate ({stem} samples accepted as ID)",
        ylabel="true-positive rate (ID samples accepted)",
        xlim=(-0.01, 1.01),  # a margin, so curves along the frame are not hidden by it
        ylim=(-0.01, 1.01),
    )
    ax.set_title(f"{evaluation.model}: ID vs {stem}", fontsize=10)
    ax.grid(alpha=0.3)
    # Below the axes: inside, the legend would hide the curves of the worst detectors.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _spiky(densities: np.ndarray) -> bool:
    """Whether histograms need a log density axis: the tallest bin (of both sets) is over 20
    times the median non-empty bin, so a linear axis would squash the rest of the shape flat."""
    nonzero = densities[densities > 0]
    return nonzero.size > 2 and float(densities.max()) > 20 * float(np.median(nonzero))


def _plain_number(value: float, _position: int) -> str:
    """Tick labels with 3 significant digits and no shared offset text (which collides)."""
    return f"{value:.3g}"


def _histogram_plot(evaluation: Evaluation, stem: str, path: Path) -> None:
    names = list(evaluation.ood[stem])
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.3 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        id_scores, ood_scores = evaluation.id_scores[name], evaluation.ood_scores[stem][name]
        # Bins over the central 98% of all scores; the tails are clipped into the end bins.
        lo, hi = np.quantile(np.concatenate([id_scores, ood_scores]), [0.01, 0.99])
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, 41)
        densities = []
        for values, label in ((id_scores, f"ID (n={len(id_scores)})"),
                              (ood_scores, f"{stem} (n={len(ood_scores)})")):  # fmt: skip
            counts, _, _ = ax.hist(
                np.clip(values, lo, hi), bins=edges, alpha=0.55, density=True, label=label
            )
            densities.append(np.asarray(counts))
        spiky = _spiky(np.concatenate(densities))
        if spiky:
            ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("score (higher = more ID; 1% tails clipped)", fontsize=8)
        ax.set_ylabel("density" + (" (log scale)" if spiky else ""), fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.xaxis.set_major_formatter(FuncFormatter(_plain_number))
        if not spiky:
            ax.yaxis.set_major_formatter(FuncFormatter(_plain_number))
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(f"{evaluation.model}: detector scores, ID vs {stem}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(evaluation: Evaluation, out_dir: str | Path) -> list[Path]:
    """Write report.json, report.md (with links to the figures) and the PNGs into ``out_dir``;
    the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json", out / "report.md"]
    written[0].write_text(json.dumps(evaluation.to_json(), indent=2) + "\n")
    written[1].write_text(markdown(evaluation) + "\n" + figures(evaluation))
    for stem in evaluation.ood:
        roc = out / ROC_FILE.format(stem=stem)
        hist = out / HISTOGRAM_FILE.format(stem=stem)
        _roc_plot(evaluation, stem, roc)
        _histogram_plot(evaluation, stem, hist)
        written += [roc, hist]
    return written
