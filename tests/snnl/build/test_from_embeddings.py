"""snnl index: an embedding-only model from an .npz of embeddings."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from snnl.build.from_embeddings import index_embeddings
from snnl.core.temperature import entanglement
from snnl.errors import InputError
from snnl.model.detector import Detector
from snnl.model.store import list_models


def _write(path: Path, n: int = 300, d: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    y = rng.choice([3, 7, 11], size=n)  # arbitrary ids: class names keep them
    x = rng.normal(size=(n, d)).astype(np.float32) + y[:, None] / 4
    np.savez(path, x=x, y=y)
    return path


def test_index_builds_a_stratified_embedding_only_model(tmp_path: Path) -> None:
    data = _write(tmp_path / "emb.npz")
    manifest = index_embeddings(
        data,
        tmp_path / "repo",
        "enc",
        layer="pooled",
        distance="euclidean",
        calibration_fraction=0.2,
        created="2024-01-01T00:00:00Z",
        device="cpu",
    )
    assert list_models(tmp_path / "repo") == ["enc"]
    assert manifest.embedding_only and manifest.class_names == ["3", "7", "11"]
    assert manifest.calibration_size == 60 and manifest.layers[0].reference_size == 240
    assert manifest.layers[0].name == "pooled" and manifest.layers[0].distance == "euclidean"
    assert manifest.provenance["source_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    det = Detector.load(tmp_path / "repo", "enc", device="cpu")
    y = np.load(data)["y"]
    # Stratified: each class keeps its share in the reference part (within one row).
    for k, label in enumerate((3, 7, 11)):
        assert abs((det.reference_labels == k).sum() - 0.8 * (y == label).sum()) <= 1
    x = np.load(data)["x"]
    result = det.score_embeddings({"pooled": x[:20]})
    assert result.to_records()[0]["label"] in {"3", "7", "11"}
    # The manifest records the reference set's T* and entanglement SNNL(T*).
    t_star, value = entanglement(
        det.reference_features("pooled"), det.reference_labels, "euclidean", max_points=1000
    )
    assert manifest.layers[0].optimal_temperature == pytest.approx(t_star, rel=1e-6)
    assert manifest.layers[0].entanglement == pytest.approx(max(value, 0.0), rel=1e-6, abs=1e-12)


def test_index_is_deterministic(tmp_path: Path) -> None:
    data = _write(tmp_path / "emb.npz")
    for repo in ("a", "b"):
        index_embeddings(data, tmp_path / repo, "enc", created="2024-01-01T00:00:00Z", device="cpu")
    for file in ("manifest.json", "reference.safetensors", "calibration.safetensors"):
        assert (tmp_path / "a" / "enc" / file).read_bytes() == (
            tmp_path / "b" / "enc" / file
        ).read_bytes()


def test_source_date_epoch_sets_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _write(tmp_path / "emb.npz", n=200)  # 30 calibration rows: alpha 0.05 needs 19
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    manifest = index_embeddings(data, tmp_path / "repo", "enc", device="cpu")
    assert manifest.created == "1970-01-02T00:00:00Z"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(InputError, match="SOURCE_DATE_EPOCH must be whole seconds"):
        index_embeddings(data, tmp_path / "repo", "enc", device="cpu")


def test_index_refuses_bad_files(tmp_path: Path) -> None:
    np.savez(tmp_path / "three_d.npz", x=np.zeros((10, 2, 2), np.float32), y=np.arange(10) % 2)
    with pytest.raises(InputError, match=r"'x' must be embeddings \(N, d\)"):
        index_embeddings(tmp_path / "three_d.npz", tmp_path / "repo", "m", device="cpu")
    np.savez(tmp_path / "one_class.npz", x=np.zeros((10, 2), np.float32), y=np.zeros(10, int))
    with pytest.raises(InputError, match="at least 2 classes"):
        index_embeddings(tmp_path / "one_class.npz", tmp_path / "repo", "m", device="cpu")
    np.savez(tmp_path / "no_y.npz", x=np.zeros((10, 2), np.float32))
    with pytest.raises(InputError, match="missing key 'y'"):
        index_embeddings(tmp_path / "no_y.npz", tmp_path / "repo", "m", device="cpu")
    data = _write(tmp_path / "emb.npz")
    with pytest.raises(InputError, match="manifest of 'm'"):
        index_embeddings(data, tmp_path / "repo", "m", layer="bad name!", device="cpu")
    with pytest.raises(InputError, match="temperature rule"):
        index_embeddings(data, tmp_path / "repo", "m", temperature_rule="hot", device="cpu")


def test_index_refuses_a_default_rule_its_calibration_cannot_support(tmp_path: Path) -> None:
    data = _write(tmp_path / "emb.npz", n=60)  # 10 calibration rows: alpha 0.05 needs 19
    with pytest.raises(InputError, match=r"alpha=0.05 .* n_cal=10 "):
        index_embeddings(data, tmp_path / "repo", "enc", device="cpu")
    with pytest.raises(InputError, match=r"guarantee='pac', but n_cal="):
        index_embeddings(data, tmp_path / "repo", "enc", alpha=0.2, guarantee="pac", device="cpu")


def test_index_with_a_held_out_calibration_file_and_a_capped_size(tmp_path: Path) -> None:
    data = _write(tmp_path / "emb.npz", n=300)
    held_out = _write(tmp_path / "cal.npz", n=500, seed=1)
    manifest = index_embeddings(
        data,
        tmp_path / "repo",
        "enc",
        calibration=held_out,
        calibration_size=120,
        guarantee="class",
        alpha=0.2,  # overlapping classes: some predicted classes get few calibration rows
        device="cpu",
    )
    assert manifest.layers[0].reference_size == 300 and manifest.calibration_size == 120
    assert manifest.guarantee == "class" and manifest.provenance["calibration"] == "cal.npz"
    det = Detector.load(tmp_path / "repo", "enc", device="cpu")
    assert det.calibration is not None and min(det.calibration.class_sizes(3)) >= 4
    result = det.score_embeddings({"embedding": np.load(held_out)["x"][:50]})
    assert result.guarantee == "class" and result.marginal_p_value is not None
