"""A small trained digits run directory, written with snnl.training.run's API in about a second."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from snnl.training.data import load_dataset, split_dataset
from snnl.training.nets import build_net
from snnl.training.run import RunConfig, save_run


def make_run(out: Path, *, steps: int = 150, hidden: tuple[int, ...] = (32, 16)) -> Path:
    """Train a tiny MLP on all ten digits classes with plain cross-entropy; write ``out``."""
    dataset = load_dataset("digits")
    split = split_dataset(dataset, seed=0)
    torch.manual_seed(0)
    net = build_net("mlp", dataset.input_shape, 10, hidden=list(hidden))
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    net.standardize.fit(x)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randint(0, len(y), (128,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(net(x[batch]), y[batch]).backward()
        optimizer.step()
    net.eval()
    config = RunConfig(
        dataset="digits",
        net_kwargs={"hidden": list(hidden)},
        factor=0.0,
        epochs=1,
        input_shape=list(dataset.input_shape),
        num_classes=10,
        class_names=list(dataset.class_names),
        hidden_layers=list(net.hidden_layers),
    )
    save_run(out, config, net, split)
    return out
