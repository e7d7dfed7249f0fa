"""The kernel's fused pieces against plain float64 formulas: segment log-sums, the running top-k."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from snnl.core.kernel import EXP_FLOOR, LayerKernel, Term, _segment_log_sums, _TopK


def _slow_segment_log_sums(z: np.ndarray, cuts: list[int]) -> np.ndarray:
    bounds = [*cuts, z.shape[1]]
    out = np.empty((z.shape[0], len(cuts)))
    for s, (a, b) in enumerate(itertools.pairwise(bounds)):
        for i, row in enumerate(z[:, a:b].astype(np.float64)):
            top = row.max()
            out[i, s] = top + math.log(sum(math.exp(v - top) for v in row))
    return out


@pytest.mark.parametrize("bounded", [True, False])
@pytest.mark.parametrize("cuts", [[0], [0, 1, 7, 40], [0, 63]])
def test_segment_log_sums_match_float64(bounded: bool, cuts: list[int]) -> None:
    """Bounded (exp taken as it is) and per-segment-maximum modes: float32 sums, float64 logs."""
    rng = np.random.default_rng(0)
    scale = 20.0 if bounded else 400.0  # the maximum mode must also survive a wide spread
    z = (rng.uniform(-1, 1, size=(5, 64)) * scale).astype(np.float32)
    got = _segment_log_sums(torch.from_numpy(z.copy()), cuts, bounded, guard=False)
    expected = _slow_segment_log_sums(z, cuts)
    if bounded:
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    else:  # entries more than 87 below their segment's maximum count e^-87, not 0
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=64 * math.exp(EXP_FLOOR))


def test_segment_log_sums_with_left_out_entries() -> None:
    z = torch.tensor([[0.0, float("-inf"), 1.0, 2.0], [float("-inf"), 3.0, 3.0, 0.5]])
    got = _segment_log_sums(z.clone(), [0, 2], bounded=False, guard=True)
    finite = np.where(np.isinf(z.numpy()), -1e300, z.numpy().astype(np.float64))
    expected = _slow_segment_log_sums(finite, [0, 2])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)  # float32 logsumexp


@pytest.mark.parametrize("chunk", [1, 5, 16, 100])
def test_running_top_k_is_the_exact_top_k(chunk: int) -> None:
    """Over chunks, with many equal values: the k largest values of every row, and their ids
    point at those values."""
    rng = np.random.default_rng(1)
    z = torch.from_numpy(rng.integers(0, 30, size=(7, 300)).astype(np.float32))  # ties
    k = 12
    top = _TopK(k)
    for start in range(0, 300, chunk):
        top.add(z[:, start : start + chunk], start)
    expected = z.sort(1, descending=True).values[:, :k]
    assert top.values is not None and top.rows is not None
    np.testing.assert_array_equal(top.values.sort(1, descending=True).values, expected)
    np.testing.assert_array_equal(z.gather(1, top.rows), top.values)
    assert all(len(set(row)) == k for row in top.rows.tolist())


def test_running_top_k_of_a_row_does_not_depend_on_the_other_rows() -> None:
    rng = np.random.default_rng(2)
    z = torch.from_numpy(rng.integers(0, 10, size=(40, 500)).astype(np.float32))
    whole = _TopK(9)
    part = _TopK(9)
    for start in range(0, 500, 64):
        whole.add(z[:, start : start + 64], start)
        part.add(z[10:13, start : start + 64], start)
    assert part.rows is not None and whole.rows is not None
    assert torch.equal(part.rows, whole.rows[10:13])


@pytest.mark.parametrize("temperature", [0.011, 0.013, 0.5])
def test_bounded_cosine_terms_and_the_maximum_mode_agree(temperature: float) -> None:
    """Around the bound 1/T + ln(chunk) <= 87 (chunk 16: T ~ 0.0119) both modes give the
    per-class log-sums of the float64 formula."""
    rng = np.random.default_rng(3)
    rows = torch.from_numpy(rng.normal(size=(40, 5)).astype(np.float32))
    labels = torch.arange(40) // 10
    queries = torch.from_numpy(rng.normal(size=(3, 5)).astype(np.float32))
    kernel = LayerKernel(rows, labels, 4, [Term("cosine", temperature)], torch.float32)
    assert kernel._bounded(0, 16) == (temperature > 0.0119)
    sums = kernel.partial(kernel.prepare(queries), None, 0, 16).sums[0].numpy()
    unit_q = queries.double() / queries.double().norm(dim=1, keepdim=True)
    unit_r = rows.double() / rows.double().norm(dim=1, keepdim=True)
    z = (unit_q @ unit_r.T / temperature).numpy()
    expected = np.stack(
        [_slow_segment_log_sums(z[:, 10 * c : 10 * c + 10], [0])[:, 0] for c in range(4)], 1
    )
    np.testing.assert_allclose(sums, expected, rtol=1e-5)
