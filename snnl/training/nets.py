"""Reference architectures with named hidden layers: an MLP, a small 1-D CNN and a small 2-D CNN.

Every net built here has the same contract (the run directory and the ONNX export rely on it):

* a first submodule ``standardize`` (:class:`Standardize`, buffers ``mean``/``std``), so the
  net takes raw samples (B, *input_shape) and standardization is part of the graph;
* ``hidden_layers: tuple[str, ...]``: names of submodules whose *outputs* are the hidden
  representations (post-ReLU), the last one being the penultimate layer;
* ``forward(x) -> logits`` (B, num_classes), plain ops only (no data-dependent control flow).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from snnl.errors import InputError

ARCHS: tuple[str, ...] = ("mlp", "cnn1d", "cnn2d")


class Standardize(nn.Module):
    """x -> (x - mean) / std, elementwise with buffers of shape ``input_shape``.

    ``per_feature`` (the default) fits one mean and std per input feature; otherwise one mean
    and one std over all features (images: every pixel scaled alike, so a convolution sees the
    same scale everywhere), broadcast into the same buffers.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, input_shape: Sequence[int], *, per_feature: bool = True) -> None:
        super().__init__()
        self.per_feature = per_feature
        self.register_buffer("mean", torch.zeros(*input_shape))
        self.register_buffer("std", torch.ones(*input_shape))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, min_std: float = 1e-6) -> None:
        """Set mean/std to the statistics of ``x`` (N, *input_shape): per feature, or over all
        values when not ``per_feature``.

        A std below ``min_std`` (e.g. always-zero pixels) becomes 1.
        """
        if self.per_feature:
            mean = x.mean(dim=0)
            std = x.std(dim=0, unbiased=False)
        else:  # float64: a float32 sum over millions of pixels loses digits
            every = x.to(torch.float64)
            mean = every.mean().expand(x.shape[1:])
            std = every.std(unbiased=False).expand(x.shape[1:])
        std = torch.where(std < min_std, torch.ones_like(std), std)
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(std.to(self.std.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Dense(nn.Sequential):
    """Linear followed by ReLU; its output is one hidden representation."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(nn.Linear(in_features, out_features), nn.ReLU())


class ConvBlock(nn.Sequential):
    """Conv1d (stride 2, 'same'-style padding) followed by ReLU: (B, C, L) -> (B, C', ceil(L/2))."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(
            nn.Conv1d(in_channels, out_channels, kernel_size, stride=2, padding=kernel_size // 2),
            nn.ReLU(),
        )


class ConvBlock2d(nn.Sequential):
    """Conv2d ('same' padding) -> ReLU -> 2x2 max-pool: (B, C, H, W) -> (B, C', H//2, W//2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )


class Net(nn.Module):
    """The contract of the module doc: ``standardize`` first, named ``hidden_layers``."""

    input_shape: tuple[int, ...]
    standardize: Standardize
    hidden_layers: tuple[str, ...]


class MLP(Net):
    """Standardize -> fc1 -> ... -> fcK (Linear+ReLU) -> head (Linear to logits).

    Input (B, *input_shape) is flattened to (B, prod(input_shape)).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (256, 128, 64),
    ) -> None:
        super().__init__()
        if not hidden:
            raise InputError("mlp: hidden must list at least one layer width")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.standardize = Standardize(self.input_shape)
        widths = [math.prod(self.input_shape), *(int(h) for h in hidden)]
        names = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(widths), start=1):
            self.add_module(f"fc{i}", Dense(n_in, n_out))
            names.append(f"fc{i}")
        self.hidden_layers = tuple(names)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.standardize(x).flatten(1)
        for name in self.hidden_layers:
            h = getattr(self, name)(h)
        return self.head(h)


class CNN1d(Net):
    """Standardize -> conv1 -> conv2 (Conv1d stride 2 + ReLU) -> flatten -> fc1 -> head.

    ``input_shape`` is (L,) (one channel) or (C, L). Hidden layers: conv1, conv2, fc1 (the
    penultimate). Each conv halves the length (rounding up).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 32),
        kernel_size: int = 5,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        if len(self.input_shape) not in (1, 2):
            raise InputError(f"cnn1d: input shape must be (L,) or (C, L), got {self.input_shape}")
        if len(channels) != 2:
            raise InputError(f"cnn1d: channels must list 2 widths, got {list(channels)}")
        in_channels, length = (
            (1, *self.input_shape) if len(self.input_shape) == 1 else self.input_shape
        )
        self._channels_length = (in_channels, length)
        self.standardize = Standardize(self.input_shape)
        self.conv1 = ConvBlock(in_channels, int(channels[0]), kernel_size)
        self.conv2 = ConvBlock(int(channels[0]), int(channels[1]), kernel_size)
        out_length = math.ceil(math.ceil(length / 2) / 2)
        self.fc1 = Dense(int(channels[1]) * out_length, int(hidden))
        self.head = nn.Linear(int(hidden), num_classes)
        self.hidden_layers = ("conv1", "conv2", "fc1")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.standardize(x).reshape(-1, *self._channels_length)
        h = self.conv2(self.conv1(h))
        return self.head(self.fc1(h.flatten(1)))


class CNN2d(Net):
    """Standardize -> conv1 -> conv2 (Conv2d + ReLU + 2x2 max-pool) -> flatten -> fc1 ... fcK
    (Linear + ReLU) -> head.

    ``input_shape`` is (H, W) (one channel, e.g. 28x28 images) or (C, H, W). The input is scaled
    by one mean and std over all pixels, fitted on the training split (inside the graph, so
    the net takes raw pixel values, 0..255 for MNIST). Hidden layers: conv1 and conv2 (their
    max-pooled feature maps, flattened: C_1 * H/2 * W/2 and C_2 * H/4 * W/4 values) and the
    dense layers fc1..fcK (the last is the penultimate). Defaults on 28x28: conv1 16x14x14 =
    3136, conv2 32x7x7 = 1568, fc1 128.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (16, 32),
        kernel_size: int = 3,
        hidden: Sequence[int] = (128,),
    ) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        if len(self.input_shape) not in (2, 3):
            raise InputError(
                f"cnn2d: input shape must be (H, W) or (C, H, W), got {self.input_shape}"
            )
        if len(channels) != 2:
            raise InputError(f"cnn2d: channels must list 2 widths, got {list(channels)}")
        if not hidden:
            raise InputError("cnn2d: hidden must list at least one dense layer width")
        in_channels, height, width = (
            (1, *self.input_shape) if len(self.input_shape) == 2 else self.input_shape
        )
        if height < 4 or width < 4:
            raise InputError(f"cnn2d: images must be at least 4x4, got {height}x{width}")
        self._chw = (in_channels, height, width)
        self.standardize = Standardize(self.input_shape, per_feature=False)
        self.conv1 = ConvBlock2d(in_channels, int(channels[0]), kernel_size)
        self.conv2 = ConvBlock2d(int(channels[0]), int(channels[1]), kernel_size)
        widths = [int(channels[1]) * (height // 4) * (width // 4), *(int(h) for h in hidden)]
        names = ["conv1", "conv2"]
        for i, (n_in, n_out) in enumerate(itertools.pairwise(widths), start=1):
            self.add_module(f"fc{i}", Dense(n_in, n_out))
            names.append(f"fc{i}")
        self.hidden_layers = tuple(names)
        self._dense = tuple(names[2:])
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.standardize(x).reshape(-1, *self._chw)
        h = self.conv2(self.conv1(h)).flatten(1)
        for name in self._dense:
            h = getattr(self, name)(h)
        return self.head(h)


def build_net(arch: str, input_shape: Sequence[int], num_classes: int, **net_kwargs: Any) -> Net:
    """The net ``arch`` ("mlp" | "cnn1d" | "cnn2d") for inputs (B, *input_shape) and
    ``num_classes`` logits.

    ``net_kwargs`` (JSON-compatible, stored in a run's config.json) go to the constructor:
    mlp: ``hidden``; cnn1d: ``channels``, ``kernel_size``, ``hidden``; cnn2d: ``channels``,
    ``kernel_size``, ``hidden`` (a list of dense widths).
    """
    if num_classes < 2:
        raise InputError(f"num_classes must be at least 2, got {num_classes}")
    if arch == "mlp":
        cls: type[Net] = MLP
    elif arch == "cnn1d":
        cls = CNN1d
    elif arch == "cnn2d":
        cls = CNN2d
    else:
        raise InputError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    try:
        return cls(input_shape, num_classes, **net_kwargs)
    except TypeError as err:
        raise InputError(f"{arch}: bad net_kwargs {net_kwargs}: {err}") from err
