"""The batch type's row helpers treat an array and {layer: array} alike."""

from __future__ import annotations

import numpy as np
import pytest

from snnl.scoring.batch import concat_rows, num_rows, row_chunks, slice_rows


def test_an_array_and_a_layer_mapping_count_slice_and_stack_alike() -> None:
    x = np.arange(14.0).reshape(7, 2)
    layers = {"a": x, "b": x[:, :1] * 10}
    assert num_rows(x) == num_rows(layers) == 7
    assert num_rows({}) == 0
    np.testing.assert_array_equal(slice_rows(x, 2, 4), x[2:4])
    sliced = slice_rows(layers, 2, 4)
    assert isinstance(sliced, dict)
    np.testing.assert_array_equal(sliced["b"], layers["b"][2:4])
    for samples in (x, layers):
        chunks = list(row_chunks(samples, 3))
        assert [num_rows(c) for c in chunks] == [3, 3, 1]
        joined = concat_rows(chunks)
        if isinstance(samples, np.ndarray):
            np.testing.assert_array_equal(joined, samples)
        else:
            assert isinstance(joined, dict) and joined.keys() == samples.keys()
            for name in samples:
                np.testing.assert_array_equal(joined[name], samples[name])


def test_mixed_forms_and_empty_chunks_are_refused() -> None:
    x = np.zeros((2, 3))
    with pytest.raises(TypeError, match="mix arrays"):
        concat_rows([x, {"a": x}])
    with pytest.raises(ValueError, match="size must be >= 1"):
        list(row_chunks(x, 0))
