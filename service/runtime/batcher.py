"""Dynamic batching: requests for one model are merged into batches scored in one worker thread.

Three roles (as in LitServe and infinity, minus their process hops):

* handler: ``await batcher.submit(samples, flag=..., neighbors=...)``. A request larger than
  ``max_batch_size`` is cut into chunks of at most that size. The queue is bounded in samples:
  a request that does not fit now gets 503 with ``Retry-After``, one that can never fit
  (more than ``max_queue`` samples) 413. A request without its result after ``timeout_s`` gets 503
  and its still-queued chunks leave the queue.
* collector (an asyncio task on the event loop): waits for the first chunk, then until the queue
  holds ``max_batch_size`` samples or the oldest chunk has waited ``max_wait_s``, and takes whole
  chunks from the front up to ``max_batch_size`` samples. While a batch runs, the next one fills.
* worker (one thread per model, never the event loop): ``service.runtime.runner.BatchRunner``
  makes one scoring call per ``(flag, neighbors)`` group, checks the row count and splits the
  rows back; a group that fails is retried chunk by chunk, so a bad request fails alone and every
  future gets an outcome. Once the futures have their outcomes, ``after`` (the drift monitor)
  gets the scored chunks in the same thread, off the requests' latency path: those of every
  batch answered within ``AFTER_EVERY_S`` in one call (``flush`` hands them over at once).

Per-request flag rule (alpha, guarantee, delta) and ``neighbors`` are honored by that grouping:
every request is scored by exactly the call it would get alone, with no math in the service. A
request's batch FDR (Benjamini-Hochberg over its own p-values) is not the batcher's: the data
plane applies it to the request's rows once they are back. Requests with the usual
defaults form one group, so the common case is one call per batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Generic, TypeVar

import numpy as np

from service.http.errors import TooLarge, Unavailable
from service.http.metrics import ServiceMetrics, observe_many
from service.runtime.runner import DEFAULT_FLAG, BatchRunner, FlagOptions, Part, R, ScoreFn
from snnl.scoring.batch import CheckedBatch, num_rows, slice_rows

T = TypeVar("T")
logger = logging.getLogger("snnl.service")
AFTER_EVERY_S = 0.05
"""``after`` gets the scored chunks of all batches answered in the last 50 ms at once: under load
one call covers many batches (the drift monitor costs ~0.5 ms a call, mostly fixed)."""


@dataclass(eq=False)
class _Chunk(Generic[R]):
    part: Part
    future: asyncio.Future[R]
    enqueued: float = field(default_factory=time.perf_counter)
    queued: bool = True

    @property
    def size(self) -> int:
        return self.part.size


class DynamicBatcher(Generic[R]):
    """One model's bounded queue, collector task and single scoring thread."""

    def __init__(
        self,
        model: str,
        score: ScoreFn[R],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        timeout_s: float,
        metrics: ServiceMetrics,
        after: Callable[[list[R]], object] | None = None,
    ) -> None:
        if not 1 <= max_batch_size <= max_queue:
            raise ValueError(
                f"need 1 <= max_batch_size ({max_batch_size}) <= max_queue ({max_queue})"
            )
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self._metrics = metrics
        self._runner: BatchRunner[R] = BatchRunner(
            model, score, lambda result: metrics.observe_batch(model, result)
        )
        self._after = after
        self._scored: list[R] = []  # chunks answered since ``after`` last got them
        self._after_timer: asyncio.TimerHandle | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"snnl-{model}")
        self._queue: deque[_Chunk[R]] = deque()
        self._queued_samples = 0
        self._call_samples = 0  # samples of pending ``call``s (evaluate), also bounded by max_queue
        self._running: list[_Chunk[R]] = []
        self._arrived: asyncio.Event | None = None
        self._collector: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        """True when nothing is queued, scoring or pending (a retired batcher may stop)."""
        return not self._queue and not self._running and self._call_samples == 0

    def start(self) -> None:
        """Start the collector task on the running event loop."""
        self._arrived = asyncio.Event()
        self._collector = asyncio.get_running_loop().create_task(
            self._collect(), name=f"snnl-batcher-{self.model}"
        )

    async def stop(self) -> None:
        """Stop collecting, fail every waiting request with 503, and join the worker thread."""
        waiting = [*self._queue, *self._running]
        if self._after_timer is not None:
            self._after_timer.cancel()
            self._after_timer = None
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
            self._collector = None
        closing = Unavailable(f"model {self.model}: the service is shutting down")
        for chunk in waiting:
            if not chunk.future.done():
                chunk.future.set_exception(closing)
        self._queue.clear()
        self._running = []
        self._set_queued(0)
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    def _admit(self, n: int, what: str) -> None:
        """413 if ``n`` samples can never fit the queue, 503 if they do not fit now."""
        if self._collector is None or self._arrived is None:
            raise Unavailable(f"model {self.model}: not ready")
        if n > self.max_queue:
            raise TooLarge(
                f"inputs: {n} samples exceed the per-model {what} of {self.max_queue} samples "
                "(SNNL_MAX_QUEUE); send smaller requests"
            )
        if self._queued_samples + self._call_samples + n > self.max_queue:
            raise Unavailable(
                f"model {self.model}: overloaded, {self._queued_samples + self._call_samples} of "
                f"{self.max_queue} queued samples (SNNL_MAX_QUEUE); retry later"
            )

    def _timed_out(self) -> Unavailable:
        return Unavailable(
            f"model {self.model}: no result within {self.timeout_s:g} s "
            "(SNNL_REQUEST_TIMEOUT_S); retry later"
        )

    async def submit(
        self, samples: CheckedBatch, *, flag: FlagOptions = DEFAULT_FLAG, neighbors: int = 0
    ) -> R:
        """Score ``samples`` (B >= 1 rows) within a merged batch; rows come back in order."""
        n = num_rows(samples)
        if n < 1:
            raise ValueError("submit needs at least one sample")
        self._admit(n, "queue")
        assert self._arrived is not None  # set by start(), checked by _admit
        loop = asyncio.get_running_loop()
        chunks = [
            _Chunk(Part(slice_rows(samples, start, min(start + self.max_batch_size, n)),
                        min(self.max_batch_size, n - start), (flag, neighbors)),
                   loop.create_future())
            for start in range(0, n, self.max_batch_size)
        ]  # fmt: skip
        for chunk in chunks:
            chunk.future.add_done_callback(partial(self._forget_if_cancelled, chunk))
        self._queue.extend(chunks)
        self._set_queued(self._queued_samples + n)
        self._arrived.set()
        # One timer cancels the chunks at the deadline (cheaper per request than wait_for over
        # gather: no waiter future, no gathering future).
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            for chunk in chunks:
                chunk.future.cancel()

        timer = loop.call_later(self.timeout_s, expire)
        try:
            parts = [await chunk.future for chunk in chunks]
        except asyncio.CancelledError:
            if expired:
                raise self._timed_out() from None
            raise
        finally:
            timer.cancel()
            for chunk in chunks:
                chunk.future.cancel()
        return parts[0] if len(parts) == 1 else type(parts[0]).concatenate(parts)

    async def warm_up(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` in the scoring thread with no time limit, before any traffic."""
        await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def call(self, fn: Callable[[], T], size: int) -> T:
        """Run ``fn()`` (work on ``size`` samples) in the model's scoring thread, between batches,
        within ``timeout_s``; its samples count against ``max_queue`` until it is done."""
        self._admit(size, "evaluate limit")
        self._call_samples += size
        try:
            future = asyncio.get_running_loop().run_in_executor(self._executor, fn)
            return await asyncio.wait_for(future, self.timeout_s)
        except asyncio.TimeoutError:
            raise self._timed_out() from None
        finally:
            self._call_samples -= size

    def _set_queued(self, samples: int) -> None:
        self._queued_samples = samples
        self._metrics.queue_depth.labels(self.model).set(samples)

    def _forget_if_cancelled(self, chunk: _Chunk[R], _done: object = None) -> None:
        if chunk.future.cancelled() and chunk.queued:
            chunk.queued = False
            self._queue.remove(chunk)
            self._set_queued(self._queued_samples - chunk.size)

    async def _collect(self) -> None:
        assert self._arrived is not None
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = self._queue[0].enqueued + self.max_wait_s
            while self._queue and self._queued_samples < self.max_batch_size:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if batch:
                await self._execute(batch)

    def _take(self) -> list[_Chunk[R]]:
        """Whole chunks from the front of the queue, at most ``max_batch_size`` samples; chunks
        whose request has already given up are dropped, not scored."""
        batch: list[_Chunk[R]] = []
        size = taken = 0
        while self._queue and size + self._queue[0].size <= self.max_batch_size:
            chunk = self._queue.popleft()
            chunk.queued = False
            taken += chunk.size
            if not chunk.future.done():
                batch.append(chunk)
                size += chunk.size
        self._set_queued(self._queued_samples - taken)
        return batch

    async def _execute(self, batch: list[_Chunk[R]]) -> None:
        started = time.perf_counter()
        observe_many(
            self._metrics.queue_wait.labels(self.model),
            started - np.fromiter((chunk.enqueued for chunk in batch), float, len(batch)),
        )
        self._running = batch
        loop = asyncio.get_running_loop()
        parts = [chunk.part for chunk in batch]
        try:
            outcomes = await loop.run_in_executor(self._executor, self._runner.run, parts)
        except Exception as err:  # the worker itself broke: no request may hang on it
            outcomes = [err] * len(batch)
        finally:
            self._running = []
        for chunk, outcome in zip(batch, outcomes, strict=True):
            if chunk.future.done():
                continue
            if isinstance(outcome, BaseException):
                chunk.future.set_exception(outcome)
            else:
                chunk.future.set_result(outcome)
        if self._after is not None:
            self._scored += [out for out in outcomes if not isinstance(out, BaseException)]
            if self._scored and self._after_timer is None:
                self._after_timer = loop.call_later(AFTER_EVERY_S, self._hand_over)

    def _hand_over(self) -> asyncio.Future[None]:
        """Give the chunks answered so far to ``after`` in the scoring thread (after the batch
        running now, if any); the future of that call."""
        if self._after_timer is not None:
            self._after_timer.cancel()
            self._after_timer = None
        scored, self._scored = self._scored, []
        return asyncio.get_running_loop().run_in_executor(self._executor, self._run_after, scored)

    async def flush(self) -> None:
        """Wait until ``after`` has had every chunk answered so far (e.g. before reading the
        drift monitor's state)."""
        if self._after is not None and self._collector is not None:
            await self._hand_over()

    def _run_after(self, scored: list[R]) -> None:
        """``after(scored)``: chunks in the order they were answered; a failure is logged,
        never seen by a request."""
        if not scored or self._after is None:
            return
        try:
            self._after(scored)
        except Exception:
            logger.exception("after-batch hook failed", extra={"fields": {"model": self.model}})
