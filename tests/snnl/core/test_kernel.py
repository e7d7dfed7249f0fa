"""The layer kernel against plain float64 formulas: per-class log-sums in both exp modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from snnl.core.distances import CosineDistance, distance_of, pairwise_distances
from snnl.core.kernel import LayerKernel, Term
from tests.snnl.core._float64 import slow_segment_log_sums


@pytest.mark.parametrize("temperature", [0.011, 0.013, 0.5])
def test_bounded_cosine_terms_and_the_maximum_mode_agree(temperature: float) -> None:
    """Around the bound 1/T + ln(chunk) <= 87 (chunk 16: T ~ 0.0119) both modes give the
    per-class log-sums of the float64 formula."""
    rng = np.random.default_rng(3)
    rows = torch.from_numpy(rng.normal(size=(40, 5)).astype(np.float32))
    labels = torch.arange(40) // 10
    queries = torch.from_numpy(rng.normal(size=(3, 5)).astype(np.float32))
    kernel = LayerKernel(rows, labels, 4, [Term(CosineDistance(), temperature)], torch.float32)
    assert kernel._bounded(0, 16) == (temperature > 0.0119)
    sums = kernel.log_sums(kernel.prepare(queries), None, 0, 16).sums[0].numpy()
    unit_q = queries.double() / queries.double().norm(dim=1, keepdim=True)
    unit_r = rows.double() / rows.double().norm(dim=1, keepdim=True)
    z = (unit_q @ unit_r.T / temperature).numpy()
    expected = np.stack(
        [slow_segment_log_sums(z[:, 10 * c : 10 * c + 10], [0])[:, 0] for c in range(4)], 1
    )
    np.testing.assert_allclose(sums, expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["cosine", "euclidean"])
def test_a_distance_serves_its_kernel_as_shifted_logits(name: str) -> None:
    """z(h, r) - o(h) = -D(h, r)/T with z = c(h) <h, row> + b(row) (snnl.core.distances)."""
    rng = np.random.default_rng(4)
    h = torch.from_numpy(rng.normal(size=(5, 3)))
    r = torch.from_numpy(rng.normal(size=(7, 3)))
    distance, temperature = distance_of(name), 0.7
    row = distance.prepare(r)
    z = distance.query_scale(h, temperature)[:, None] * (h @ row.T)
    bias = distance.row_bias(r.pow(2).sum(1), temperature)
    if bias is not None:
        z = z + bias
    shifted = z - distance.offset(h.pow(2).sum(1), temperature)[:, None]
    expected = -pairwise_distances(h, r, name) / temperature  # type: ignore[arg-type]
    np.testing.assert_allclose(shifted.numpy(), expected.numpy(), rtol=1e-12, atol=1e-12)
