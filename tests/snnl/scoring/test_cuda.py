"""The scorer on a CUDA device against the CPU (run wherever torch sees a GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from snnl.model.detector import Detector
from snnl.scoring.scorer import SoftNeighborScorer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
MODELS = Path(__file__).resolve().parents[3] / "models"


def _scorers(dtype: torch.dtype, compute: torch.dtype | None = None):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 3000)
    x = rng.normal(0, 1, (5, 32))[y] + rng.normal(0, 1, (3000, 32))
    q = rng.normal(0, 1, (5, 32))[rng.integers(0, 5, 100)] + rng.normal(0, 1.3, (100, 32))

    def build(device: str) -> SoftNeighborScorer:
        return SoftNeighborScorer(
            {"h": torch.from_numpy(x).to(device, dtype)},
            torch.from_numpy(y).to(device),
            num_classes=5,
            temperatures={"h": 0.2},
            distances={"h": "cosine"},
            mass_terms=[("h", "cosine", 0.1), ("h", "euclidean", 10.0)],
            chunk_size=512,
            compute_dtype=compute,
        )

    return build("cpu"), build("cuda"), torch.from_numpy(q).to(dtype), rng.integers(0, 5, 100)


@pytest.mark.parametrize("known_prediction", [True, False])
def test_cuda_matches_cpu_float64(known_prediction: bool) -> None:
    cpu, gpu, q, predicted = _scorers(torch.float64)
    given = torch.from_numpy(predicted) if known_prediction else None
    a = cpu.score({"h": q}, given, k=20, neighbors=5)
    b = gpu.score({"h": q}, given, k=20, neighbors=5)
    np.testing.assert_array_equal(a.predicted, b.predicted)
    np.testing.assert_allclose(b.log_score, a.log_score, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(b.log_mass, a.log_mass, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(b.class_probability, a.class_probability, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(a.same_class, b.same_class)
    np.testing.assert_array_equal(a.neighbor_ids, b.neighbor_ids)


def test_cuda_bfloat16_products_stay_close_to_float32() -> None:
    cpu, _, q, predicted = _scorers(torch.float32)
    _, gpu, _, _ = _scorers(torch.float32, torch.bfloat16)
    a = cpu.score({"h": q}, torch.from_numpy(predicted), k=20)
    b = gpu.score({"h": q}, torch.from_numpy(predicted), k=20)
    np.testing.assert_allclose(b.log_mass, a.log_mass, atol=0.5)
    assert np.mean(np.abs(b.log_score - a.log_score)) < 0.1


def test_detector_on_cuda_matches_cpu() -> None:
    x = np.random.default_rng(1).uniform(0, 16, (64, 64)).astype(np.float32)
    a = Detector.load(MODELS, "digits-mlp", device="cpu").score(x, neighbors=3)
    b = Detector.load(MODELS, "digits-mlp", device="cuda").score(x, neighbors=3)
    np.testing.assert_array_equal(a.prediction, b.prediction)
    np.testing.assert_allclose(b.nonconformity, a.nonconformity, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(b.p_value, a.p_value, atol=0.02)
