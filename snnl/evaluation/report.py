"""Reports of ``snnl evaluate``: report.json, report.md, ROC curves and score histograms (PNG).

DIR/report.json        Evaluation.to_json(): accuracy, flag_false_positive_rate, entanglement,
                       ood (per set and detector), groups, summary (near / far means), plus
                       per-layer details
DIR/report.md          the tables in Markdown (the best value of every metric column in bold:
                       highest, lowest for FPR95; ties at the shown precision all bold), linking
                       the PNGs
DIR/roc_<stem>.png     ROC curves of every detector, ID positive, one file per OOD set
DIR/hist_<stem>.png    ID vs OOD histograms of each detector's score as an ID percentile (the
                       fraction of ID scores below it), one panel per detector on shared axes
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter
from sklearn.metrics import roc_curve

from snnl.core.temperature import TEMPERATURE_BOUNDS
from snnl.evaluation.benchmark import Evaluation
from snnl.evaluation.ood_metrics import HIGHER, OODMetrics, labels_and_scores

ROC_FILE = "roc_{stem}.png"
HISTOGRAM_FILE = "hist_{stem}.png"
METRIC_HEADERS: dict[str, str] = {
    "auroc": "AUROC %",
    "fpr95": "FPR95 %",
    "aupr": "AUPR-In %",
    "aupr_out": "AUPR-Out %",
}
# Line styles of the ROC curves, so that a curve on top of another still shows both.
LINE_STYLES: tuple[tuple[object, float], ...] = (
    ("-", 2.6),
    ((0, (6, 2)), 2.2),
    ((0, (1, 1.5)), 2.4),
    ((0, (6, 2, 1, 2)), 1.8),
    ((0, (3, 1, 1, 1, 1, 1)), 1.6),
    ((0, (2, 3)), 1.4),
    ("-", 1.0),
)


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def bold_best(column: list[float], higher_is_better: bool) -> list[str]:
    """The values of one table column as percentages, the best in bold (highest, or lowest when
    not ``higher_is_better``); values equal at the shown precision are all bold."""
    shown = [_percent(v) for v in column]
    numbers = [float(text) for text in shown]
    best = max(numbers) if higher_is_better else min(numbers)
    return [f"**{text}**" if n == best else text for text, n in zip(shown, numbers, strict=True)]


def _metric_rows(per_detector: dict[str, OODMetrics]) -> dict[str, list[str]]:
    """{detector: [cell per metric]} with the best of each metric column in bold."""
    names = list(per_detector)
    cells: dict[str, list[str]] = {name: [] for name in names}
    for metric, higher in HIGHER.items():
        column = bold_best([getattr(per_detector[n], metric) for n in names], higher)
        for name, cell in zip(names, column, strict=True):
            cells[name].append(cell)
    return cells


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
    """Markdown table: one row per (OOD set, detector); every metric in %, the best per set in
    bold."""
    header = " | ".join(METRIC_HEADERS.values())
    lines = [
        f"| OOD set | group | detector | {header} |",
        "|---|---|---|" + "---:|" * len(METRIC_HEADERS),
    ]
    for stem, per_detector in evaluation.ood.items():
        for name, cells in _metric_rows(per_detector).items():
            lines.append(f"| {stem} | {evaluation.groups[stem]} | {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def summary_table(evaluation: Evaluation) -> str:
    """Markdown, OpenOOD style: per group (near, far) the mean of each metric over the group's
    sets, one row per detector, with the model's ID accuracy (shared by every detector: they
    all read the same classifier); the best of every column in bold."""
    header = " | ".join(METRIC_HEADERS.values())
    lines = []
    for group, per_detector in evaluation.summary().items():
        stems = [stem for stem in evaluation.ood if evaluation.groups[stem] == group]
        accuracy = bold_best([evaluation.accuracy] * len(per_detector), True)
        lines += [
            f"**{group}-OOD** (mean over {', '.join(stems)})",
            "",
            f"| detector | {header} | ID acc % |",
            "|---|" + "---:|" * (len(METRIC_HEADERS) + 1),
        ]
        rows = _metric_rows(per_detector)
        for (name, cells), acc in zip(rows.items(), accuracy, strict=True):
            lines.append(f"| {name} | {' | '.join(cells)} | {acc} |")
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def auroc_matrix(evaluation: Evaluation) -> str:
    """Markdown table of AUROC % only: one row per OOD set, one column per detector, the best
    of each row in bold."""
    names = list(next(iter(evaluation.ood.values())))
    lines = ["| OOD set | group | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for stem, per_detector in evaluation.ood.items():
        cells = bold_best([per_detector[n].auroc for n in names], True)
        lines.append(f"| {stem} | {evaluation.groups[stem]} | " + " | ".join(cells) + " |")
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
            "## Near- and far-OOD (mean over each group's sets)",
            "",
            "Best of every column in bold (lowest for FPR95). near: new classes of the same"
            " kind of data; far: other data, noise and transformed inputs.",
            "",
            summary_table(evaluation),
            "",
            "## AUROC %",
            "",
            auroc_matrix(evaluation),
            "",
            "## OOD detection per set",
            "",
            ood_table(evaluation),
            "",
            f"soft_neighbor: -nonconformity of the served flag ({evaluation.nonconformity})."
            " soft_neighbor_ratio: -sum_l -log s_l, the fraction of soft-neighbor mass in the"
            " predicted class (the textbook soft-neighbor score), for comparison."
            " AUPR-In: ID positive; AUPR-Out: OOD positive. Definitions: docs/method.md.",
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
    for i, (name, m) in enumerate(evaluation.ood[stem].items()):
        labels, scores = labels_and_scores(
            evaluation.id_scores[name], evaluation.ood_scores[stem][name]
        )
        fpr, tpr, _ = roc_curve(labels, scores)
        style, width = LINE_STYLES[i % len(LINE_STYLES)]
        ax.plot(
            fpr,
            tpr,
            linestyle=style,  # a name or a dash tuple
            linewidth=width,
            zorder=3 + i,  # thick solid first, thinner dashes drawn over it
            label=f"{name} (AUROC {100 * m.auroc:.1f}%)",
        )
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
    """Whether histograms need a log density axis: the tallest bin (of all sets) is over 20
    times the median non-empty bin, so a linear axis would squash the rest of the shape flat."""
    nonzero = densities[densities > 0]
    return nonzero.size > 2 and float(densities.max()) > 20 * float(np.median(nonzero))


def id_percentile(id_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The fraction of ID scores at or below each score (0..1): every detector on one scale,
    where ID samples spread evenly and OOD samples of a good detector pile up near 0."""
    ranked = np.sort(np.asarray(id_scores, dtype=np.float64))
    return np.searchsorted(ranked, np.asarray(scores, dtype=np.float64), side="right") / len(ranked)


