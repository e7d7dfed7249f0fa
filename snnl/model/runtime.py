"""Inference backends: the device choice, and an ONNX Runtime session for a served model.

The ONNX model has input ``input`` (B, *input_shape) float32 and outputs ``logits`` (B, C) and one
(B, d_l) output per served layer, named after the layer. On ``cuda`` the session uses ONNX
Runtime's CUDAExecutionProvider when it can, else the CPUExecutionProvider.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import torch

from snnl.errors import InputError, RepositoryError

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when torch sees a GPU, else cpu; ``cuda`` without a GPU is an error."""
    if device not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but torch sees no CUDA GPU")
    return torch.device(device)


@dataclass(frozen=True)
class ForwardOutput:
    """One forward pass: ``logits`` (B, C) float32, ``features`` {layer: (B, d_l) float32}."""

    logits: np.ndarray
    features: dict[str, np.ndarray]


class OnnxRunner:
    """An ONNX Runtime session over a served model; ``run`` is thread-safe (ORT sessions are).

    ``threads`` sets ONNX Runtime's intra-op thread count (None: its default; a server with its
    own worker thread wants 1).
    """

    def __init__(
        self,
        model: bytes,
        layers: Sequence[str],
        device: torch.device,
        *,
        threads: int | None = None,
        source: str = "model.onnx",
    ) -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        if threads is not None:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self._session = ort.InferenceSession(model, options, providers=providers)
        except Exception as err:  # onnxruntime raises its own untyped errors
            raise RepositoryError(f"{source}: ONNX Runtime cannot load it ({err})") from err
        self.layers = tuple(layers)
        self._outputs = ["logits", *self.layers]
        names = [o.name for o in self._session.get_outputs()]
        inputs = [i.name for i in self._session.get_inputs()]
        if inputs != ["input"] or names != self._outputs:
            raise RepositoryError(
                f"{source}: expected input ['input'] and outputs {self._outputs}, "
                f"got {inputs} and {names}"
            )
        self.provider: str = self._session.get_providers()[0]
        # The static last dimension of each output (C for logits, d_l per layer), None if symbolic.
        self.widths: dict[str, int | None] = {
            o.name: o.shape[-1] if isinstance(o.shape[-1], int) else None
            for o in self._session.get_outputs()
        }

    def run(self, x: np.ndarray) -> ForwardOutput:
        """Logits and layer outputs for ``x`` (B, *input_shape) float32."""
        logits, *features = self._session.run(self._outputs, {"input": x})
        return ForwardOutput(logits=logits, features=dict(zip(self.layers, features, strict=True)))
