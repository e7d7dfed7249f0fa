"""The SNNL training loop: Adam on CE + factor * sum of per-layer SNNL, seeded and deterministic.

``train(settings, out)`` loads and splits the data, fits the standardization on the training
split, trains, and (with ``out``) writes the run directory of :mod:`snnl.training.run`, with
``history.jsonl`` (one :class:`EpochRecord` per line) and ``entanglement.png``. The same settings
give the same history and weights (same machine, same thread count).

After each epoch: train and test accuracy (eval mode), and per layer the entanglement
(SNNL at T*, :func:`snnl.core.temperature.entanglement`) of a fixed stratified subsample of the
training activations.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from snnl.core.taps import LayerTaps
from snnl.core.temperature import TEMPERATURE_BOUNDS, entanglement, stratified_subsample
from snnl.errors import InputError
from snnl.training.augment import random_shift
from snnl.training.data import load_dataset, split_dataset
from snnl.training.loss import SNNLoss
from snnl.training.nets import build_net
from snnl.training.run import (
    HISTORY_FILE,
    PLOT_FILE,
    Run,
    RunConfig,
    TrainSettings,
    load_run,
    save_run,
)

__all__ = [
    "EpochRecord",
    "Run",
    "RunConfig",
    "TrainResult",
    "TrainSettings",
    "load_run",
    "prepare_run",
    "train",
]

ENTANGLEMENT_POINTS = 300  # training points (stratified, fixed per run) for the entanglement log
# Adam step for learned log(1/T): with the nets' step (1e-3) T barely moves in 30 epochs
# (measured on digits: 1.0 -> 0.7 while T* was ~0.03-0.1).
TEMPERATURE_LR = 0.05
EVAL_BATCH = 1024


@dataclass(frozen=True)
class EpochRecord:
    """One line of history.jsonl. ``loss``/``cross_entropy``/``snnl``: means over the epoch's
    training batches; ``temperature``: the loss's T per regularized layer at the epoch's end;
    ``entanglement`` and ``optimal_temperature``: SNNL(T*) and T* of the training subsample, for
    every hidden layer."""

    epoch: int
    loss: float
    cross_entropy: float
    train_accuracy: float
    test_accuracy: float
    entanglement: dict[str, float]
    optimal_temperature: dict[str, float]
    temperature: dict[str, float]
    snnl: dict[str, float]


@dataclass
class TrainResult:
    """The trained run (net in eval mode) and its history."""

    run: Run
    history: list[EpochRecord]


@torch.no_grad()
def _evaluate(
    net: nn.Module, layers: tuple[str, ...], x: torch.Tensor, y: torch.Tensor
) -> tuple[float, dict[str, torch.Tensor]]:
    """Accuracy of ``net`` on (x, y) and the activations (N, d_l) of ``layers``, in batches."""
    correct = 0
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    with LayerTaps(net, layers, detach=True) as taps:
        for start in range(0, len(x), EVAL_BATCH):
            logits = net(x[start : start + EVAL_BATCH])
            correct += int((logits.argmax(1) == y[start : start + EVAL_BATCH]).sum())
            for name in layers:
                parts[name].append(taps.activations[name])
    return correct / max(len(x), 1), {name: torch.cat(p) for name, p in parts.items()}


def plot_entanglement(history: list[EpochRecord], path: str | Path) -> None:
    """Entanglement SNNL(T*) and T* per hidden layer over epochs, as a two-panel PNG (Frosst et
    al.'s figure), both measured on the fixed training subsample.

    Entanglement spans decades and reaches exactly 0 on separated classes, so its axis is
    symmetric-log (linear below 1e-4, logarithmic above); T* gets a log axis, with a search
    bound drawn when T* comes near it (T* at a bound means the SNNL keeps falling beyond it).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    epochs = [r.epoch for r in history]
    layers = list(history[0].entanglement) if history else []
    for name in layers:
        left.plot(epochs, [r.entanglement[name] for r in history], marker="o", ms=3, label=name)
        right.plot(
            epochs, [r.optimal_temperature[name] for r in history], marker="o", ms=3, label=name
        )
    left.set_yscale("symlog", linthresh=1e-4)
    left.set_ylim(bottom=0)
    left.set(xlabel="epoch", ylabel="entanglement SNNL(T*), symlog")
    left.set_title("Entanglement per hidden layer", fontsize=10)
    right.set_yscale("log")
    temperatures = [t for r in history for t in r.optimal_temperature.values()]
    low, high = TEMPERATURE_BOUNDS
    if temperatures and min(temperatures) < 10 * low:
        right.axhline(low, color="grey", linestyle=":", linewidth=1, label=f"search bound {low:g}")
    if temperatures and max(temperatures) > high / 10:
        right.axhline(
            high, color="grey", linestyle=":", linewidth=1, label=f"search bound {high:g}"
        )
    right.set(xlabel="epoch", ylabel="T* = argmin SNNL(T), log scale")
    right.set_title("Optimal temperature T* per hidden layer", fontsize=10)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if layers:
            ax.legend(fontsize=8)
    fig.suptitle(
        f"Measured on a fixed stratified subsample of {ENTANGLEMENT_POINTS} training points",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(Path(path))


def prepare_run(settings: TrainSettings) -> Run:
    """The untrained run: data loaded and split (seeded, stratified), the net built from the
    seed with its standardization fitted on the training split, and the full config."""
    dataset = load_dataset(settings.dataset, settings.classes)
    split = split_dataset(
        dataset,
        calibration_fraction=settings.calibration_fraction,
        test_fraction=settings.test_fraction,
        seed=settings.seed,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        net = build_net(
            settings.arch, dataset.input_shape, len(dataset.class_names), **settings.net_kwargs
        )
    if settings.random_shift and len(dataset.input_shape) not in (2, 3):
        raise InputError(
            f"--random-shift: translates 2-D images (H, W) or (C, H, W); {settings.dataset} "
            f"samples have shape {tuple(dataset.input_shape)}"
        )
    net.standardize.fit(torch.from_numpy(split.x_train))
    available = {name for name, _ in net.named_modules() if name}
    for name in settings.snnl_layers or ():
        if name not in available:
            raise InputError(
                f"--snnl-layers: {name!r} is not a layer of {settings.arch}; "
                f"hidden layers: {', '.join(net.hidden_layers)}"
            )
    config = RunConfig(
        **settings.model_dump(),
        input_shape=list(dataset.input_shape),
        num_classes=len(dataset.class_names),
        class_names=list(dataset.class_names),
        hidden_layers=list(net.hidden_layers),
    )
    return Run(config=config, net=net, split=split)


def train(
    start: TrainSettings | Run,
    out: str | Path | None = None,
    *,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train from settings (or a run from :func:`prepare_run`); write the run directory to ``out``
    if given. The returned run's net is in eval mode."""
    run = start if isinstance(start, Run) else prepare_run(start)
    settings, net, split = run.config, run.net, run.split
    layers: tuple[str, ...] = tuple(settings.hidden_layers)
    snnl_layers: tuple[str, ...] = tuple(settings.snnl_layers or layers)
    x_train, y_train = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    x_test, y_test = torch.from_numpy(split.x_test), torch.from_numpy(split.y_test)
    probe = torch.from_numpy(
        stratified_subsample(split.y_train, ENTANGLEMENT_POINTS, settings.seed)
    )

    history: list[EpochRecord] = []
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / HISTORY_FILE).write_text("")
    generator = torch.Generator().manual_seed(settings.seed)
    with SNNLoss(
        net,
        snnl_layers,
        factor=settings.factor,
        temperature=settings.temperature,
        distance=settings.distance,
        initial_temperature=settings.initial_temperature,
    ) as criterion:
        groups: list[dict[str, Any]] = [
            {"params": list(net.parameters())},
            {"params": criterion.temperature_parameters(), "lr": TEMPERATURE_LR},
        ]
        optimizer = torch.optim.Adam(groups, lr=settings.lr)
        steps = settings.epochs * -(-len(x_train) // settings.batch_size)
        schedule = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
            if settings.lr_schedule == "cosine"
            else None
        )
        for epoch in range(settings.epochs):
            criterion.set_epoch(epoch)
            net.train()
            sums = _train_epoch(
                criterion,
                optimizer,
                schedule,
                x_train,
                y_train,
                settings.batch_size,
                settings.random_shift,
                generator,
            )
            net.eval()
            train_acc, feats = _evaluate(net, layers, x_train, y_train)
            test_acc, _ = _evaluate(net, layers, x_test, y_test)
            ent = {
                name: entanglement(feats[name][probe], y_train[probe], settings.distance)
                for name in layers
            }
            record = EpochRecord(
                epoch=epoch + 1,
                loss=sums["loss"],
                cross_entropy=sums["cross_entropy"],
                train_accuracy=train_acc,
                test_accuracy=test_acc,
                entanglement={name: e[1] for name, e in ent.items()},
                optimal_temperature={name: e[0] for name, e in ent.items()},
                temperature=criterion.temperatures(),
                snnl={name: sums[f"snnl.{name}"] for name in snnl_layers},
            )
            history.append(record)
            if out_dir is not None:
                with (out_dir / HISTORY_FILE).open("a") as fh:
                    fh.write(json.dumps(asdict(record)) + "\n")
            if on_epoch is not None:
                on_epoch(record)
    net.eval()
    if out_dir is not None:
        save_run(out_dir, settings, net, split)
        plot_entanglement(history, out_dir / PLOT_FILE)
    return TrainResult(run=run, history=history)


def _train_epoch(
    criterion: SNNLoss,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler | None,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    shift: int,
    generator: torch.Generator,
) -> dict[str, float]:
    """One pass over shuffled batches (each randomly translated by up to ``shift`` pixels), one
    step of ``schedule`` per batch; sample-weighted means of the loss parts."""
    order = torch.randperm(len(x), generator=generator)
    sums: dict[str, float] = {}
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        result = criterion(random_shift(x[idx], shift, generator), y[idx])
        optimizer.zero_grad(set_to_none=True)
        result.total.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        parts = {"loss": result.total, "cross_entropy": result.primary}
        parts.update({f"snnl.{k}": v for k, v in result.snnl.items()})
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach()) * len(idx)
    return {key: value / len(x) for key, value in sums.items()}
