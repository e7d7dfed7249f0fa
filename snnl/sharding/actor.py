"""``ShardActor``: one shard of a model's reference rows, held in a Ray actor's memory.

The actor reads rows [start, stop) of every served layer from the repository's
reference.safetensors (snnl.sharding.rows.read_rows: only those rows) and builds the ordinary
``SoftNeighborScorer`` over them with ``row_offset=start``, so its row ids are global. Its one
job is ``shard_sums``: the scorer's mergeable sums of a batch over its rows
(snnl.scoring.scorer.ShardSums). The math lives in the scorer; the driver merges the shards'
sums and finalizes them (snnl.sharding.scorer).

The class is plain Python: snnl.sharding.cluster wraps it with ``ray.remote`` when it creates the
actors, so importing this module does not import Ray. When Ray restarts a dead actor it runs
``__init__`` again with the same ``ShardSpec``: the shard reloads its rows from the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from snnl.core.distances import Distance
from snnl.scoring.scorer import ShardSums, SoftNeighborScorer, default_chunk_size
from snnl.sharding.rows import FileStamp, read_rows


@dataclass(frozen=True)
class ScorerSettings:
    """What every shard's scorer is built with (the same for all shards of a model)."""

    layers: tuple[str, ...]
    num_classes: int
    temperatures: tuple[float, ...]  # per layer, in ``layers`` order
    distances: tuple[Distance, ...]  # per layer
    mass_terms: tuple[tuple[str, Distance, float], ...]
    chunk_size: int | None  # None: the scorer's default for the shard's device
    compute_dtype: torch.dtype | None = None  # as SoftNeighborScorer's


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` of ``count``: rows [start, stop) of the file at ``path`` (which must be
    the one stamped ``stamp``), scored on ``device`` ("cpu" or "cuda")."""

    path: str
    stamp: FileStamp
    index: int
    count: int
    start: int
    stop: int
    device: str
    settings: ScorerSettings

    def digest(self) -> str:
        """A hex digest of every field: equal specs, and only they, name the same actor."""
        return hashlib.sha256(repr(self).encode()).hexdigest()

    def describe(self) -> str:
        """ "shard 2 of 3 (rows 400..600)": how errors name the shard."""
        return f"shard {self.index + 1} of {self.count} (rows {self.start}..{self.stop})"


class ShardActor:
    """One shard's scorer (see the module docstring); created by snnl.sharding.cluster."""

    def __init__(self, spec: ShardSpec) -> None:
        self.spec = spec
        features, labels = read_rows(
            Path(spec.path), spec.settings.layers, spec.start, spec.stop, spec.stamp
        )
        device = torch.device(spec.device)
        s = spec.settings
        self._scorer = SoftNeighborScorer(
            {name: x.to(device) for name, x in features.items()},
            labels.to(device),
            num_classes=s.num_classes,
            temperatures=dict(zip(s.layers, s.temperatures, strict=True)),
            distances=dict(zip(s.layers, s.distances, strict=True)),
            mass_terms=s.mass_terms,
            chunk_size=s.chunk_size or default_chunk_size(device),
            row_offset=spec.start,
            compute_dtype=s.compute_dtype,
        )

    def describe(self) -> dict[str, object]:
        """Where the shard lives: its rows, process id, host and device (a cheap health probe)."""
        return {
            "index": self.spec.index,
            "rows": (self.spec.start, self.spec.stop),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "device": self.spec.device,
        }

    def shard_sums(
        self, batch: tuple[Mapping[str, np.ndarray], np.ndarray | None], top: int
    ) -> ShardSums:
        """The shard's ``ShardSums`` of ``batch`` = ({layer: (B, d_l)}, predicted (B,) or
        None), keeping the ``top`` nearest rows; all tensors on the CPU."""
        queries, predicted = batch
        # copies (B x d, cheap): Ray hands over read-only views of its object store
        part = self._scorer.shard_sums(
            {name: torch.tensor(q) for name, q in queries.items()},
            None if predicted is None else torch.tensor(predicted),
            top=top,
        )
        return dataclasses.replace(
            part, **{f.name: getattr(part, f.name).cpu() for f in dataclasses.fields(part)}
        )
