"""The scoring thread's side of dynamic batching: run one merged batch, split the rows back.

This module is the only one of the service that calls a ``Detector`` to score or evaluate
(``score_call``, ``evaluate_call``); everything else hands it checked batches.

Synchronous and free of asyncio: ``BatchRunner.run`` is what ``DynamicBatcher`` hands to its
single worker thread. It groups the batch's chunks by ``(flag, neighbors)`` in arrival order
(``FlagOptions``: alpha, guarantee, delta; a request's batch FDR is applied after its rows come
back, by the data plane: Benjamini-Hochberg never runs across merged requests),
concatenates each group and makes one scoring call per group, checks that the call returned one
row per input row, and splits the rows back per chunk. A group that fails is retried chunk by
chunk, so a bad request fails alone and every chunk gets an outcome (a result or an exception).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import numpy as np

from service.http.metrics import ScoredBatch
from snnl.evaluation.embeddings import EmbeddingEvaluation, evaluate_detector
from snnl.model.detector import Detector
from snnl.scoring.batch import CheckedBatch, concat_rows
from snnl.scoring.results import ScoreResult


class FlagOptions(NamedTuple):
    """The per-sample rule of the flag a request asks for (None: the model's default)."""

    alpha: float | None = None
    guarantee: str | None = None
    delta: float | None = None


DEFAULT_FLAG = FlagOptions()

BatchKey = tuple[FlagOptions, int]
"""(flag, neighbors): requests are merged into one scoring call only when these agree."""

R = TypeVar("R", bound="Result")


class Result(ScoredBatch, Protocol):
    """A scoring call's result (``snnl.ScoreResult`` fits): B rows that slice and concatenate."""

    def __len__(self) -> int: ...

    def __getitem__(self: R, rows: slice) -> R: ...

    @classmethod
    def concatenate(cls: type[R], parts: Sequence[R]) -> R: ...


ScoreFn = Callable[[CheckedBatch, FlagOptions, int], R]
"""``score(samples, flag, neighbors)``: the model's scoring call, run in the worker thread."""


def score_call(detector: Detector) -> ScoreFn[ScoreResult]:
    """``score(samples, flag, neighbors)`` of ``detector`` for the batcher. Every batch it sees
    was checked once, when its request was decoded (``service.dataplane.checked_samples``, with
    the Detector's own checks), or built valid by the warm-up, so the Detector does not check it
    again."""
    return lambda s, flag, k: detector.score(
        s, alpha=flag.alpha, guarantee=flag.guarantee, delta=flag.delta, neighbors=k
    )


def evaluate_call(
    detector: Detector, samples: CheckedBatch, labels: np.ndarray
) -> Callable[[], EmbeddingEvaluation]:
    """The embedding evaluation of checked ``samples`` with class indices ``labels`` (B,), to
    run in the model's scoring thread."""
    return partial(evaluate_detector, detector, labels, samples)


class BatchError(RuntimeError):
    """The scoring call broke its contract (wrong number of result rows)."""


@dataclass(frozen=True, eq=False)
class Part:
    """One queued chunk as the worker sees it: its rows, their count, its scoring arguments."""

    samples: CheckedBatch
    size: int
    key: BatchKey


Observe = Callable[[Any], None]
"""Called with each successful scoring call's result (the batch metrics)."""


class BatchRunner(Generic[R]):
    """Runs merged batches of one model through ``score`` (one call per ``(flag, k)`` group)."""

    def __init__(self, model: str, score: ScoreFn[R], observe: Observe) -> None:
        self.model = model
        self._score = score
        self._observe = observe

    def run(self, batch: Sequence[Part]) -> list[R | BaseException]:
        """One outcome per part, in batch order; never raises for a failing scoring call."""
        groups: dict[BatchKey, list[int]] = {}
        for index, part in enumerate(batch):
            groups.setdefault(part.key, []).append(index)
        outcomes: list[R | BaseException] = [BatchError("not run")] * len(batch)
        for (flag, neighbors), members in groups.items():
            merged = self._score_group([batch[i] for i in members], flag, neighbors)
            parts: Sequence[R | BaseException]
            if isinstance(merged, BaseException) and len(members) > 1:
                alone = [self._score_group([batch[i]], flag, neighbors) for i in members]
                parts = [p if isinstance(p, BaseException) else p[0] for p in alone]
            elif isinstance(merged, BaseException):
                parts = [merged]
            else:
                parts = merged
            for i, outcome in zip(members, parts, strict=True):
                outcomes[i] = outcome
        return outcomes

    def _score_group(
        self, parts: Sequence[Part], flag: FlagOptions, neighbors: int
    ) -> list[R] | BaseException:
        """One scoring call over the parts, split back per part; the exception if it fails."""
        total = sum(part.size for part in parts)
        try:
            result = self._score(concat_rows([part.samples for part in parts]), flag, neighbors)
            if len(result) != total:
                raise BatchError(
                    f"model {self.model}: scoring returned {len(result)} rows for {total} inputs"
                )
        except Exception as err:
            return err
        self._observe(result)
        split: list[R] = []
        offset = 0
        for part in parts:
            split.append(result[offset : offset + part.size])
            offset += part.size
        return split
