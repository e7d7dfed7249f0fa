"""Log-space reductions against plain float64 formulas: segment log-sums."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from snnl.core.logspace import EXP_FLOOR, segment_log_sums
from tests.snnl.core._float64 import slow_segment_log_sums


@pytest.mark.parametrize("bounded", [True, False])
@pytest.mark.parametrize("cuts", [[0], [0, 1, 7, 40], [0, 63]])
def test_segment_log_sums_match_float64(bounded: bool, cuts: list[int]) -> None:
    """Bounded (exp taken as it is) and per-segment-maximum modes: float32 sums, float64 logs."""
    rng = np.random.default_rng(0)
    scale = 20.0 if bounded else 400.0  # the maximum mode must also survive a wide spread
    z = (rng.uniform(-1, 1, size=(5, 64)) * scale).astype(np.float32)
    got = segment_log_sums(torch.from_numpy(z.copy()), cuts, bounded, guard=False)
    expected = slow_segment_log_sums(z, cuts)
    if bounded:
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    else:  # entries more than 87 below their segment's maximum count e^-87, not 0
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=64 * math.exp(EXP_FLOOR))


def test_segment_log_sums_with_left_out_entries() -> None:
    z = torch.tensor([[0.0, float("-inf"), 1.0, 2.0], [float("-inf"), 3.0, 3.0, 0.5]])
    got = segment_log_sums(z.clone(), [0, 2], bounded=False, guard=True)
    finite = np.where(np.isinf(z.numpy()), -1e300, z.numpy().astype(np.float64))
    expected = slow_segment_log_sums(finite, [0, 2])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)  # float32 logsumexp
