"""Detector: scores against a slow float64 formula, validation, results, threads, calibration."""

from __future__ import annotations

import json
import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from snnl.build.from_embeddings import index_embeddings
from snnl.build.from_run import export_run
from snnl.errors import InputError, RepositoryError
from snnl.model.detector import Detector
from snnl.model.manifest import CALIBRATION_FILE, MANIFEST_FILE, REFERENCE_FILE
from snnl.model.store import sha256
from snnl.scoring.batch import CheckedFeatures, row_chunks
from snnl.scoring.conformal import Calibration
from snnl.scoring.results import ScoreResult
from snnl.training.loop import load_run
from tests.snnl._conformal import expected_flag_rate
from tests.snnl._tiny_run import make_run

CREATED = "2024-01-01T00:00:00Z"


def _clusters(n: int, seed: int, d: int = 5, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes, so that scores vary continuously."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(size=(classes, d))
    y = rng.integers(0, classes, size=n)
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


@pytest.fixture(scope="module")
def embedding_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("emb")
    x, y = _clusters(400, seed=0)
    np.savez(root / "emb.npz", x=x, y=y)
    index_embeddings(root / "emb.npz", root / "repo", "emb", created=CREATED, device="cpu")
    index_embeddings(
        root / "emb.npz",
        root / "repo",
        "emb-ratio",
        created=CREATED,
        device="cpu",
        nonconformity="neg-log-score",
    )
    return root / "repo"


@pytest.fixture(scope="module")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("model")
    run_dir = make_run(root / "run")
    export_run(run_dir, root / "repo", "tiny", created=CREATED, device="cpu")
    return root / "repo", run_dir


def _slow_nonconformity(det: Detector, q: np.ndarray, c: int, s: float) -> float:
    """a(x) of the manifest's kind with explicit loops in float64: the plain sum of -log s, or
    minus the sum of the standardized log mean over class-c reference rows of exp(-D / T) per
    term."""
    spec = det.manifest.nonconformity
    if spec.kind == "neg-log-score":
        return -math.log(max(s, 1e-12))
    reference = det.reference_features("embedding").astype(np.float64)
    labels = det.reference_labels
    a = 0.0
    for term in spec.terms:
        logits = []
        for r, label in zip(reference, labels, strict=True):
            if label != c:
                continue
            if term.distance == "cosine":
                d = 1.0 - float(q @ r) / (math.sqrt(float(q @ q)) * math.sqrt(float(r @ r)))
            else:
                d = sum((float(u) - float(v)) ** 2 for u, v in zip(q, r, strict=True))
            logits.append(-d / term.temperature)
        top = max(logits)
        m = top + math.log(sum(math.exp(v - top) for v in logits) / len(logits))
        a -= (m - term.mean) / term.std
    return a


@pytest.mark.parametrize("name", ["emb", "emb-ratio"])
def test_score_embeddings_matches_slow_formula(embedding_repo: Path, name: str) -> None:
    det = Detector.load(embedding_repo, name, device="cpu")
    kind = det.manifest.nonconformity.kind
    assert kind == ("neighbor-mass" if name == "emb" else "neg-log-score")
    assert det.backend == "none" and det.input_shape is None and det.layers == ("embedding",)
    reference = det.reference_features("embedding").astype(np.float64)
    labels = det.reference_labels
    temperature = det.manifest.layers[0].temperature
    queries, _ = _clusters(9, seed=5)
    result = det.score_embeddings({"embedding": queries}, neighbors=4)
    assert det.calibration is not None
    cal_a, cal_s = det.calibration.nonconformity, det.calibration.scores["embedding"]
    for b, q in enumerate(queries.astype(np.float64)):
        logits = []
        for r in reference:
            cos = float(q @ r) / (math.sqrt(float(q @ q)) * math.sqrt(float(r @ r)))
            logits.append(-(1.0 - cos) / temperature)
        top = max(logits)
        weights = [math.exp(v - top) for v in logits]
        probs = [
            sum(w for w, c in zip(weights, labels, strict=True) if c == k) / sum(weights)
            for k in range(3)
        ]
        c = int(np.argmax(probs))
        s = probs[c]
        a = _slow_nonconformity(det, q, c, s)
        nearest = sorted(range(len(logits)), key=lambda j: -logits[j])
        assert result.prediction[b] == c
        assert result.confidence[b] == pytest.approx(s, rel=1e-4)
        assert result.soft_neighbor_score[b, 0] == pytest.approx(s, rel=1e-4)
        assert result.same_class_neighbors[b, 0] == sum(1 for j in nearest[:50] if labels[j] == c)
        assert result.neighbor_ids is not None
        assert result.neighbor_ids[b, 0].tolist() == nearest[:4]
        n = len(cal_a)
        assert result.nonconformity[b] == pytest.approx(a, rel=1e-4, abs=1e-4)
        assert result.p_value[b] == pytest.approx((1 + sum(1 for v in cal_a if v >= a)) / (n + 1))
        assert result.layer_p_value[b, 0] == pytest.approx(
            (1 + sum(1 for v in cal_s if v <= s)) / (n + 1)
        )
        assert result.outlier[b] == (result.p_value[b] < 0.05)


def test_flag_rate_on_in_distribution_data_is_calibrated(embedding_repo: Path) -> None:
    """Fresh in-distribution points are scored once; over 1000 random calibration/test re-splits
    of that pool the mean flag rate must be (ceil(alpha (n+1)) - 1) / (n+1) within 5 standard
    deviations (a binomial bound that over-states the variance of re-splits of one pool)."""
    det = Detector.load(embedding_repo, "emb", device="cpu")
    assert det.manifest.nonconformity.kind == "neighbor-mass"
    x, _ = _clusters(1200, seed=7)
    scores = det.uncalibrated_scores({"embedding": x})
    log_s, a = scores.log_score, det.manifest.nonconformity.apply(scores)
    rng = np.random.default_rng(0)
    n, repeats, alpha = 399, 1000, 0.05
    rates = []
    for _ in range(repeats):
        order = rng.permutation(len(x))
        calibration = Calibration.fit(det.layers, log_s[order[:n]], a[order[:n]])
        rates.append((calibration.p_value(a[order[n:]]) < alpha).mean())
    expected = expected_flag_rate(n, alpha)
    sd = math.sqrt(expected * (1 - expected) * (1 / (n + 2) + 1 / (len(x) - n)) / repeats)
    assert abs(np.mean(rates) - expected) < 5 * sd, (np.mean(rates), expected, sd)


def test_model_scores_and_forward(model_repo: tuple[Path, Path]) -> None:
    repo, run_dir = model_repo
    det = Detector.load(repo, "tiny", device="cpu")
    split = load_run(run_dir).split
    assert det.backend == "onnxruntime" and det.input_shape == (64,) and det.device == "cpu"
    assert det.reference_sizes == {"fc1": len(split.y_train), "fc2": len(split.y_train)}
    out = det.forward(split.x_test[:5])
    assert out.logits.shape == (5, 10) and out.features["fc2"].shape == (5, 16)
    result = det.score(split.x_test[:5])
    np.testing.assert_array_equal(result.prediction, out.logits.argmax(1))
    shifted = np.exp(out.logits - out.logits.max(1, keepdims=True))
    np.testing.assert_allclose(
        result.confidence, (shifted / shifted.sum(1, keepdims=True)).max(1), rtol=1e-6
    )
    assert set(result.timings) == {"forward", "neighbors", "calibrate"}
    strict = det.score(split.x_test[:50], alpha=0.5)
    loose = det.score(split.x_test[:50], alpha=0.01)
    assert strict.alpha == 0.5 and strict.outlier.sum() >= loose.outlier.sum()
    np.testing.assert_array_equal(strict.outlier, strict.p_value < 0.5)


def test_results_slice_concatenate_and_records(model_repo: tuple[Path, Path]) -> None:
    repo, run_dir = model_repo
    det = Detector.load(repo, "tiny", device="cpu")
    x = load_run(run_dir).split.x_test[:12]
    whole = det.score(x, neighbors=3)
    parts = [det.score(x[:5], neighbors=3), det.score(x[5:], neighbors=3)]
    joined = ScoreResult.concatenate(parts)
    assert len(joined) == 12 and len(whole[2:7]) == 5
    for name in ("prediction", "p_value", "soft_neighbor_score", "neighbor_ids", "outlier"):
        np.testing.assert_array_equal(getattr(joined, name), getattr(whole, name))
        np.testing.assert_array_equal(getattr(whole[2:7], name), getattr(whole, name)[2:7])
    record = whole.to_records()[0]
    assert list(record) == [
        "prediction",
        "label",
        "confidence",
        "nonconformity",
        "p_value",
        "outlier",
        "layers",
    ]
    assert record["label"] == det.class_names[record["prediction"]]
    assert [layer["name"] for layer in record["layers"]] == ["fc1", "fc2"]
    assert set(record["layers"][0]) == {
        "name",
        "soft_neighbor_score",
        "same_class_neighbors",
        "p_value",
        "neighbors",
    }
    assert len(record["layers"][0]["neighbors"]) == 3
    assert "neighbors" not in det.score(x[:1]).to_records()[0]["layers"][0]
    with pytest.raises(ValueError, match="differ"):
        ScoreResult.concatenate([whole, det.score(x)])


def test_concurrent_scores_equal_sequential(model_repo: tuple[Path, Path]) -> None:
    repo, run_dir = model_repo
    det = Detector.load(repo, "tiny", device="cpu", threads=1)
    x = load_run(run_dir).split.x_test
    batches = [x[i : i + 7] for i in range(0, 70, 7)]
    sequential = [det.score(b, neighbors=2) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda b: det.score(b, neighbors=2), batches))
    for a, b in zip(sequential, concurrent, strict=True):
        np.testing.assert_array_equal(a.p_value, b.p_value)
        np.testing.assert_array_equal(a.neighbor_ids, b.neighbor_ids)


