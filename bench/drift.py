"""Drift monitor benchmark: false alarms on in-distribution streams and detection delays
on real MNIST data, with the statistic plotted over time.

    python -m bench.drift            # the committed table: bench/results/drift.{md,json,png}
    python -m bench.drift --quick    # a short run (same steps, fewer draws and samples)

1. Train the library's MLP (3 epochs, SNNL factor +1) on a subset of MNIST digits 0-5 and export
   it to a scratch repository with the product's defaults (neighbor-mass nonconformity).
2. Score with ``Detector.score``: the in-distribution (ID) pool, every digit 0-5 image that the
   model did not train on (its calibration and test splits, and the MNIST images left out of the
   training subset); Fashion-MNIST; the held-out digits 6-9; uniform noise over the pixel range.
3. False alarms: per calibration draw, a calibration set of the model's size is drawn from the ID
   pool, p-values (combined and per layer) are recomputed against it exactly as the service does,
   and a stream of ``--samples`` ID requests is drawn with replacement from the rest of the pool.
   The model monitor (combined p-value), each layer's monitor, and the same monitor without the
   calibration-conditional correction run over it. Goal: ERT >= 10^6 samples.
4. Delays: after 5,000 ID samples, a share (100%, 10%, 1%) of the requests comes from an OOD set,
   abruptly or ramping up linearly over 5,000 samples ("gradual"); the delay is the number of
   samples from the start of the shift to the model monitor's first alarm (horizon 50,000).
   Goal: 10% contamination caught within 1,000 samples.

Everything runs on the CPU (one torch thread); numbers are per calibration draw, pooled.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from snnl.build.from_run import export_run
from snnl.evaluation.ood_sets import uniform_noise
from snnl.model.detector import Detector
from snnl.monitoring import DriftMonitor, DriftSettings
from snnl.training.data import load_dataset
from snnl.training.loop import TrainSettings, prepare_run, train

RESULTS = Path(__file__).resolve().parent / "results"
ID_CLASSES = [0, 1, 2, 3, 4, 5]
HELD_OUT = [6, 7, 8, 9]
WARMUP = 5000  # ID samples before a shift
RAMP = 5000  # samples over which a gradual shift reaches its share
HORIZON = 50_000  # samples watched after the shift starts
SHARES = (1.0, 0.1, 0.01)
SHAPES = ("abrupt", "gradual")


@dataclass(frozen=True)
class Plan:
    train_subset: int
    epochs: int
    draws: int  # calibration draws for the false-alarm streams
    samples: int  # ID samples per draw
    delay_draws: int  # calibration draws (one stream each) per delay cell
    pool_limit: int | None  # ID pool size cap (None: all)


FULL = Plan(train_subset=20_000, epochs=3, draws=20, samples=1_000_000, delay_draws=20,
            pool_limit=None)  # fmt: skip
QUICK = Plan(train_subset=4000, epochs=1, draws=3, samples=100_000, delay_draws=4,
             pool_limit=8000)  # fmt: skip


@dataclass
class Scores:
    """Per sample: the nonconformity a (N,) and the per-layer soft-neighbor scores s (N, L)."""

    a: np.ndarray
    s: np.ndarray

    def take(self, index: np.ndarray) -> Scores:
        return Scores(self.a[index], self.s[index])


@dataclass
class Calibrated:
    """Sorted calibration nonconformities (n,) and per-layer scores (n, L) of one draw."""

    a: np.ndarray
    s: np.ndarray

    @property
    def n(self) -> int:
        return int(self.a.shape[0])

    def p(self, scores: Scores) -> tuple[np.ndarray, np.ndarray]:
        """p = (1 + #{a_i >= a}) / (n + 1); p_l = (1 + #{s_l,i <= s_l}) / (n + 1)."""
        n = self.n
        p = (1.0 + n - np.searchsorted(self.a, scores.a, side="left")) / (n + 1.0)
        layers = [
            np.searchsorted(self.s[:, i], scores.s[:, i], side="right")
            for i in range(self.s.shape[1])
        ]
        return p, (1.0 + np.stack(layers, axis=1)) / (n + 1.0)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build_model(work: Path, plan: Plan) -> tuple[Detector, dict[str, np.ndarray], dict]:
    """Train and export; returns the detector, the raw sample sets and a description."""
    data = load_dataset("mnist", ID_CLASSES)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.y))
    subset, rest = order[: plan.train_subset], order[plan.train_subset :]
    subset_file = work / "mnist-0-5-subset.npz"
    x_id = data.x.reshape(len(data.y), -1)
    np.savez(subset_file, x=x_id[subset], y=data.y[subset])
    settings = TrainSettings(dataset=str(subset_file), arch="mlp", epochs=plan.epochs, seed=0)
    run_dir = work / "run"
    start = time.perf_counter()
    train(prepare_run(settings), run_dir)
    trained = time.perf_counter() - start
    manifest = export_run(run_dir, work / "models", "mnist-0-5", device="cpu")
    detector = Detector.load(work / "models", "mnist-0-5", device="cpu")
    split = np.load(run_dir / "split.npz")
    pool = np.concatenate([split["x_calibration"], split["x_test"], x_id[rest]])
    y_test = split["y_test"]
    x_test = split["x_test"]
    fashion = load_dataset("fashion-mnist").x
    held_out = load_dataset("mnist", HELD_OUT).x
    sets = {
        "id": pool,
        "fashion-mnist": fashion.reshape(len(fashion), -1),
        "held-out digits": held_out.reshape(len(held_out), -1),
        "noise": uniform_noise(x_id, 10_000, seed=1),
    }
    if plan.pool_limit is not None:
        sets = {name: x[: plan.pool_limit] for name, x in sets.items()}
    accuracy = float((detector.score(x_test).prediction == y_test).mean())
    about = {
        "train_samples": len(split["y_train"]),
        "epochs": plan.epochs,
        "seconds_to_train": round(trained, 1),
        "test_accuracy": round(accuracy, 4),
        "calibration_size": manifest.calibration_size,
        "layers": list(detector.layers),
        "pool_sizes": {name: len(x) for name, x in sets.items()},
    }
    return detector, sets, about


