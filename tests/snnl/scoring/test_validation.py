"""Input checks of the Detector: shapes (flat or nested), dtypes, finiteness, alpha, neighbors."""

from __future__ import annotations

import numpy as np
import pytest

from snnl.errors import InputError
from snnl.scoring.validation import check_alpha, check_embeddings, check_inputs, check_neighbors


def test_flat_and_nested_inputs_are_the_same_samples() -> None:
    nested = np.arange(12, dtype=np.int64).reshape(2, 2, 3)
    a = check_inputs(nested, (2, 3)).x
    b = check_inputs(nested.reshape(2, 6).tolist(), (2, 3)).x
    assert a.dtype == np.float32 and a.shape == (2, 2, 3) and a.flags.c_contiguous
    np.testing.assert_array_equal(a, b)
    with pytest.raises(
        InputError, match=r"inputs: expected shape \(B, 6\) or \(B, 2, 3\), got \(2, 3, 2\)"
    ):
        check_inputs(nested.reshape(2, 3, 2), (2, 3))


def test_bad_values_name_the_sample() -> None:
    x = np.zeros((4, 3), np.float32)
    x[2, 1] = np.inf
    with pytest.raises(InputError, match=r"inputs: NaN or inf .* in sample 2"):
        check_inputs(x, (3,))
    with pytest.raises(InputError, match="expected real numbers"):
        check_inputs(np.zeros((1, 3), bool), (3,))
    with pytest.raises(InputError, match="expected real numbers"):
        check_inputs(np.zeros((1, 3), complex), (3,))
    with pytest.raises(InputError, match="non-empty batch"):
        check_inputs(np.float32(1.0), (3,))


def test_embeddings_need_one_batch_size() -> None:
    dims = {"a": 2, "b": 3}
    out = check_embeddings({"a": [[1, 2]], "b": [[1.0, 2.0, 3.0]]}, dims).features
    assert out["a"].dtype == np.float32 and out["b"].shape == (1, 3)
    with pytest.raises(InputError, match=r"embeddings\.b: 2 rows, other layers have 1"):
        check_embeddings({"a": [[1, 2]], "b": np.zeros((2, 3))}, dims)
    with pytest.raises(InputError, match="expected a mapping"):
        check_embeddings([[1, 2]], dims)


def test_alpha_and_neighbors() -> None:
    assert check_alpha(None, 0.05) == 0.05 and check_alpha(0.1, 0.05) == 0.1
    assert check_alpha(np.float32(0.25), 0.05) == 0.25
    for bad in (0, 1, -0.5, float("nan"), True, "0.1"):
        with pytest.raises(InputError, match="alpha"):
            check_alpha(bad, 0.05)  # type: ignore[arg-type]
    assert check_neighbors(np.int64(3), 10) == 3
    for bad in (-1, 11, 2.0, True):
        with pytest.raises(InputError, match="neighbors"):
            check_neighbors(bad, 10)  # type: ignore[arg-type]
