"""``ShardedScorer``: the soft-neighbor scorer's interface over reference rows held by Ray actors.

Every score is exact. The scorer's sums decompose over any partition of the reference rows
(snnl.scoring.scorer): per layer, query b and class k, shard s returns
logsumexp_{j in s, y_j = k} z_bj (B x C numbers), the neighbor-mass sums (B x C per term, or only
at the predicted class when it is known), its class counts and its local top-m (values, global row
ids, labels). The driver merges them (a logsumexp over shards, a top-m of the union:
``merge_shard_sums``) and finalizes exactly as the local scorer does (``finalize``), so the result
equals the local one up to float rounding of the sums.

A call sends the batch once (``ray.put``) to the S shards, which work in parallel, and waits at
most ``timeout_s``. If any shard fails (its actor died, is restarting, or is unreachable) or
times out, the call raises ``snnl.errors.UnavailableError`` naming the shard: a result is never
computed from fewer shards. Ray restarts a dead shard, which reloads its rows; ``unavailable()``
says whether every shard answers now (the service's readiness).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from snnl.errors import UnavailableError
from snnl.scoring.scorer import BatchScores, ShardSums, finalize, merge_shard_sums, top_width
from snnl.sharding.actor import ShardSpec
from snnl.sharding.cluster import error_reason

DEFAULT_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 2.0


class ShardedScorer:
    """``score`` as ``SoftNeighborScorer.score``, over the shard actors ``actors`` (one per
    ``specs`` entry, in row order, together covering rows [0, N))."""

    def __init__(
        self,
        actors: Sequence[Any],
        specs: Sequence[ShardSpec],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if len(actors) != len(specs) or not specs:
            raise ValueError(f"one actor per shard: got {len(actors)} for {len(specs)} shards")
        starts = [spec.start for spec in specs]
        stops = [spec.stop for spec in specs]
        if starts[0] != 0 or starts[1:] != stops[:-1]:
            raise ValueError(
                f"shards must tile the rows in order, got {list(zip(starts, stops, strict=True))}"
            )
        self.actors: tuple[Any, ...] = tuple(actors)
        self.specs: tuple[ShardSpec, ...] = tuple(specs)
        self.layers: tuple[str, ...] = specs[0].settings.layers
        self.timeout_s = timeout_s

    @property
    def reference_size(self) -> int:
        """N, the number of reference rows over all shards."""
        return self.specs[-1].stop

    def score(
        self,
        queries: Mapping[str, torch.Tensor],
        predicted: torch.Tensor | None = None,
        *,
        k: int = 50,
        neighbors: int = 0,
    ) -> BatchScores:
        """Scores of a batch, as ``SoftNeighborScorer.score``: finalize(merge(shard sums))."""
        top = top_width(k, neighbors, self.reference_size)
        parts = self.gather_sums(queries, predicted, top)
        return finalize(merge_shard_sums(parts), predicted, k=min(k, top), neighbors=neighbors)

    def gather_sums(
        self, queries: Mapping[str, torch.Tensor], predicted: torch.Tensor | None, top: int
    ) -> list[ShardSums]:
        """Every shard's ``ShardSums`` of the batch (shard order); UnavailableError if any
        shard fails or does not answer within ``timeout_s``."""
        import ray

        batch = (
            {name: np.ascontiguousarray(queries[name].cpu().numpy()) for name in self.layers},
            None if predicted is None else predicted.cpu().numpy().astype(np.int64),
        )
        shared = ray.put(batch)
        refs = [actor.shard_sums.remote(shared, top) for actor in self.actors]
        return self._gather(refs, self.timeout_s, "scoring")

    def unavailable(self, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
        """None when every shard answers a probe within ``timeout_s``; else why not (the first
        shard that does not, and the reason)."""
        try:
            self._gather([actor.describe.remote() for actor in self.actors], timeout_s, "probe")
        except UnavailableError as err:
            return str(err)
        return None

    def _gather(self, refs: Sequence[Any], timeout_s: float, what: str) -> list[Any]:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        deadline = time.monotonic() + timeout_s
        results = []
        for spec, ref in zip(self.specs, refs, strict=True):
            try:
                results.append(ray.get(ref, timeout=max(deadline - time.monotonic(), 0.0)))
            except GetTimeoutError as err:
                raise UnavailableError(
                    f"{spec.describe()}: no answer to the {what} call within {timeout_s:g} s"
                ) from err
            except RayActorError as err:
                raise UnavailableError(
                    f"{spec.describe()} is unavailable (restarting or lost): {error_reason(err)}"
                ) from err
        return results