HISTOGRAM_BINS = np.linspace(0.0, 1.0, 26)


def _plain_number(value: float, _position: int) -> str:
    """Tick labels with 3 significant digits and no shared offset text (which collides)."""
    return f"{value:.3g}"


def _histogram_plot(evaluation: Evaluation, stem: str, path: Path) -> None:
    names = list(evaluation.ood[stem])
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    densities: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in names:
        id_scores, ood_scores = evaluation.id_scores[name], evaluation.ood_scores[stem][name]
        densities[name] = (
            np.histogram(id_percentile(id_scores, id_scores), HISTOGRAM_BINS, density=True)[0],
            np.histogram(id_percentile(id_scores, ood_scores), HISTOGRAM_BINS, density=True)[0],
        )
    every = np.concatenate([d for pair in densities.values() for d in pair])
    spiky = _spiky(every)  # one decision for every panel: same axes everywhere
    top = float(every.max()) * (2.0 if spiky else 1.08)
    bottom = float(every[every > 0].min()) / 2 if spiky and (every > 0).any() else 0.0
    fig, axes = plt.subplots(
        rows, columns, figsize=(4.2 * columns, 3.3 * rows), squeeze=False, sharex=True, sharey=True
    )
    width = np.diff(HISTOGRAM_BINS)
    for ax, name in zip(axes.flat, names, strict=False):
        id_density, ood_density = densities[name]
        n_id, n_ood = len(evaluation.id_scores[name]), len(evaluation.ood_scores[stem][name])
        for values, label in ((id_density, f"ID (n={n_id})"),
                              (ood_density, f"{stem} (n={n_ood})")):  # fmt: skip
            ax.bar(HISTOGRAM_BINS[:-1], values, width=width, align="edge", alpha=0.55, label=label)
        ax.set_title(name, fontsize=10)
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(bottom if spiky else 0.0, top)
        if spiky:
            ax.set_yscale("log")
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for column in range(columns):  # x labels under the lowest panel of each column
        lowest = max(r for r in range(rows) if r * columns + column < len(names))
        axes[lowest, column].tick_params(labelbottom=True)
        axes[lowest, column].set_xlabel(
            "score as ID percentile (0 = below every ID sample)", fontsize=8
        )
    for ax in axes[:, 0]:
        ax.set_ylabel("density" + (" (log scale)" if spiky else ""), fontsize=8)
        if not spiky:
            ax.yaxis.set_major_formatter(FuncFormatter(_plain_number))
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"{evaluation.model}: detector scores, ID vs {stem} (same axes in every panel)",
        fontsize=11,
    )
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
