"""Exact scoring over reference rows sharded across Ray actors (``load_sharded_detector``).

    rows        contiguous shards of the label-sorted rows; reading only a shard's rows
    actor       ShardActor: one shard's SoftNeighborScorer, answering its mergeable sums
    cluster     connecting to Ray, starting the actors (GPU or CPU, restarts, shared or private)
    scorer      ShardedScorer: the snnl.scoring.scorer.Scorer protocol over the shards: merge +
                finalize of the shards' sums
    loading     load_sharded_detector: verify the model folder, start the shards, and build a
                snnl.Detector around the sharded scorer

Nothing here imports Ray at import time: Ray is imported by the functions that use it. This
package uses snnl.model (never the other way round).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["load_sharded_detector"]

if TYPE_CHECKING:
    from snnl.sharding.loading import load_sharded_detector


def __getattr__(name: str) -> Any:
    """``load_sharded_detector`` on first access: a shard actor's process, which imports this
    package, does not load the model code."""
    if name != "load_sharded_detector":
        raise AttributeError(f"module 'snnl.sharding' has no attribute {name!r}")
    from snnl.sharding.loading import load_sharded_detector

    return load_sharded_detector
