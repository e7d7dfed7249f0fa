"""``snnl monitor``: replay .npz files through a model and its drift monitor, in order.

    snnl monitor --repository models --model digits-mlp day1.npz day2.npz [--plot drift.png]

Each file holds x (N, *input_shape) (for an embedding-only model: the embeddings, as for snnl
score). The files are scored in order as one stream and the drift monitor (docs/method.md, "Drift
monitor") runs over the served p-values, as the service's would. One line per alarm goes to
stdout: the sample at which it fired and the estimated change point, each as a stream index and as
file and row; then a summary, with each layer's alarms. --plot draws the statistic over the stream,
with the threshold, the alarms and the file boundaries.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from snnl.cli.common import DEVICES, load_detector, progress_bar
from snnl.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from snnl.model.detector import Detector
    from snnl.monitoring import Alarm, DriftMonitor, DriftSettings
    from snnl.scoring.batch import CheckedBatch, Samples

# Mirrors of snnl.monitoring.drift's defaults (checked equal by tests/cli/test_monitor_cli.py):
# building the parser must not import numpy.
DEFAULT_ERT = 1_000_000.0
DEFAULT_CALIBRATION_RISK = 0.001


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``snnl monitor``."""
    parser = subparsers.add_parser(
        "monitor",
        help="replay .npz files in order through a model's drift monitor; print where it alarms",
        description=__doc__.split("\n\n", 1)[1].strip(),
    )
    parser.add_argument(
        "data", type=Path, nargs="+", metavar="FILE.npz", help="x (N, *input_shape), in order"
    )
    parser.add_argument("--repository", type=Path, required=True, help="the model repository")
    parser.add_argument("--model", required=True, help="the model's name in the repository")
    parser.add_argument(
        "--ert",
        type=float,
        default=DEFAULT_ERT,
        help="expected samples between false alarms on in-distribution data (at least 10000)",
    )
    parser.add_argument(
        "--calibration-risk",
        type=float,
        default=DEFAULT_CALIBRATION_RISK,
        help="probability that the calibration set is too unlucky for the ERT guarantee",
    )
    parser.add_argument("--plot", type=Path, help="draw the statistic over the stream (PNG)")
    parser.add_argument("--batch-size", type=int, default=1024, help="samples per scoring call")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where scoring runs")
    parser.set_defaults(run=run)


class Stream:
    """The files as one stream: stream index <-> (file, row)."""

    def __init__(self, paths: list[Path], sizes: list[int]) -> None:
        self.paths = paths
        self.starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.total = sum(sizes)

    def where(self, index: int) -> str:
        import bisect

        i = bisect.bisect_right(self.starts, index) - 1
        return f"{self.paths[i].name} row {index - self.starts[i]}"


def _read(path: Path, detector: Detector) -> CheckedBatch:
    """The checked samples of one file (InputError naming the file otherwise)."""
    from snnl.training.data import read_npz_arrays

    arrays = read_npz_arrays(path)
    layers = detector.layers
    try:
        if detector.input_shape is not None or len(layers) == 1:
            if "x" not in arrays:
                raise InputError("missing key 'x' (the samples, (N, ...))")
            samples: Samples = (
                arrays["x"] if detector.input_shape is not None else {layers[0]: arrays["x"]}
            )
        else:
            missing = [layer for layer in layers if layer not in arrays]
            if missing:
                raise InputError(f"missing key {missing[0]!r} (one (N, d) array per layer)")
            samples = {layer: arrays[layer] for layer in layers}
        return detector.check(samples)
    except InputError as err:
        raise InputError(f"{path}: {err}") from err


def _settings(args: argparse.Namespace) -> DriftSettings:
    from snnl.monitoring import DriftSettings

    try:
        return DriftSettings(ert=args.ert, calibration_risk=args.calibration_risk)
    except InputError as err:  # "ert: ..." -> "--ert: ...", as the flag is spelled
        field, _, rest = str(err).partition(":")
        raise InputError(f"--{field.replace('_', '-')}:{rest}") from err


