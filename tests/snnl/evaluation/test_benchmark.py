"""The evaluate pipeline on a real exported model and a real embedding-only model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from snnl.build.from_embeddings import index_embeddings
from snnl.build.from_run import export_run
from snnl.errors import InputError
from snnl.evaluation.baselines import KNN, MSP, Energy, Mahalanobis, ViM, linear_head
from snnl.evaluation.benchmark import DETECTORS, RATIO, Evaluation, evaluate
from snnl.evaluation.embeddings import evaluate_detector, evaluate_embeddings
from snnl.evaluation.ood_metrics import ood_metrics
from snnl.evaluation.ood_sets import transform, uniform_noise
from snnl.evaluation.report import bold_best, id_percentile, markdown, write_report
from snnl.model.detector import Detector
from snnl.training.run import load_run
from tests.snnl._tiny_run import make_run

CREATED = "2024-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Detector, np.ndarray, np.ndarray]:
    root = tmp_path_factory.mktemp("evaluate")
    run_dir = make_run(root / "run")
    export_run(run_dir, root / "repo", "tiny", created=CREATED, device="cpu")
    split = load_run(run_dir).split
    return Detector.load(root / "repo", "tiny", device="cpu"), split.x_test, split.y_test


@pytest.fixture(scope="module")
def result(model: tuple[Detector, np.ndarray, np.ndarray]) -> Evaluation:
    det, x, y = model
    ood = {"noise": uniform_noise(x, 60, seed=1), "inverted": transform(x[:70], "invert")}
    return evaluate(det, x, y, ood, batch_size=100, groups={"inverted": "near"})


def test_scores_are_the_detectors_own(
    model: tuple[Detector, np.ndarray, np.ndarray], result: Evaluation
) -> None:
    det, x, y = model
    served = det.score(x)
    np.testing.assert_allclose(result.id_scores["soft_neighbor"], -served.nonconformity)
    assert result.flag_false_positive_rate == pytest.approx(np.mean(served.outlier))
    assert result.accuracy == pytest.approx(np.mean(served.prediction == y))
    out = det.forward(x)
    penultimate = det.layers[-1]
    reference = det.reference_features(penultimate)
    head = linear_head(out.features[penultimate], out.logits)
    assert head is not None  # the last served layer is the penultimate one
    np.testing.assert_allclose(
        out.features[penultimate] @ head[0].T + head[1], out.logits, atol=1e-4
    )
    for baseline in (MSP(), Energy(), Mahalanobis(), KNN(), ViM(*head)):
        baseline.fit(reference, det.reference_labels)
        expected = baseline.score(out.logits, out.features[penultimate])
        np.testing.assert_allclose(result.id_scores[baseline.name], expected, rtol=1e-9)
    assert det.manifest.nonconformity.kind == "neighbor-mass"
    ratio = np.log(np.maximum(served.soft_neighbor_score, 1e-12)).sum(1)
    np.testing.assert_allclose(result.id_scores[RATIO], ratio, rtol=1e-12)
    assert result.nonconformity == "neighbor-mass"


def test_metrics_and_layers(
    model: tuple[Detector, np.ndarray, np.ndarray], result: Evaluation
) -> None:
    det, x, y = model
    assert set(result.ood) == {"noise", "inverted"}
    for stem, per_detector in result.ood.items():
        assert list(per_detector) == [*DETECTORS, RATIO]
        for name, metrics in per_detector.items():
            assert metrics == ood_metrics(result.id_scores[name], result.ood_scores[stem][name])
    assert result.ood["noise"]["mahalanobis"].auroc > 0.9
    layers = evaluate_embeddings(
        det.forward(x).features,
        y,
        temperatures={layer.name: layer.temperature for layer in det.manifest.layers},
        distances={layer.name: layer.distance for layer in det.manifest.layers},
    )
    assert result.layers == layers
    assert result.entanglement == {layer.name: layer.entanglement for layer in layers.layers}
    assert result.sizes == {"id": len(x), "ood": {"noise": 60, "inverted": 70}}
    assert result.groups == {"noise": "far", "inverted": "near"}
    summary = result.summary()
    assert list(summary) == ["near", "far"]
    assert summary["near"]["knn"] == result.ood["inverted"]["knn"]  # one set: its own metrics


def test_groups_must_name_sets_and_be_near_or_far(
    model: tuple[Detector, np.ndarray, np.ndarray],
) -> None:
    det, x, y = model
    noise = {"noise": uniform_noise(x, 10)}
    with pytest.raises(InputError, match="near or far"):
        evaluate(det, x, y, noise, groups={"noise": "middle"})
    with pytest.raises(InputError, match="not an OOD set"):
        evaluate(det, x, y, noise, groups={"other": "near"})


def test_best_of_every_column_is_bold(result: Evaluation) -> None:
    assert bold_best([0.5, 0.91, 0.9104], True) == ["50.0", "**91.0**", "**91.0**"]
    assert bold_best([0.5, 0.91, 0.2], False) == ["50.0", "91.0", "**20.0**"]  # FPR95
    text = markdown(result)
    assert "**near-OOD** (mean over inverted)" in text and "**far-OOD** (mean over noise)" in text
    assert "| AUROC % | FPR95 % | AUPR-In % | AUPR-Out % | ID acc % |" in text
    for stem, per_detector in result.ood.items():
        rows = [line for line in text.splitlines() if line.startswith(f"| {stem} | ")]
        table = [line.split(" | ") for line in rows if len(line.split(" | ")) == 7]
        assert len(table) == len(per_detector)
        for column in range(3, 7):  # AUROC, FPR95, AUPR-In, AUPR-Out: one best at least
            assert any(cells[column].strip(" |").startswith("**") for cells in table)
        best_fpr = min(round(100 * m.fpr95, 1) for m in per_detector.values())
        for cells, m in zip(table, per_detector.values(), strict=True):
            assert cells[4].startswith("**") == (round(100 * m.fpr95, 1) == best_fpr)


def test_id_percentile_puts_every_detector_on_one_scale() -> None:
    id_scores = np.array([3.0, 1.0, 2.0, 4.0])
    got = id_percentile(id_scores, np.array([0.0, 2.0, 2.5, 9.0]))
    np.testing.assert_allclose(got, [0.0, 0.5, 0.5, 1.0])


def test_report_files(result: Evaluation, tmp_path: Path) -> None:
    written = write_report(result, tmp_path / "report")
    names = sorted(p.name for p in written)
    assert names == sorted(
        [
            "report.json",
            "report.md",
            "roc_noise.png",
            "hist_noise.png",
            "roc_inverted.png",
            "hist_inverted.png",
        ]
    )
    for path in written:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {"accuracy", "flag_false_positive_rate", "entanglement", "ood"} <= set(report)
    assert report["nonconformity"] == "neighbor-mass"
    assert set(report["entanglement"]) == set(result.entanglement)
    for per_detector in report["ood"].values():
        assert set(DETECTORS) <= set(per_detector)
        for metrics in per_detector.values():
            assert set(metrics) == {"auroc", "fpr95", "aupr", "aupr_out"}
    assert report["groups"] == {"noise": "far", "inverted": "near"}
    assert set(report["summary"]) == {"near", "far"}
    assert set(report["summary"]["far"]) == set(report["ood"]["noise"])
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| noise | far | soft_neighbor |" in text


def test_bad_inputs(model: tuple[Detector, np.ndarray, np.ndarray]) -> None:
    det, x, y = model
    noise = {"noise": uniform_noise(x, 10)}
    with pytest.raises(InputError, match=r"id\.x"):
        evaluate(det, x[:, :10], y, noise)
    with pytest.raises(InputError, match=r"noise\.x"):
        evaluate(det, x, y, {"noise": np.zeros((5, 3), dtype=np.float32)})
    with pytest.raises(InputError, match=r"id\.y"):
        evaluate(det, x, y + 10, noise)
    with pytest.raises(InputError, match="ood"):
        evaluate(det, x, y, {})


def test_evaluate_detector_with_inputs(model: tuple[Detector, np.ndarray, np.ndarray]) -> None:
    det, x, y = model
    got = evaluate_detector(det, y[:80], x[:80])
    served = det.score(x[:80])
    assert got.accuracy == pytest.approx(np.mean(served.prediction == y[:80]))
    assert got.outlier_rate == pytest.approx(np.mean(served.outlier))
    assert [layer.name for layer in got.layers] == list(det.layers)
    assert all(
        layer.temperature == spec.temperature
        for layer, spec in zip(got.layers, det.manifest.layers, strict=True)
    )
    with pytest.raises(InputError, match="labels"):
        evaluate_detector(det, y[:79], x[:80])
    with pytest.raises(InputError, match="has a network: send inputs"):
        evaluate_detector(det, y[:80], {"fc1": x[:80]})


def test_embedding_only_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(0.0, 3.0, (3, 6))
    y = rng.integers(0, 3, 400)
    x = (centers[y] + rng.normal(size=(400, 6))).astype(np.float32)
    np.savez(tmp_path / "emb.npz", x=x[:300], y=y[:300])
    index_embeddings(tmp_path / "emb.npz", tmp_path / "repo", "emb", created=CREATED, device="cpu")
    det = Detector.load(tmp_path / "repo", "emb", device="cpu")
    far = (rng.normal(size=(50, 6)) * 10.0).astype(np.float32)
    result = evaluate(det, x[300:], y[300:], {"far": far})
    assert set(result.ood["far"]) == {"soft_neighbor", "mahalanobis", "knn", RATIO}
    assert result.ood["far"]["soft_neighbor"].auroc > 0.9
    got = evaluate_detector(det, y[300:], {"embedding": x[300:]})
    assert got.accuracy is not None and got.accuracy > 0.8
