"""The running top-k against a full sort."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from snnl.core.topk import RunningTopK


@pytest.mark.parametrize("chunk", [1, 5, 16, 100])
def test_running_top_k_is_the_exact_top_k(chunk: int) -> None:
    """Over chunks, with many equal values: the k largest values of every row, and their ids
    point at those values."""
    rng = np.random.default_rng(1)
    z = torch.from_numpy(rng.integers(0, 30, size=(7, 300)).astype(np.float32))  # ties
    k = 12
    top = RunningTopK(k)
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
    whole = RunningTopK(9)
    part = RunningTopK(9)
    for start in range(0, 500, 64):
        whole.add(z[:, start : start + 64], start)
        part.add(z[10:13, start : start + 64], start)
    assert part.rows is not None and whole.rows is not None
    assert torch.equal(part.rows, whole.rows[10:13])