def run(args: argparse.Namespace) -> int:
    """Score the files in order, run the monitors, print the alarms and a summary."""
    import numpy as np

    from snnl.monitoring import DriftMonitor
    from snnl.scoring.batch import num_rows, row_chunks

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    settings = _settings(args)
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise InputError(f"--plot: expected a .png file name, got {args.plot}")
    detector = load_detector(args.repository, args.model, args.device)
    files = [_read(path, detector) for path in args.data]  # every file checked before scoring
    stream = Stream(list(args.data), [num_rows(samples) for samples in files])
    n_cal = detector.manifest.calibration_size
    model = DriftMonitor(n_cal, settings)
    layers = {name: DriftMonitor(n_cal, settings) for name in detector.layers}
    paths: list[np.ndarray] = []
    layer_paths: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    alarms: list[Alarm] = []
    report = _Report(stream)
    with progress_bar(stream.total, desc="monitor", unit="sample") as bar:
        for samples in files:
            for rows in row_chunks(samples, args.batch_size):
                result = detector.score(rows)
                state, path = model.trace(result.p_value)
                paths.append(path)
                for i, (name, monitor) in enumerate(layers.items()):
                    layer_paths[name].append(monitor.trace(result.layer_p_value[:, i])[1])
                if state.new_alarms:
                    bar.clear()
                for alarm in state.new_alarms:
                    report.alarm(alarm)
                    alarms.append(alarm)
                bar.update(len(result))
        report.close()
    _summary(detector, stream, model, layers, settings)
    if args.plot is not None:
        _plot(
            args.plot,
            np.concatenate(paths),
            {name: np.concatenate(values) for name, values in layer_paths.items()},
            alarms,
            stream,
            settings.threshold,
            f"{detector.name} version {detector.version}",
        )
        print(f"wrote {args.plot}")
    return 0


class _Report:
    """Prints alarms as they come, one line per episode: an alarm whose change point is the
    sample after the previous alarm (the statistic restarted and climbed straight back) belongs to
    the same shift and is counted on a follow-up line instead of printed."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.number = 0
        self.last: Alarm | None = None
        self.more = 0

    def alarm(self, alarm: Alarm) -> None:
        self.number += 1
        if self.last is not None and alarm.change_point == self.last.sample + 1:
            self.more += 1
        else:
            self._flush()
            where = self.stream.where
            print(
                f"alarm {self.number}: sample {alarm.sample} ({where(alarm.sample)}), "
                f"estimated change point {alarm.change_point} ({where(alarm.change_point)}), "
                f"statistic {alarm.statistic:.2f}"
            )
        self.last = alarm

    def close(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if self.more and self.last is not None:
            print(
                f"  and {self.more} more alarms as the shift went on, the last at sample "
                f"{self.last.sample} ({self.stream.where(self.last.sample)})"
            )
        self.more = 0


def _summary(
    detector: Detector,
    stream: Stream,
    model: DriftMonitor,
    layers: dict[str, DriftMonitor],
    settings: DriftSettings,
) -> None:
    state = model.state
    per_layer = ", ".join(f"{name} {monitor.state.alarms}" for name, monitor in layers.items())
    print(
        f"replayed {stream.total} samples from {len(stream.paths)} files with {detector.name} "
        f"version {detector.version}: {state.alarms} alarms "
        f"(ERT {settings.ert:.3g}, calibration risk {settings.calibration_risk:g}, calibration "
        f"size {detector.manifest.calibration_size}); alarms per layer: {per_layer or 'none'}"
    )


def _plot(
    out: Path,
    path: np.ndarray,
    layer_paths: dict[str, np.ndarray],
    alarms: list[Alarm],
    stream: Stream,
    threshold: float,
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    for name, values in layer_paths.items():
        ax.plot(values, lw=0.6, alpha=0.5, label=f"layer {name}")
    ax.plot(path, lw=1.0, color="tab:blue", label="model (combined p-value)")
    ax.axhline(threshold, color="tab:red", ls="--", lw=1, label="alarm threshold")
    at = [alarm.sample for alarm in alarms]
    ax.plot(at, path[at], "v", color="tab:red", ms=5, label="alarms")
    for start, file in zip(stream.starts, stream.paths, strict=True):
        ax.axvline(start, color="0.5", lw=0.8, ls=":")
        ax.text(start, threshold * 1.22, f" {file.name}", fontsize=8, va="top", color="0.3")
    ax.set_ylim(0, threshold * 1.25)
    ax.set_xlim(0, max(stream.total - 1, 1))
    ax.set_xlabel("sample (stream order)")
    ax.set_ylabel("statistic (log10 evidence)")
    ax.set_title(f"drift monitor: {title}", fontsize=10)
    ax.legend(loc="center left", fontsize=8, ncol=2, bbox_to_anchor=(0.0, 0.55))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