def score(detector: Detector, sets: dict[str, np.ndarray]) -> dict[str, Scores]:
    out = {}
    for name, x in sets.items():
        start = time.perf_counter()
        result = detector.score(x, batch_size=2048)
        a, s = result.nonconformity, result.soft_neighbor_score
        out[name] = Scores(a, s)
        log(f"scored {name}: {len(a)} samples in {time.perf_counter() - start:.1f} s")
    return out


def draw_calibration(
    rng: np.random.Generator, pool: Scores, n: int
) -> tuple[Calibrated, np.ndarray]:
    """A calibration set of n pool rows, and the indices of the rest of the pool."""
    order = rng.permutation(len(pool.a))
    cal, rest = order[:n], order[n:]
    return Calibrated(np.sort(pool.a[cal]), np.sort(pool.s[cal], axis=0)), rest


def false_alarms(
    scores: dict[str, Scores], n_cal: int, layers: tuple[str, ...], plan: Plan
) -> dict[str, dict[str, float | None]]:
    """Alarms of each monitor over ``plan.draws`` x ``plan.samples`` ID samples."""
    rng = np.random.default_rng(10)
    names = ["model", *[f"layer {layer}" for layer in layers], "model, uncorrected"]
    alarms = dict.fromkeys(names, 0)
    per_draw: dict[str, list[int]] = {name: [] for name in names}
    chunk = 100_000
    for draw in range(plan.draws):
        cal, rest = draw_calibration(rng, scores["id"], n_cal)
        monitors = {name: DriftMonitor(n_cal) for name in names[:-1]}
        monitors["model, uncorrected"] = DriftMonitor(None)
        for start in range(0, plan.samples, chunk):
            rows = rng.choice(rest, size=min(chunk, plan.samples - start), replace=True)
            p, p_layers = cal.p(scores["id"].take(rows))
            monitors["model"].update(p)
            monitors["model, uncorrected"].update(p)
            for i, layer in enumerate(layers):
                monitors[f"layer {layer}"].update(p_layers[:, i])
        for name, monitor in monitors.items():
            alarms[name] += monitor.state.alarms
            per_draw[name].append(monitor.state.alarms)
        log(f"false alarms, draw {draw + 1}/{plan.draws}: "
            + ", ".join(f"{k} {v}" for k, v in alarms.items()))  # fmt: skip
    total = plan.draws * plan.samples
    return {
        name: {
            "samples": total,
            "alarms": alarms[name],
            "draws_with_alarms": sum(1 for c in per_draw[name] if c),
            "ert_estimate": total / alarms[name] if alarms[name] else None,
            # 95% lower bound on the ERT from a Poisson count of alarms (0 alarms: N / 3.0)
            "ert_lower_95": total / _poisson_upper(alarms[name]),
        }
        for name in names
    }


def _poisson_upper(count: int) -> float:
    """One-sided 95% upper confidence bound on a Poisson mean after ``count`` events."""
    from scipy.stats import chi2

    return float(chi2.ppf(0.95, 2 * (count + 1)) / 2)


def stream(
    rng: np.random.Generator, id_rows: np.ndarray, ood_size: int, share: float, shape: str
) -> tuple[np.ndarray, np.ndarray]:
    """(which set, row) per sample: WARMUP ID samples, then HORIZON samples of which a share
    (abrupt, or rising linearly over RAMP samples) comes from the OOD set."""
    size = WARMUP + HORIZON
    after = np.arange(size) - WARMUP
    rate = np.where(after < 0, 0.0, share)
    if shape == "gradual":
        rate = rate * np.clip((after + 1) / RAMP, 0.0, 1.0)
    ood = rng.random(size) < rate
    rows = np.where(ood, rng.integers(0, ood_size, size), rng.choice(id_rows, size))
    return ood, rows


