"""Checked batches: made by the checks only, and their row helpers treat both kinds alike."""

from __future__ import annotations

import numpy as np
import pytest

from snnl.errors import InputError
from snnl.scoring.batch import (
    CheckedFeatures,
    CheckedSamples,
    concat_rows,
    num_rows,
    row_chunks,
    slice_rows,
)
from snnl.scoring.validation import check_embeddings, check_inputs


def test_checked_samples_and_features_count_slice_and_stack_alike() -> None:
    x = np.arange(14.0).reshape(7, 2)
    samples = check_inputs(x, (2,))
    features = check_embeddings({"a": x, "b": x[:, :1] * 10}, {"a": 2, "b": 1})
    assert isinstance(samples, CheckedSamples) and samples.x.dtype == np.float32
    assert isinstance(features, CheckedFeatures) and list(features.features) == ["a", "b"]
    assert num_rows(samples) == num_rows(features) == len(samples) == 7
    np.testing.assert_array_equal(slice_rows(samples, 2, 4).x, samples.x[2:4])  # type: ignore[union-attr]
    sliced = slice_rows(features, 2, 4)
    assert isinstance(sliced, CheckedFeatures)
    np.testing.assert_array_equal(sliced.features["b"], features.features["b"][2:4])
    for batch in (samples, features):
        chunks = list(row_chunks(batch, 3))
        assert [num_rows(c) for c in chunks] == [3, 3, 1]
        joined = concat_rows(chunks)
        assert type(joined) is type(batch)
        if isinstance(joined, CheckedSamples) and isinstance(batch, CheckedSamples):
            np.testing.assert_array_equal(joined.x, batch.x)
        elif isinstance(joined, CheckedFeatures) and isinstance(batch, CheckedFeatures):
            for name in batch.features:
                np.testing.assert_array_equal(joined.features[name], batch.features[name])


def test_mixed_kinds_bad_chunks_and_unchecked_values_are_refused() -> None:
    x = np.zeros((2, 3), np.float32)
    samples, features = check_inputs(x, (3,)), check_embeddings({"a": x}, {"a": 3})
    with pytest.raises(TypeError, match="mix checked samples and checked features"):
        concat_rows([samples, features])
    with pytest.raises(ValueError, match="size must be >= 1"):
        list(row_chunks(samples, 0))
    with pytest.raises(InputError, match="embeddings: expected a mapping"):
        check_embeddings(x, {"a": 3})
