"""Capture the outputs of named submodules of any ``nn.Module`` through forward hooks.

The module itself is not changed: hooks are registered on construction and removed by
``remove()`` or on leaving the ``with`` block.

    with LayerTaps(net, ["fc1", "fc2"]) as taps:
        logits = net(x)
        h1 = taps.activations["fc1"]      # (B, d_1), the output of net.fc1 flattened
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from snnl.errors import InputError


class LayerTaps:
    """Forward hooks on ``names`` (dotted submodule paths) of ``module``.

    After each forward, ``activations[name]`` is that submodule's output reshaped to (B, d)
    (still attached to the autograd graph, unless ``detach``). A submodule called more than once
    per forward keeps its last output.
    """

    def __init__(self, module: nn.Module, names: Sequence[str], *, detach: bool = False) -> None:
        if isinstance(names, str):
            names = [names]
        if not names:
            raise InputError("layer taps: give at least one layer name")
        if len(set(names)) != len(names):
            raise InputError(f"layer taps: duplicate layer names in {list(names)}")
        available = [n for n, _ in module.named_modules() if n]
        targets = {}
        for name in names:
            if name not in available:
                raise InputError(
                    f"layer {name!r} does not exist in {type(module).__name__}; "
                    f"available: {', '.join(available)}"
                )
            targets[name] = module.get_submodule(name)
        self.names: tuple[str, ...] = tuple(names)
        self.detach = detach
        self.activations: dict[str, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = [
            sub.register_forward_hook(self._hook(name)) for name, sub in targets.items()
        ]

    def _hook(self, name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise InputError(f"layer {name!r} returns {type(output).__name__}, not a tensor")
            flat = output.reshape(output.shape[0], -1)
            self.activations[name] = flat.detach() if self.detach else flat

        return hook

    def clear(self) -> None:
        """Forget the captured activations (frees the graph they hold)."""
        self.activations = {}

    def remove(self) -> None:
        """Remove every hook (the last activations stay readable); safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def active(self) -> bool:
        """Whether the hooks are still registered."""
        return bool(self._handles)

    def __enter__(self) -> LayerTaps:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()
