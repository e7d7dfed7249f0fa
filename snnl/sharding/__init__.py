"""Exact scoring over reference rows sharded across Ray actors (``Detector.load(..., shards=S)``).

    rows        contiguous shards of the label-sorted rows; reading only a shard's rows
    actor       ShardActor: one shard's SoftNeighborScorer, answering its mergeable sums
    cluster     connecting to Ray, starting the actors (GPU or CPU, restarts, shared or private)
    scorer      ShardedScorer: the scorer's interface; merge + finalize of the shards' sums
    loading     open_sharded: verify the model folder, start the shards (for Detector.load)

Nothing here imports Ray at import time: Ray is imported by the functions that use it.
"""