def test_inputs_are_validated(model_repo: tuple[Path, Path], embedding_repo: Path) -> None:
    det = Detector.load(model_repo[0], "tiny", device="cpu")
    good = np.zeros((2, 64), np.float32)
    cases = [
        (np.zeros((2, 63), np.float32), r"inputs: expected shape \(B, 64\), got \(2, 63\)"),
        (np.zeros((0, 64), np.float32), "inputs: expected a non-empty batch"),
        (np.full((2, 64), np.nan, np.float32), "inputs: NaN or inf"),
        (np.full((2, 64), 1e39), "inputs: NaN or inf"),
        (np.full((2, 64), 3e38, np.float32), "inputs: sample 0 makes the model overflow"),
        (np.array([["a"] * 64]), "inputs: expected real numbers"),
        ([[0.0] * 64, [0.0] * 3], "inputs: expected"),
    ]
    for x, message in cases:
        with pytest.raises(InputError, match=message):
            det.score(x)
    with pytest.raises(InputError, match="alpha"):
        det.score(good, alpha=1.5)
    with pytest.raises(InputError, match="neighbors"):
        det.score(good, neighbors=10**6)
    with pytest.raises(InputError, match="send inputs"):
        det.score_embeddings({"fc1": np.zeros((1, 32))})
    assert len(det.score(good.astype(np.float64).tolist())) == 2
    emb = Detector.load(embedding_repo, "emb", device="cpu")
    with pytest.raises(InputError, match="embedding-only"):
        emb.score(good)
    with pytest.raises(InputError, match="unknown layer 'fc1'"):
        emb.score_embeddings({"fc1": np.zeros((1, 5))})
    with pytest.raises(InputError, match="missing layer 'embedding'"):
        emb.score_embeddings({})
    with pytest.raises(InputError, match=r"embeddings.embedding: expected shape \(B, 5\)"):
        emb.score_embeddings({"embedding": np.zeros((1, 4))})
    with pytest.raises(InputError, match="layer"):
        emb.reference_features("nope")


