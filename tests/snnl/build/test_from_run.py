"""ONNX export of a run: outputs, agreement with PyTorch, determinism, the written folder."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from snnl.build.from_run import export_onnx, export_run, verify_onnx
from snnl.core.taps import LayerTaps
from snnl.errors import InputError, RepositoryError, SnnlError
from snnl.model.detector import Detector
from snnl.model.manifest import CALIBRATION_FILE, ONNX_FILE, REFERENCE_FILE
from snnl.model.runtime import OnnxRunner
from snnl.model.store import load_manifest
from snnl.training.loop import load_run
from tests.snnl._tiny_run import make_run

CREATED = "2024-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "digits")


@pytest.fixture(scope="module")
def repository(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    export_run(run_dir, repo, "tiny", created=CREATED, device="cpu")
    return repo


def test_onnx_matches_torch_on_any_batch_size(run_dir: Path) -> None:
    run = load_run(run_dir)
    layers = run.config.hidden_layers
    model = export_onnx(run.net, layers, run.config.input_shape)
    graph = onnx.load_from_string(model).graph
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["logits", *layers]
    runner = OnnxRunner(model, layers, torch.device("cpu"))
    rng = np.random.default_rng(0)
    for x in (run.split.x_test[:1], run.split.x_test[:37], rng.uniform(0, 16, (5, 64))):
        x = x.astype(np.float32)
        out = runner.run(x)
        with torch.no_grad(), LayerTaps(run.net, layers) as taps:
            logits = run.net(torch.from_numpy(x))
            expected = {name: taps.activations[name].numpy() for name in layers}
        assert np.abs(out.logits - logits.numpy()).max() <= 1e-5
        for name in layers:
            assert out.features[name].shape == (len(x), expected[name].shape[1])
            assert np.abs(out.features[name] - expected[name]).max() <= 1e-5
    assert verify_onnx(model, run.net, layers, run.split.x_test) <= 1e-5


def test_verify_refuses_a_model_that_differs(run_dir: Path) -> None:
    run = load_run(run_dir)
    layers = run.config.hidden_layers
    model = export_onnx(run.net, layers, run.config.input_shape)
    with torch.no_grad():
        run.net.head.bias.add_(1e-3)
    with pytest.raises(SnnlError, match="differs from PyTorch"):
        verify_onnx(model, run.net, layers, run.split.x_test[:10])


def test_verify_tolerance_is_absolute_plus_relative(run_dir: Path) -> None:
    """|onnx - torch| <= 1e-5 + 1e-5 |torch|: logits of size ~10 may differ by ~1e-4 (float32
    rounding), small outputs by 1e-5 only."""
    run = load_run(run_dir)
    layers = run.config.hidden_layers
    x = run.split.x_test[:10]
    with torch.no_grad():
        logits = run.net(torch.from_numpy(x))
        offset = 1000.0 - float(logits.min())  # make every logit >= 1000
        run.net.head.bias.add_(offset)
    shifted = export_onnx(run.net, layers, run.config.input_shape)
    assert verify_onnx(shifted, run.net, layers, x) <= 1e-5 * (1 + 2000.0)
    # Logits near 1000 allow an absolute difference of about 1e-2; 5e-3 passes, 2e-2 does not.
    with torch.no_grad():
        run.net.head.bias.add_(5e-3)
    verify_onnx(shifted, run.net, layers, x)
    with torch.no_grad():
        run.net.head.bias.add_(1.5e-2)
    with pytest.raises(SnnlError, match="'logits'"):
        verify_onnx(shifted, run.net, layers, x)


def test_export_writes_a_loadable_model(run_dir: Path, repository: Path) -> None:
    manifest = load_manifest(repository, "tiny")
    run = load_run(run_dir)
    assert manifest.input_shape == [64] and manifest.input_dtype == "float32"
    assert [layer.name for layer in manifest.layers] == ["fc1", "fc2"]
    assert [layer.dim for layer in manifest.layers] == [32, 16]
    assert all(layer.reference_size == len(run.split.y_train) for layer in manifest.layers)
    assert all(0.001 < layer.temperature < 1.0 for layer in manifest.layers)
    assert manifest.calibration_size == len(run.split.y_calibration)
    assert manifest.created == CREATED
    assert set(manifest.files) == {ONNX_FILE, REFERENCE_FILE, CALIBRATION_FILE}
    spec = manifest.nonconformity
    assert spec.kind == "neighbor-mass" and spec.perplexity == 30
    assert [(t.layer, t.distance) for t in spec.terms] == [
        (layer, g) for layer in ("fc1", "fc2") for g in ("cosine", "euclidean")
    ]
    detector = Detector.load(repository, "tiny", device="cpu")
    result = detector.score(run.split.x_test)
    test = manifest.provenance["test"]
    assert test["size"] == len(run.split.y_test)
    assert test["accuracy"] == pytest.approx(np.mean(result.prediction == run.split.y_test))
    assert test["flag_rate"] == pytest.approx(result.outlier.mean())
    assert test["accuracy"] > 0.8
    np.testing.assert_array_equal(detector.reference_labels, np.sort(run.split.y_train))
    # The calibration split was scored exactly like a query.
    calibration = detector.score(run.split.x_calibration)
    assert detector.calibration is not None
    np.testing.assert_array_equal(
        np.sort(calibration.nonconformity), detector.calibration.nonconformity
    )
    for i, layer in enumerate(detector.layers):
        stored = detector.calibration.scores[layer]
        np.testing.assert_array_equal(np.sort(calibration.soft_neighbor_score[:, i]), stored)


def test_export_chooses_the_neighbor_mass_terms(
    run_dir: Path, repository: Path, tmp_path: Path
) -> None:
    """mass_geometries and mass_perplexity reach the manifest: one term per layer and chosen
    distance, each temperature fitted at the chosen perplexity (a smaller neighborhood, a
    smaller temperature than the default 30's)."""
    default = load_manifest(repository, "tiny").nonconformity
    export_run(
        run_dir, tmp_path, "p5", created=CREATED, device="cpu", mass_geometries=["cosine"],
        mass_perplexity=5.0,
    )  # fmt: skip
    chosen = load_manifest(tmp_path, "p5").nonconformity
    assert chosen.kind == "neighbor-mass" and chosen.perplexity == 5.0
    assert [(t.layer, t.distance) for t in chosen.terms] == [("fc1", "cosine"), ("fc2", "cosine")]
    wide = {t.layer: t.temperature for t in default.terms if t.distance == "cosine"}
    assert all(t.temperature < wide[t.layer] for t in chosen.terms)


def test_export_makes_chosen_layers_one_sided(
    run_dir: Path, repository: Path, tmp_path: Path
) -> None:
    """mass_one_sided gives that layer's terms a floor (the others keep the default export's
    terms), and the served a(x) adds only the shortfall below it: at least the two-sided
    layer's sum, more only where that layer's mass is below its floor."""
    default = load_manifest(repository, "tiny").nonconformity
    manifest = export_run(
        run_dir, tmp_path, "gated", created=CREATED, device="cpu", mass_one_sided=["fc1"],
        mass_floor_quantile=0.2,
    )  # fmt: skip
    terms = manifest.nonconformity.terms
    assert [t.floor is not None for t in terms] == [t.layer == "fc1" for t in terms]
    assert [t for t in terms if t.layer == "fc2"] == [t for t in default.terms if t.layer == "fc2"]
    detector = Detector.load(tmp_path, "gated", device="cpu")
    x = load_run(run_dir).split.x_test
    log_mass = detector.uncalibrated_scores(x).log_mass
    z = np.stack([(log_mass[:, k] - t.mean) / t.std for k, t in enumerate(terms)], axis=1)
    low = np.array([t.layer == "fc1" for t in terms])
    shortfall = np.maximum(np.array([t.floor or 0.0 for t in terms])[low] - z[:, low], 0)
    a = detector.score(x).nonconformity
    np.testing.assert_allclose(a, -z[:, ~low].sum(1) + shortfall.sum(1), rtol=1e-9, atol=1e-9)
    assert 0 < np.count_nonzero(shortfall.sum(1)) < len(x)
    for options, match in [
        ({"mass_one_sided": ["head"]}, r"--one-sided: layers \['head'\] are not served"),
        ({"mass_one_sided": ["fc1", "fc2"]}, "must stay two-sided"),
        (
            {"mass_one_sided": ["fc1"], "nonconformity": "neg-log-score"},
            "--nonconformity neighbor-mass",
        ),
        ({"mass_one_sided": ["fc1"], "mass_floor_quantile": -0.1}, "--floor-quantile"),
    ]:
        with pytest.raises(InputError, match=match):
            export_run(run_dir, tmp_path, "bad", device="cpu", **options)  # type: ignore[arg-type]
    assert not (tmp_path / "bad").exists()


def test_export_weights_the_terms(run_dir: Path, repository: Path, tmp_path: Path) -> None:
    """Each term's weight is its layer's times its geometry's; the fit is otherwise the default
    export's, and the served a(x) is the weighted sum of the terms' -z."""
    default = load_manifest(repository, "tiny").nonconformity
    manifest = export_run(
        run_dir, tmp_path, "weighted", created=CREATED, device="cpu",
        mass_layer_weights={"fc2": 2.0}, mass_geometry_weights={"cosine": 0.5},
    )  # fmt: skip
    terms = manifest.nonconformity.terms
    weights = np.array([t.weight for t in terms])
    assert weights.tolist() == [
        (2.0 if t.layer == "fc2" else 1.0) * (0.5 if t.distance == "cosine" else 1.0) for t in terms
    ]
    assert [replace(t, weight=1.0) for t in terms] == default.terms
    detector = Detector.load(tmp_path, "weighted", device="cpu")
    x = load_run(run_dir).split.x_test
    log_mass = detector.uncalibrated_scores(x).log_mass
    z = np.stack([(log_mass[:, k] - t.mean) / t.std for k, t in enumerate(terms)], axis=1)
    a = detector.score(x).nonconformity
    np.testing.assert_allclose(a, -(z * weights).sum(1), rtol=1e-9, atol=1e-9)
    for options, match in [
        ({"mass_layer_weights": {"head": 2.0}}, r"--layer-weights: \['head'\] not among"),
        (
            {"mass_geometries": ["cosine"], "mass_geometry_weights": {"euclidean": 2.0}},
            r"--geometry-weights: \['euclidean'\] not among \['cosine'\]",
        ),
        ({"mass_layer_weights": {"fc1": -1.0}}, "--layer-weights: fc1=-1.0: expected a finite"),
        (
            {"mass_geometry_weights": {"cosine": 2.0}, "nonconformity": "neg-log-score"},
            "--geometry-weights needs --nonconformity neighbor-mass",
        ),
    ]:
        with pytest.raises(InputError, match=match):
            export_run(run_dir, tmp_path, "bad", device="cpu", **options)  # type: ignore[arg-type]
    assert not (tmp_path / "bad").exists()


def test_export_is_deterministic(run_dir: Path, repository: Path, tmp_path: Path) -> None:
    export_run(run_dir, tmp_path, "tiny", created=CREATED, device="cpu")
    for file in ("manifest.json", ONNX_FILE, REFERENCE_FILE, CALIBRATION_FILE):
        first = hashlib.sha256((repository / "tiny" / file).read_bytes()).hexdigest()
        second = hashlib.sha256((tmp_path / "tiny" / file).read_bytes()).hexdigest()
        assert first == second, file


def test_tampered_model_is_refused(run_dir: Path, tmp_path: Path) -> None:
    export_run(run_dir, tmp_path, "tiny", created=CREATED, device="cpu")
    path = tmp_path / "tiny" / ONNX_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(RepositoryError, match=r"model\.onnx: sha256 does not match"):
        Detector.load(tmp_path, "tiny", device="cpu")


def test_calibration_fraction_resplits_the_pool(run_dir: Path, tmp_path: Path) -> None:
    run = load_run(run_dir)
    total = sum(len(y) for y in (run.split.y_train, run.split.y_calibration, run.split.y_test))
    manifest = export_run(
        run_dir,
        tmp_path,
        "resplit",
        calibration_fraction=0.25,
        reference_dtype="float16",
        layers=["fc1"],
        created=CREATED,
        device="cpu",
    )
    pool = len(run.split.y_calibration) + len(run.split.y_test)
    assert manifest.calibration_size == round(0.25 * total)
    assert manifest.provenance["test"]["size"] == pool - manifest.calibration_size
    assert [layer.name for layer in manifest.layers] == ["fc1"]
    detector = Detector.load(tmp_path, "resplit", device="cpu")
    assert detector.forward(run.split.x_test[:3]).features.keys() == {"fc1"}
    with pytest.raises(InputError, match="calibration-fraction"):
        export_run(run_dir, tmp_path, "bad", calibration_fraction=0.9, device="cpu")
    with pytest.raises(InputError, match="--layers"):
        export_run(run_dir, tmp_path, "bad", layers=["head"], device="cpu")
    with pytest.raises(InputError, match="nonconformity"):
        export_run(run_dir, tmp_path, "bad", nonconformity="ratio", device="cpu")


def test_neg_log_score_kind(run_dir: Path, tmp_path: Path) -> None:
    manifest = export_run(
        run_dir, tmp_path, "ratio", nonconformity="neg-log-score", created=CREATED, device="cpu"
    )
    assert manifest.nonconformity.kind == "neg-log-score"
    detector = Detector.load(tmp_path, "ratio", device="cpu")
    result = detector.score(load_run(run_dir).split.x_test)
    expected = -np.log(np.maximum(result.soft_neighbor_score, 1e-12)).sum(1)
    np.testing.assert_allclose(result.nonconformity, expected, rtol=1e-9)
