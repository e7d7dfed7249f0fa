"""DynamicBatcher: merging, splitting, grouping by (flag, neighbors), failures, limits, metrics.

The scoring call is a plain function returning a real ``ScoreResult`` whose every row is computed
from its own input row only, so a row that lands at the wrong request is visible.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from service.http.errors import TooLarge, Unavailable
from service.http.metrics import ServiceMetrics
from service.runtime.batcher import DynamicBatcher
from service.runtime.runner import BatchError, FlagOptions
from snnl.scoring.batch import CheckedSamples
from snnl.scoring.results import ScoreResult

LAYERS = ("h",)


def row_result(batch: CheckedSamples, alpha: float | None, neighbors: int) -> ScoreResult:
    """Scores of x (B, 2): prediction x0, p-value x1, soft-neighbor score 1 - x1."""
    x = batch.x
    b = x.shape[0]
    alpha = 0.05 if alpha is None else alpha
    p = x[:, 1].astype(np.float64)
    return ScoreResult(
        layers=LAYERS,
        class_names=tuple(str(i) for i in range(1000)),
        prediction=x[:, 0].astype(np.int64),
        confidence=np.ones(b),
        nonconformity=x[:, 0].astype(np.float64),
        p_value=p,
        outlier=p < alpha,
        soft_neighbor_score=(1.0 - p)[:, None],
        same_class_neighbors=np.zeros((b, 1), dtype=np.int64),
        layer_p_value=p[:, None],
        neighbor_ids=None
        if neighbors == 0
        else np.repeat(x[:, :1].astype(np.int64), neighbors, axis=1)[:, None, :],
        alpha=alpha,
        timings={"forward": 0.001, "neighbors": 0.002, "calibrate": 0.0005},
    )


class Recorder:
    """The scoring call: records (rows, alpha, neighbors) of each call, optionally blocks/fails."""

    def __init__(self, fail: Callable[[np.ndarray], bool] | None = None) -> None:
        self.calls: list[tuple[int, float | None, int]] = []
        self.fail = fail
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def __call__(self, batch: Any, flag: FlagOptions, neighbors: int) -> ScoreResult:
        self.entered.set()
        self.release.wait(10)
        alpha = flag.alpha
        self.calls.append((len(batch), alpha, neighbors))
        if self.fail is not None and self.fail(batch.x):
            raise ValueError(f"bad batch of {len(batch)}")
        return row_result(batch, alpha, neighbors)


def samples(first: int, n: int) -> CheckedSamples:
    """n rows with ids first..first+n-1 and p-values in (0, 1), as the service's parsing checks
    them."""
    ids = np.arange(first, first + n, dtype=np.float32)
    return CheckedSamples(np.stack([ids, (ids % 97 + 1) / 100], axis=1).astype(np.float32))


def run_with(
    score: Callable[[Any, float | None, int], ScoreResult],
    body: Callable[[DynamicBatcher[ScoreResult]], Awaitable[Any]],
    metrics: ServiceMetrics | None = None,
    **options: Any,
) -> tuple[Any, ServiceMetrics]:
    """Run ``body(batcher)`` on a started batcher over ``score`` (its metrics on ``metrics``),
    then stop it."""
    metrics = ServiceMetrics() if metrics is None else metrics
    settings: dict[str, Any] = {
        "max_batch_size": 8, "max_wait_s": 0.05, "max_queue": 64, "timeout_s": 10.0,
    }  # fmt: skip
    settings.update(options)

    async def main() -> Any:
        batcher = DynamicBatcher("m", score, metrics=metrics, **settings)
        batcher.start()
        try:
            return await body(batcher)
        finally:
            if isinstance(score, Recorder):
                score.release.set()
            await batcher.stop()

    return asyncio.run(main()), metrics


def assert_rows(result: ScoreResult, batch: CheckedSamples) -> None:
    x = batch.x
    np.testing.assert_array_equal(result.prediction, x[:, 0].astype(np.int64))
    np.testing.assert_array_equal(result.p_value, x[:, 1].astype(np.float64))


def metric(metrics: ServiceMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {"model": "m", **labels})
    return 0.0 if value is None else value


def test_concurrent_requests_merge_into_one_call_and_get_their_own_rows() -> None:
    recorder = Recorder()
    inputs = [samples(10 * i, 1 + i % 3) for i in range(4)]  # 1 + 2 + 3 + 1 = 7 rows

    async def body(batcher: DynamicBatcher[ScoreResult]) -> list[ScoreResult]:
        return await asyncio.gather(*(batcher.submit(x) for x in inputs))

    results, metrics = run_with(recorder, body, max_batch_size=8, max_wait_s=0.2)
    assert recorder.calls == [(7, None, 0)]
    for result, x in zip(results, inputs, strict=True):
        assert_rows(result, x)
    assert metric(metrics, "snnl_batch_size_count") == 1
    assert metric(metrics, "snnl_batch_size_sum") == 7
    assert metric(metrics, "snnl_queue_wait_seconds_count") == 4
    assert metric(metrics, "snnl_samples_scored_total") == 7


def test_full_batches_run_without_waiting_for_max_wait() -> None:
    recorder = Recorder()
    inputs = [samples(i, 1) for i in range(8)]

    async def body(batcher: DynamicBatcher[ScoreResult]) -> list[ScoreResult]:
        return await asyncio.gather(*(batcher.submit(x) for x in inputs))

    # Waiting out the 60 s max wait would hit the 5 s timeout: full batches must go at once.
    results, _ = run_with(recorder, body, max_batch_size=4, max_wait_s=60.0, timeout_s=5.0)
    assert recorder.calls == [(4, None, 0), (4, None, 0)]
    for result, x in zip(results, inputs, strict=True):
        assert_rows(result, x)


def test_a_request_larger_than_the_batch_is_split_and_reassembled_in_order() -> None:
    recorder = Recorder()
    x = samples(0, 21)

    async def body(batcher: DynamicBatcher[ScoreResult]) -> ScoreResult:
        return await batcher.submit(x)

    result, metrics = run_with(recorder, body, max_batch_size=8, max_wait_s=0.0)
    assert [c[0] for c in recorder.calls] == [8, 8, 5]
    assert len(result) == 21
    assert_rows(result, x)
    assert metric(metrics, "snnl_batch_size_count") == 3


def test_alpha_and_neighbors_are_honored_inside_a_merged_batch() -> None:
    recorder = Recorder()
    requests = [
        (samples(0, 2), None, 0),
        (samples(2, 1), 0.5, 0),
        (samples(3, 2), None, 3),
        (samples(5, 1), None, 0),
        (samples(6, 1), 0.5, 0),
    ]

    async def body(batcher: DynamicBatcher[ScoreResult]) -> list[ScoreResult]:
        return await asyncio.gather(
            *(batcher.submit(x, flag=FlagOptions(alpha=a), neighbors=k) for x, a, k in requests)
        )

    results, _ = run_with(recorder, body, max_batch_size=16, max_wait_s=0.2)
    # One window, three groups in arrival order: defaults (2 + 1 rows), alpha 0.5, neighbors 3.
    assert recorder.calls == [(3, None, 0), (2, 0.5, 0), (2, None, 3)]
    for result, (x, a, k) in zip(results, requests, strict=True):
        assert_rows(result, x)
        assert result.alpha == (0.05 if a is None else a)
        np.testing.assert_array_equal(result.outlier, x.x[:, 1] < result.alpha)
        if k:
            assert result.neighbor_ids is not None
            assert result.neighbor_ids.shape == (len(x), 1, k)
            np.testing.assert_array_equal(result.neighbor_ids[:, 0, 0], x.x[:, 0].astype(np.int64))
        else:
            assert result.neighbor_ids is None


def test_a_failing_call_fails_every_request_of_the_batch() -> None:
    recorder = Recorder(fail=lambda x: True)
    inputs = [samples(i, 1) for i in range(5)]

    async def body(batcher: DynamicBatcher[ScoreResult]) -> list[Any]:
        return await asyncio.gather(*(batcher.submit(x) for x in inputs), return_exceptions=True)

    outcomes, metrics = run_with(recorder, body, max_batch_size=8, max_wait_s=0.2)
    assert all(isinstance(o, ValueError) for o in outcomes), outcomes
    assert metric(metrics, "snnl_samples_scored_total") == 0


def test_a_bad_request_fails_alone_and_the_others_of_its_batch_succeed() -> None:
    recorder = Recorder(fail=lambda x: bool((x[:, 0] == 2).any()))
    inputs = [samples(i, 1) for i in range(5)]  # the request holding id 2 is the bad one

    async def body(batcher: DynamicBatcher[ScoreResult]) -> list[Any]:
        return await asyncio.gather(*(batcher.submit(x) for x in inputs), return_exceptions=True)

    outcomes, _ = run_with(recorder, body, max_batch_size=8, max_wait_s=0.2)
    assert isinstance(outcomes[2], ValueError)
    for i in (0, 1, 3, 4):
        assert_rows(outcomes[i], inputs[i])
    assert recorder.calls[0] == (5, None, 0)  # merged first, then each request alone
    assert sorted(c[0] for c in recorder.calls[1:]) == [1] * 5


def test_a_wrong_number_of_result_rows_fails_every_request() -> None:
    def short(x: Any, flag: FlagOptions, neighbors: int) -> ScoreResult:
        return row_result(x.rows(0, len(x) - 1), flag.alpha, neighbors)

    inputs = [samples(2 * i, 2) for i in range(3)]

    async def body(batcher: DynamicBatcher[ScoreResult]) -> list[Any]:
        return await asyncio.gather(*(batcher.submit(x) for x in inputs), return_exceptions=True)

    outcomes, _ = run_with(short, body, max_batch_size=8, max_wait_s=0.2)
    assert all(isinstance(o, BatchError) for o in outcomes), outcomes
    assert "scoring returned 1 rows for 2 inputs" in str(outcomes[0])


def test_a_full_queue_answers_503_with_retry_after_and_counts_its_depth() -> None:
    recorder = Recorder()
    recorder.release.clear()
    metrics = ServiceMetrics()

    async def body(batcher: DynamicBatcher[ScoreResult]) -> dict[str, Any]:
        running = asyncio.ensure_future(batcher.submit(samples(0, 4)))  # occupies the worker
        await asyncio.to_thread(recorder.entered.wait, 5)
        waiting = asyncio.ensure_future(batcher.submit(samples(4, 6)))  # queued: 6 of 8
        await asyncio.sleep(0.05)
        depth = metric(metrics, "snnl_queue_depth")
        with pytest.raises(Unavailable) as full:
            await batcher.submit(samples(10, 3))
        fits = asyncio.ensure_future(batcher.submit(samples(13, 2)))  # exactly fills the queue
        await asyncio.sleep(0)
        recorder.release.set()
        done = await asyncio.gather(running, waiting, fits)
        return {"depth": depth, "error": full.value, "done": done}

    out, _ = run_with(
        recorder, body, metrics, max_batch_size=4, max_wait_s=0.0, max_queue=8, timeout_s=5.0
    )
    assert out["depth"] == 6
    assert out["error"].status == 503
    assert out["error"].headers["Retry-After"] == "1"
    assert "queued samples" in out["error"].detail
    assert [len(r) for r in out["done"]] == [4, 6, 2]
    assert metric(metrics, "snnl_queue_depth") == 0


def test_a_request_larger_than_the_queue_is_413() -> None:
    async def body(batcher: DynamicBatcher[ScoreResult]) -> None:
        with pytest.raises(TooLarge) as err:
            await batcher.submit(samples(0, 65))
        assert err.value.status == 413
        assert err.value.detail.startswith("inputs: 65 samples exceed")

    run_with(Recorder(), body, max_queue=64)


def test_a_timed_out_request_is_503_and_leaves_the_queue() -> None:
    recorder = Recorder()
    recorder.release.clear()
    metrics = ServiceMetrics()

    async def body(batcher: DynamicBatcher[ScoreResult]) -> float:
        blocker = asyncio.ensure_future(batcher.submit(samples(0, 1)))
        await asyncio.to_thread(recorder.entered.wait, 5)
        with pytest.raises(Unavailable) as err:
            await batcher.submit(samples(1, 5))  # waits behind the blocked worker
        assert "no result within 0.2 s" in err.value.detail
        await asyncio.sleep(0)
        left = metric(metrics, "snnl_queue_depth")
        recorder.release.set()
        (blocked,) = await asyncio.gather(blocker, return_exceptions=True)
        assert isinstance(blocked, Unavailable)  # it timed out too, while being scored
        assert_rows(await batcher.submit(samples(6, 1)), samples(6, 1))  # the worker lives on
        return left

    left, _ = run_with(recorder, body, metrics, max_batch_size=2, max_wait_s=0.0, timeout_s=0.2)
    assert left == 0
    assert metric(metrics, "snnl_queue_depth") == 0
    assert recorder.calls == [(1, None, 0), (1, None, 0)]  # the timed-out 5 were never scored


def test_stop_fails_waiting_requests_with_503() -> None:
    recorder = Recorder()
    recorder.release.clear()
    metrics = ServiceMetrics()

    async def main() -> list[Any]:
        batcher = DynamicBatcher(
            "m", recorder, max_batch_size=2, max_wait_s=0.0, max_queue=16, timeout_s=10.0,
            metrics=metrics,
        )  # fmt: skip
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(samples(0, 2)))
        await asyncio.to_thread(recorder.entered.wait, 5)
        second = asyncio.ensure_future(batcher.submit(samples(2, 2)))
        await asyncio.sleep(0.01)
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0.01)
        recorder.release.set()
        await stopping
        return await asyncio.gather(first, second, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, Unavailable) for o in outcomes), outcomes


def test_calls_count_against_the_queue_and_time_out() -> None:
    """A pending ``call`` (evaluate) holds its samples of the queue until it ends: no unbounded
    backlog of evaluations behind the scoring thread."""
    gate = threading.Event()

    async def body(batcher: DynamicBatcher[ScoreResult]) -> dict[str, Any]:
        blocked = asyncio.ensure_future(batcher.call(lambda: gate.wait(10), size=6))
        await asyncio.sleep(0)
        with pytest.raises(Unavailable) as full:
            await batcher.submit(samples(0, 3))  # 6 + 3 > 8
        with pytest.raises(TooLarge) as large:
            await batcher.call(lambda: None, size=9)
        with pytest.raises(Unavailable) as late:
            await blocked
        gate.set()
        result = await batcher.submit(samples(0, 3))  # the samples of the call were released
        return {"full": full.value, "large": large.value, "late": late.value, "result": result}

    out, _ = run_with(Recorder(), body, max_batch_size=4, max_queue=8, timeout_s=0.3)
    assert "overloaded, 6 of 8 queued samples" in out["full"].detail
    assert out["large"].detail.startswith("inputs: 9 samples exceed the per-model evaluate limit")
    assert "no result within 0.3 s" in out["late"].detail
    assert_rows(out["result"], samples(0, 3))


def test_submit_before_start_is_503() -> None:
    batcher = DynamicBatcher(
        "m", Recorder(), max_batch_size=2, max_wait_s=0.0, max_queue=4, timeout_s=1.0,
        metrics=ServiceMetrics(),
    )  # fmt: skip
    with pytest.raises(Unavailable):
        asyncio.run(batcher.submit(samples(0, 1)))


def test_score_metrics_follow_the_results() -> None:
    recorder = Recorder()
    x = samples(0, 6)  # p-values 0.01..0.06: rows 0..3 are below alpha 0.05

    async def body(batcher: DynamicBatcher[ScoreResult]) -> ScoreResult:
        return await batcher.submit(x)

    result, metrics = run_with(recorder, body, max_batch_size=8, max_wait_s=0.0)
    assert int(result.outlier.sum()) == 4
    assert metric(metrics, "snnl_outliers_total") == 4
    assert metric(metrics, "snnl_p_value_count") == 6
    assert metric(metrics, "snnl_p_value_bucket", le="0.025") == 2  # 0.01, 0.02
    assert metric(metrics, "snnl_p_value_bucket", le="0.1") == 6
    assert metric(metrics, "snnl_soft_neighbor_score_count", layer="h") == 6
    assert metric(metrics, "snnl_stage_duration_seconds_sum", stage="neighbors") == 0.002