def _copy(source: Path, name: str, target: Path) -> Path:
    """A copy of ``source/name`` in the repository ``target``; returns the model folder."""
    shutil.copytree(source / name, target / name)
    return target / name


def _rewrite(folder: Path, file: str, change: str, value: float) -> None:
    """Set the last entry of tensor ``change`` of ``file`` to ``value`` and re-sign it in the
    manifest: a file that is self-consistent by checksum but wrong in content."""
    tensors = load_safetensors((folder / file).read_bytes())
    tensors[change] = tensors[change].clone()
    tensors[change][-1] = value
    data = save_safetensors(tensors)
    (folder / file).write_bytes(data)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["files"][file] = sha256(data)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_inconsistent_files_are_refused(
    embedding_repo: Path, model_repo: tuple[Path, Path], tmp_path: Path
) -> None:
    _rewrite(_copy(embedding_repo, "emb", tmp_path / "a"), REFERENCE_FILE, "labels", 7)
    with pytest.raises(RepositoryError, match=r"labels must lie in \[0, 3\).*got 0\.\.7"):
        Detector.load(tmp_path / "a", "emb", device="cpu")
    _rewrite(
        _copy(embedding_repo, "emb", tmp_path / "b"), CALIBRATION_FILE, "nonconformity", math.nan
    )
    with pytest.raises(RepositoryError, match=r"'nonconformity' must be .*finite"):
        Detector.load(tmp_path / "b", "emb", device="cpu")
    folder = _copy(model_repo[0], "tiny", tmp_path / "c")
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["class_names"].append("extra")
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(RepositoryError, match="output 'logits' has width 10, the manifest says 11"):
        Detector.load(tmp_path / "c", "tiny", device="cpu")


