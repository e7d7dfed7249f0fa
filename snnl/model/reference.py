"""The reference set: per-layer activations (N, d_l) of the training split and their labels (N,).

Rows are stored sorted by label (stable), so each class is a contiguous run and the scorer reads
the file as is; neighbor ids index this stored order. The file (reference.safetensors) holds
``labels`` (N,) int64 and ``features.<layer>`` (N, d_l) float32 or float16.
"""

from __future__ import annotations

import json
import math
import mmap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from safetensors.torch import save_file as save_safetensors_file
from torch import nn

from snnl.core.taps import LayerTaps
from snnl.errors import RepositoryError

StorageDtype = Literal["float32", "float16"]
_STORAGE: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16}
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "I64": torch.int64}


class ReferenceSet:
    """Features {layer: (N, d_l)} and labels (N,) int64, rows sorted by label, on one device."""

    def __init__(self, features: Mapping[str, torch.Tensor], labels: torch.Tensor) -> None:
        if labels.ndim != 1 or labels.numel() == 0:
            raise ValueError(f"labels must be (N,) with N >= 1, got {tuple(labels.shape)}")
        if not bool((labels[1:] >= labels[:-1]).all()):
            raise ValueError(
                "reference rows must be sorted by label (use ReferenceSet.from_arrays)"
            )
        for name, x in features.items():
            if x.ndim != 2 or x.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"features of layer {name!r} must be (N={labels.shape[0]}, d), "
                    f"got {tuple(x.shape)}"
                )
        self.features: dict[str, torch.Tensor] = dict(features)
        self.labels = labels.to(torch.int64)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.features)

    @property
    def size(self) -> int:
        """N, the number of reference rows."""
        return int(self.labels.shape[0])

    def dims(self) -> dict[str, int]:
        """{layer: d_l}."""
        return {name: int(x.shape[1]) for name, x in self.features.items()}

    @classmethod
    def from_arrays(
        cls,
        features: Mapping[str, np.ndarray | torch.Tensor],
        labels: np.ndarray | torch.Tensor,
        *,
        rows: np.ndarray | None = None,
    ) -> ReferenceSet:
        """A reference set from rows in any order (all on one device), sorted stably by label;
        ``rows``: only these row indices of ``features`` and ``labels`` (numpy arrays, e.g.
        memory maps: each kept row is copied once, in label order)."""
        if rows is None:
            y = torch.as_tensor(labels).to(torch.int64)
            order = torch.argsort(y, stable=True)
            return cls({name: torch.as_tensor(x)[order] for name, x in features.items()}, y[order])
        kept = np.asarray(labels)[rows].astype(np.int64)
        by_label = np.argsort(kept, kind="stable")
        taken = rows[by_label]
        return cls(
            {name: torch.from_numpy(np.asarray(x)[taken]) for name, x in features.items()},
            torch.from_numpy(kept[by_label]),
        )

    @classmethod
    @torch.inference_mode()
    def from_net(
        cls,
        net: nn.Module,
        x: np.ndarray,
        y: np.ndarray,
        layers: Sequence[str],
        *,
        device: torch.device,
        batch_size: int = 1024,
    ) -> ReferenceSet:
        """Activations of ``layers`` of ``net`` (eval mode) on ``x`` (N, *shape), in batches on
        ``device``; the net is moved there and back. Features end up float32 on the CPU."""
        original = next(net.parameters()).device
        net.to(device)
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        try:
            with LayerTaps(net, layers, detach=True) as taps:
                for start in range(0, len(x), batch_size):
                    net(torch.from_numpy(x[start : start + batch_size]).to(device))
                    for name in layers:
                        parts[name].append(taps.activations[name].float().cpu())
        finally:
            net.to(original)
        features = {name: torch.cat(chunks) for name, chunks in parts.items()}
        return cls.from_arrays(features, torch.from_numpy(np.asarray(y, dtype=np.int64)))

    def stored_as(self, dtype: StorageDtype = "float32") -> ReferenceSet:
        """This set on the CPU with features as reference.safetensors stores them (``dtype``):
        the values a reader of the file gets. No copy of a float32 CPU feature kept as float32;
        float16 rounds to nearest, as the file does."""
        if dtype not in _STORAGE:
            raise ValueError(f"reference dtype must be float32 or float16, got {dtype!r}")
        features = {
            name: x.detach().to("cpu", _STORAGE[dtype]).contiguous()
            for name, x in self.features.items()
        }
        return ReferenceSet(features, self.labels.cpu().contiguous())

    def _tensors(self) -> dict[str, torch.Tensor]:
        """The file's tensors: ``labels`` and ``features.<layer>`` (CPU, contiguous)."""
        tensors = {"labels": self.labels.cpu().contiguous()}
        for name, x in self.features.items():
            tensors[f"features.{name}"] = x.detach().cpu().contiguous()
        return tensors

    def to_bytes(self, dtype: StorageDtype = "float32") -> bytes:
        """reference.safetensors with features stored as ``dtype``."""
        return save_safetensors(self.stored_as(dtype)._tensors())

    def save(self, path: Path) -> None:
        """Write reference.safetensors to ``path`` with the features as they are (float32 or
        float16: ``stored_as``): the bytes of ``to_bytes``, written by safetensors straight from
        the tensors' memory, with no in-memory copy of the file."""
        save_safetensors_file(self._tensors(), path)

    @classmethod
    def from_bytes(
        cls,
        data: bytes | mmap.mmap,
        layers: Sequence[str],
        *,
        device: torch.device | str = "cpu",
        source: str | Path = "reference.safetensors",
    ) -> ReferenceSet:
        """Parse reference.safetensors for ``layers`` and put it on ``device`` once (features
        keep their stored dtype); RepositoryError names ``source`` and the bad tensor.

        From a memory-mapped file (``snnl.model.store.map_verified``) the CPU tensors are
        views of the map: no copy, and the pages stay file-backed (shared by every process
        serving the file, reclaimable by the kernel)."""
        try:
            tensors = load_safetensors(data) if isinstance(data, bytes) else _views(data)
        except Exception as err:
            raise RepositoryError(f"{source}: not a readable safetensors file ({err})") from err
        labels = tensors.get("labels")
        if labels is None or labels.ndim != 1 or labels.dtype != torch.int64 or labels.numel() == 0:
            raise RepositoryError(f"{source}: 'labels' must be a non-empty (N,) int64 tensor")
        features = {}
        for name in layers:
            key = f"features.{name}"
            x = tensors.get(key)
            if x is None:
                raise RepositoryError(f"{source}: missing tensor {key!r}")
            if x.ndim != 2 or x.shape[0] != labels.shape[0] or x.dtype not in _STORAGE.values():
                raise RepositoryError(
                    f"{source}: {key!r} must be (N={labels.shape[0]}, d) float32 or float16, "
                    f"got {tuple(x.shape)} {x.dtype}"
                )
            features[name] = x.to(device)
        try:
            return cls(features, labels.to(device))
        except ValueError as err:
            raise RepositoryError(f"{source}: {err}") from err


def _views(buffer: mmap.mmap) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file in ``buffer`` as views of it (no copy).

    The format: an 8-byte little-endian header length n, n bytes of JSON {name: {"dtype",
    "shape", "data_offsets": [begin, end]}} (offsets relative to the end of the header), the data.
    """
    size = int.from_bytes(buffer[:8], "little")
    if len(buffer) < 8 or 8 + size > len(buffer):
        raise ValueError("the header length exceeds the file")
    header = json.loads(buffer[8 : 8 + size])
    data = len(buffer) - 8 - size
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"tensor {name!r}: dtype {info['dtype']} is not F32, F16 or I64")
        shape = [int(n) for n in info["shape"]]
        begin, end = (int(n) for n in info["data_offsets"])
        count = math.prod(shape)
        if not 0 <= begin <= end <= data or end - begin != count * dtype.itemsize:
            raise ValueError(f"tensor {name!r}: data offsets {begin}..{end} do not fit its shape")
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
        else:
            view = torch.frombuffer(buffer, dtype=dtype, count=count, offset=8 + size + begin)
            tensors[name] = view.reshape(shape)
    return tensors