def delays(
    scores: dict[str, Scores],
    n_cal: int,
    plan: Plan,
    shares: tuple[float, ...] = SHARES,
    shapes: tuple[str, ...] = SHAPES,
    seed: int = 20,
) -> list[dict[str, object]]:
    """One cell per (OOD set, share, shape): ``plan.delay_draws`` streams, each with its own
    calibration draw of size ``n_cal``."""
    rng = np.random.default_rng(seed)
    cells: list[dict[str, object]] = []
    ood_sets = [name for name in scores if name != "id"]
    calibrations = [draw_calibration(rng, scores["id"], n_cal) for _ in range(plan.delay_draws)]
    p_ood = {name: [cal.p(scores[name])[0] for cal, _ in calibrations] for name in ood_sets}
    for name in ood_sets:
        for share in shares:
            for shape in shapes:
                found, points, early = [], [], 0
                for d, (cal, rest) in enumerate(calibrations):
                    ood, rows = stream(rng, rest, len(scores[name].a), share, shape)
                    p_id = cal.p(scores["id"].take(np.where(ood, 0, rows)))[0]
                    p = np.where(ood, p_ood[name][d][np.where(ood, rows, 0)], p_id)
                    alarm = first_alarm(DriftMonitor(n_cal), p)
                    if alarm is None:
                        found.append(math.inf)
                        continue
                    sample, change_point, before = alarm
                    early += before
                    found.append(sample - WARMUP)
                    points.append(change_point - WARMUP)
                delay = np.asarray(found)
                cells.append({
                    "ood": name,
                    "calibration_size": n_cal,
                    "share": share,
                    "shape": shape,
                    "streams": len(found),
                    "detected": int(np.isfinite(delay).sum()),
                    "median_delay": _finite(float(np.quantile(delay, 0.5, method="higher"))),
                    "p90_delay": _finite(float(np.quantile(delay, 0.9, method="higher"))),
                    "within_1000": float(np.mean(delay <= 1000)),
                    "median_change_point_error": (
                        float(np.median(points)) if points else None
                    ),
                    "alarms_before_shift": early,
                })  # fmt: skip
                log(f"delay n={n_cal} {name} {share:.0%} {shape}: "
                    f"median {cells[-1]['median_delay']}")  # fmt: skip
    return cells


def first_alarm(monitor: DriftMonitor, p: np.ndarray) -> tuple[int, int, int] | None:
    """(sample, change point) of the first alarm at or after the shift, and how many alarms
    came before it; fed in batches of 1000, stopping at that alarm."""
    before = 0
    for start in range(0, len(p), 1000):
        for alarm in monitor.update(p[start : start + 1000]).new_alarms:
            if alarm.sample >= WARMUP:
                return alarm.sample, alarm.change_point, before
            before += 1
    return None


def plot(scores: dict[str, Scores], n_cal: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(30)
    cal, rest = draw_calibration(rng, scores["id"], n_cal)
    threshold = DriftSettings().threshold
    panels = [
        ("fashion-mnist", 0.1, "abrupt"),
        ("held-out digits", 0.1, "abrupt"),
        ("noise", 0.01, "abrupt"),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 8), sharex=True)
    window = WARMUP + 20_000
    for ax, (name, share, shape) in zip(axes, panels, strict=True):
        ood, rows = stream(rng, rest, len(scores[name].a), share, shape)
        ood, rows = ood[:window], rows[:window]
        p_id = cal.p(scores["id"].take(np.where(ood, 0, rows)))[0]
        p = np.where(ood, cal.p(scores[name].take(np.where(ood, rows, 0)))[0], p_id)
        state, path = DriftMonitor(n_cal).trace(p)
        ax.plot(np.arange(window), path, lw=0.8, color="tab:blue", label="statistic (log10)")
        ax.axhline(threshold, color="tab:red", ls="--", lw=1, label="alarm: log10(ERT) = 6")
        ax.axvline(WARMUP, color="black", lw=1, label="shift starts")
        if shape == "gradual":
            ax.axvspan(WARMUP, WARMUP + RAMP, color="0.9", label="ramp")
        alarms = [a.sample for a in state.new_alarms]
        ax.plot(alarms, path[alarms], "v", color="tab:red", ms=5, label="alarms")
        ax.set_ylim(0, threshold * 1.3)
        ax.set_ylabel("log10 evidence")
        ax.set_title(f"MNIST 0-5 model, then {share:.0%} {name} ({shape})", fontsize=10)
    axes[0].legend(loc="center left", fontsize=8, ncol=1, bbox_to_anchor=(0.0, 0.55))
    axes[-1].set_xlabel("sample")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def fmt_ert(value: float | None, samples: int) -> str:
    return f"{value:.2g}" if value is not None else f"> {samples:.0e} (no alarm)"