def test_reference_features_are_checked_again(embedding_repo: Path, tmp_path: Path) -> None:
    folder = _copy(embedding_repo, "emb", tmp_path)
    det = Detector.load(tmp_path, "emb", device="cpu")
    stored = load_safetensors((folder / REFERENCE_FILE).read_bytes())["features.embedding"]
    np.testing.assert_array_equal(det.reference_features("embedding"), stored.float().numpy())
    tensors = {"labels": torch.zeros(1, dtype=torch.int64), "features.embedding": stored[:1]}
    (folder / REFERENCE_FILE).write_bytes(save_safetensors(tensors))
    with pytest.raises(RepositoryError, match="sha256 does not match"):
        det.reference_features("embedding")


def test_scoring_in_batches_equals_one_call_and_checks_everything_first(
    model_repo: tuple[Path, Path], embedding_repo: Path
) -> None:
    det = Detector.load(model_repo[0], "tiny", device="cpu")
    x = load_run(model_repo[1]).split.x_test[:23]
    whole = det.score(x, neighbors=2)
    checked = det.check(x)
    parts = [det.score(rows, neighbors=2) for rows in row_chunks(checked, 5)]
    assert [len(p) for p in parts] == [5, 5, 5, 5, 3]
    assert ScoreResult.concatenate(parts).to_records() == whole.to_records()
    assert det.score(x, neighbors=2, batch_size=5).to_records() == whole.to_records()
    bad = x.copy()
    bad[17, 0] = np.nan
    with pytest.raises(InputError, match="sample 17"):
        det.score(bad, batch_size=5)  # checked whole, before any chunk is scored
    with pytest.raises(InputError, match="batch_size: expected >= 1"):
        det.score(x, batch_size=0)
    with pytest.raises(InputError, match="embedding-only"):
        Detector.load(embedding_repo, "emb", device="cpu").score(x, batch_size=5)


def test_with_features_returns_the_forward_pass_that_was_scored(
    model_repo: tuple[Path, Path], embedding_repo: Path
) -> None:
    det = Detector.load(model_repo[0], "tiny", device="cpu")
    x = load_run(model_repo[1]).split.x_test[:9]
    result = det.score(x, with_features=True)
    forward = det.forward(x)
    assert result.logits is not None and result.features is not None
    np.testing.assert_array_equal(result.logits, forward.logits)
    for layer in det.layers:
        np.testing.assert_array_equal(result.features[layer], forward.features[layer])
    assert det.score(x).features is None  # only when asked for
    rows = result[2:5]
    assert rows.features is not None and rows.logits is not None
    assert rows.features[det.layers[0]].shape[0] == 3 == rows.logits.shape[0]
    emb = Detector.load(embedding_repo, "emb", device="cpu")
    e = {"embedding": _clusters(4, seed=5)[0]}
    checked = emb.check(e)
    assert isinstance(checked, CheckedFeatures) and emb.check(checked) is checked
    scored = emb.score(checked, with_features=True)
    assert scored.logits is None and scored.features is not None
    assert scored.to_records() == emb.score_features(e).to_records()
    assert emb.score_embeddings(e).to_records() == scored.to_records()  # the documented alias
    with pytest.raises(InputError, match="has a network: send inputs"):
        det.score(checked)


def test_guarantee_options_fdr_and_refusals(embedding_repo: Path) -> None:
    det = Detector.load(embedding_repo, "emb", device="cpu")
    assert det.manifest.guarantee == "marginal" and det.manifest.delta is None
    assert det.calibration is not None and det.calibration.predicted is not None
    n = det.calibration.size
    x, _ = _clusters(300, seed=11)
    x[:30] *= 6.0  # far from every class: outliers
    default = det.score_embeddings({"embedding": x})
    assert default.guarantee == "marginal" and default.outlier_fdr is None
    np.testing.assert_array_equal(default.marginal_p_value, default.p_value)
    np.testing.assert_array_equal(default.outlier, default.p_value < default.alpha)
    assert "outlier_fdr" not in default.to_records()[0]
    pac = det.score_embeddings({"embedding": x}, guarantee="pac", alpha=0.2, delta=0.2)
    assert pac.guarantee == "pac" and pac.delta == 0.2
    assert pac.outlier.sum() <= det.score_embeddings({"embedding": x}, alpha=0.2).outlier.sum()
    by_class = det.score_embeddings({"embedding": x}, guarantee="class", alpha=0.2)
    np.testing.assert_array_equal(by_class.marginal_p_value, default.p_value)
    assert not np.array_equal(by_class.p_value, default.p_value)
    # BH runs once over the whole batch, also when it is scored in chunks.
    # (n_cal = 60: the smallest p-value is 1/61, so the batch must be short for BH to reject.)
    whole = det.score_embeddings({"embedding": x[:60]}, fdr=0.2)
    chunked = det.score_embeddings({"embedding": x[:60]}, fdr=0.2, batch_size=7)
    assert whole.outlier_fdr is not None and whole.outlier_fdr[:30].mean() > 0.5
    np.testing.assert_array_equal(chunked.outlier_fdr, whole.outlier_fdr)
    assert whole.to_records()[0]["outlier_fdr"] == bool(whole.outlier_fdr[0])
    with pytest.raises(InputError, match=rf"alpha=0.001 .* n_cal={n}"):
        det.score_embeddings({"embedding": x}, alpha=0.001)
    with pytest.raises(InputError, match=rf"guarantee='pac', but n_cal={n}"):
        det.score_embeddings({"embedding": x}, guarantee="pac", alpha=0.01)
    with pytest.raises(InputError, match="guarantee must be one of"):
        det.score_embeddings({"embedding": x}, guarantee="conditional")
    with pytest.raises(InputError, match=rf"fdr=0.001 .* n_cal={n}"):
        det.score_embeddings({"embedding": x}, fdr=0.001)