def markdown(result: dict) -> str:
    about = result["model"]
    lines = [
        "# Drift monitor on MNIST (bench/drift.py)",
        "",
        f"Model: MLP trained {about['epochs']} epochs on {about['train_samples']} MNIST images "
        f"of digits 0-5, test accuracy {about['test_accuracy']:.3f}; calibration size "
        f"n = {about['calibration_size']}; monitor defaults (ERT 10^6, calibration risk 0.001). "
        f"ID pool: {about['pool_sizes']['id']} digit 0-5 images the model never trained on. "
        f"Command: `{result['command']}` ({result['seconds']:.0f} s, {result['machine']}).",
        "",
        "## False alarms on in-distribution streams",
        "",
        f"{result['plan']['draws']} calibration draws x {result['plan']['samples']:,} ID samples "
        "(p-values recomputed against each draw, the stream resampled from the rest of the pool).",
        "",
        "| monitor | samples | alarms | draws with alarms | ERT (samples / alarms) "
        "| ERT, 95% lower bound |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in result["false_alarms"].items():
        lines.append(
            f"| {name} | {row['samples']:.1e} | {row['alarms']} | {row['draws_with_alarms']} | "
            f"{fmt_ert(row['ert_estimate'], row['samples'])} | {row['ert_lower_95']:.2g} |"
        )
    lines += [
        "",
        "## Detection delay (samples from the start of the shift to the first alarm)",
        "",
        f"{result['plan']['delay_draws']} streams per cell (one calibration draw each): "
        f"{WARMUP} ID samples, then the shift; gradual = the share ramps up over {RAMP} samples; "
        f"horizon {HORIZON}. Change-point error: estimated minus true start (median).",
        "",
        "| OOD set | share | shape | detected | median delay | 90% delay | within 1000 "
        "| change-point error | alarms before the shift |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["delays"]:
        median = "> horizon" if c["median_delay"] is None else f"{c['median_delay']:.0f}"
        p90 = "> horizon" if c["p90_delay"] is None else f"{c['p90_delay']:.0f}"
        cp = (
            "-"
            if c["median_change_point_error"] is None
            else f"{c['median_change_point_error']:+.0f}"
        )
        lines.append(
            f"| {c['ood']} | {c['share']:.0%} | {c['shape']} | {c['detected']}/{c['streams']} | "
            f"{median} | {p90} | {c['within_1000']:.0%} | {cp} | {c['alarms_before_shift']} |"
        )
    lines += [
        "",
        "## What the calibration size buys (abrupt shifts)",
        "",
        "The same streams with calibration sets of other sizes n drawn from the ID pool: the "
        "monitor can only bet on a rise of the rate of small p-values above what n calibration "
        "points can vouch for, about sqrt(rate / n).",
        "",
        "| OOD set | share | n | detected | median delay | 90% delay | within 1000 |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in result["delays_by_calibration_size"]:
        median = "> horizon" if c["median_delay"] is None else f"{c['median_delay']:.0f}"
        p90 = "> horizon" if c["p90_delay"] is None else f"{c['p90_delay']:.0f}"
        lines.append(
            f"| {c['ood']} | {c['share']:.0%} | {c['calibration_size']} | "
            f"{c['detected']}/{c['streams']} | {median} | {p90} | {c['within_1000']:.0%} |"
        )
    lines += ["", "Plot: [drift.png](drift.png).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.drift", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a short run (a few minutes)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where drift.{md,json,png} go")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        log("training and exporting")
        detector, sets, about = build_model(work, plan)
        scores = score(detector, sets)
    n_cal, layers = about["calibration_size"], tuple(about["layers"])
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "drift-quick" if args.quick else "drift"
    plot(scores, n_cal, args.out / f"{stem}.png")
    result: dict[str, object] = {
        "command": "python -m bench.drift" + (" --quick" if args.quick else ""),
        "machine": f"{platform.machine()} CPU, 1 torch thread",
        "plan": plan.__dict__,
        "model": about,
        "false_alarms": false_alarms(scores, n_cal, layers, plan),
        "delays": delays(scores, n_cal, plan),
        "delays_by_calibration_size": [
            cell
            for n in sorted({1000, n_cal, 10_000})
            if n < len(scores["id"].a) // 2
            for cell in delays(scores, n, plan, shares=(0.1, 0.01), shapes=("abrupt",), seed=n)
        ],
    }
    result["seconds"] = time.perf_counter() - started
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    text = markdown(result).replace("drift.png", f"{stem}.png")
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    return 0


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


if __name__ == "__main__":
    sys.exit(main())
