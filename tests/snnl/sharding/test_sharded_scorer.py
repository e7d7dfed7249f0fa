"""Sharded scoring on a local Ray cluster: equal to the local scorer, and faults never give a
wrong answer (a killed shard fails requests with UnavailableError until Ray has restarted it)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from snnl.build.from_embeddings import index_embeddings
from snnl.errors import InputError, UnavailableError
from snnl.model.detector import Detector
from snnl.scoring.results import ScoreResult
from snnl.sharding import load_sharded_detector

ray = pytest.importorskip("ray")

REPOSITORY = Path(__file__).resolve().parents[3] / "models"
EXACT = ("prediction", "same_class_neighbors", "neighbor_ids", "outlier")
CLOSE = ("soft_neighbor_score", "p_value", "layer_p_value", "confidence")


@pytest.fixture(scope="module")
def embedding_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedding-only model (3 overlapping classes in 6-d, 500 rows, neighbor-mass terms of
    both geometries): its prediction comes from the merged masses of every shard."""
    root = tmp_path_factory.mktemp("sharded")
    rng = np.random.default_rng(0)
    centers = np.random.default_rng(1).normal(size=(3, 6))
    y = rng.integers(0, 3, size=500)
    x = (centers[y] + rng.normal(size=(500, 6))).astype(np.float32)
    np.savez(root / "emb.npz", x=x, y=y)
    index_embeddings(root / "emb.npz", root / "repo", "emb", created="2024-01-01T00:00:00Z")
    return root / "repo"


def _assert_same(sharded: ScoreResult, local: ScoreResult) -> None:
    for name in EXACT:
        np.testing.assert_array_equal(getattr(sharded, name), getattr(local, name), err_msg=name)
    for name in CLOSE:
        np.testing.assert_allclose(
            getattr(sharded, name), getattr(local, name), rtol=1e-6, atol=0, err_msg=name
        )
    # a sum of standardized masses, which may cancel to about 0: its terms are compared
    # relative to 1e-6 in test_sharded_masses_equal_local
    np.testing.assert_allclose(sharded.nonconformity, local.nonconformity, rtol=1e-6, atol=1e-5)


@pytest.fixture(scope="module")
def digits(ray_cluster: str) -> tuple[Detector, Detector]:
    """The committed digits model, local and in 2 shards."""
    local = Detector.load(REPOSITORY, "digits-mlp", device="cpu")
    return local, load_sharded_detector(REPOSITORY, "digits-mlp", device="cpu", shards=2)


@pytest.fixture(scope="module")
def emb(ray_cluster: str, embedding_repo: Path) -> tuple[Detector, Detector]:
    """The embedding-only model, local and in 3 shards."""
    local = Detector.load(embedding_repo, "emb", device="cpu")
    return local, load_sharded_detector(embedding_repo, "emb", device="cpu", shards=3)


def test_sharded_model_scores_equal_local(digits: tuple[Detector, Detector]) -> None:
    local, sharded = digits
    x = np.random.default_rng(0).normal(scale=2.0, size=(48, 64)).astype(np.float32)
    assert sharded.reference_sizes == local.reference_sizes
    np.testing.assert_array_equal(sharded.reference_labels, local.reference_labels)
    _assert_same(sharded.score(x, neighbors=60), local.score(x, neighbors=60))
    _assert_same(sharded.score(x[:1]), local.score(x[:1]))
    assert sharded.unavailable() is None


def test_sharded_embedding_model_scores_equal_local(emb: tuple[Detector, Detector]) -> None:
    local, sharded = emb
    x = {"embedding": np.random.default_rng(7).normal(scale=1.5, size=(40, 6)).astype(np.float32)}
    _assert_same(sharded.score_embeddings(x, neighbors=5), local.score_embeddings(x, neighbors=5))


def test_sharded_masses_equal_local(emb: tuple[Detector, Detector]) -> None:
    local, sharded = emb
    features = {"embedding": np.random.default_rng(8).normal(size=(40, 6)).astype(np.float32)}
    expected = local.uncalibrated_scores(features)
    scores = sharded.uncalibrated_scores(features)
    assert scores.log_mass.shape == expected.log_mass.shape == (40, 2)
    np.testing.assert_allclose(scores.log_mass, expected.log_mass, rtol=1e-6, atol=0)
    np.testing.assert_allclose(scores.log_score, expected.log_score, rtol=1e-6, atol=0)


def test_bad_sharding_arguments_are_refused(ray_cluster: str) -> None:
    with pytest.raises(InputError, match="shards: expected an integer >= 1"):
        load_sharded_detector(REPOSITORY, "digits-mlp", device="cpu", shards=-1)
    with pytest.raises(InputError, match="shards: expected at most"):
        load_sharded_detector(REPOSITORY, "digits-mlp", device="cpu", shards=10**6)
    with pytest.raises(InputError, match="compute_dtype: expected one of"):
        load_sharded_detector(REPOSITORY, "digits-mlp", shards=2, compute_dtype="int8")  # type: ignore[arg-type]


def test_a_lost_shard_makes_requests_and_readiness_fail(
    ray_cluster: str, embedding_repo: Path
) -> None:
    det = load_sharded_detector(embedding_repo, "emb", device="cpu", shards=2)
    emb = {"embedding": np.ones((4, 6), dtype=np.float32)}
    det.score_embeddings(emb)
    ray.kill(det._scorer.actors[1], no_restart=True)  # gone for good: never restarted
    with pytest.raises(UnavailableError, match=r"shard 2 of 2 \(rows \d+\.\.\d+\) is unavailable"):
        det.score_embeddings(emb)
    reason = det.unavailable()
    assert reason is not None and "shard 2 of 2" in reason


def test_a_killed_shard_under_load_restarts_and_no_answer_is_wrong(
    emb: tuple[Detector, Detector],
) -> None:
    local, det = emb
    x = {"embedding": np.random.default_rng(3).normal(size=(16, 6)).astype(np.float32)}
    expected = local.score_embeddings(x)
    outcomes: list[ScoreResult | UnavailableError] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                outcomes.append(det.score_embeddings(x))
            except UnavailableError as err:
                outcomes.append(err)

    victim = det._scorer.actors[0]
    pid = _pid(victim)
    worker = threading.Thread(target=load)
    worker.start()
    try:
        while len(outcomes) < 5:
            time.sleep(0.01)
        ray.kill(victim, no_restart=False)  # Ray restarts it; it reloads its rows
        deadline = time.monotonic() + 120
        while _pid(victim) in (pid, None):
            assert time.monotonic() < deadline, "the killed shard was not restarted"
            time.sleep(0.1)
        restarted = len(outcomes)
        while len(outcomes) < restarted + 5:
            time.sleep(0.01)
    finally:
        stop.set()
        worker.join(timeout=60)
    results = [o for o in outcomes if isinstance(o, ScoreResult)]
    failures = [o for o in outcomes if isinstance(o, UnavailableError)]
    assert len(results) >= 10
    for result in results:
        _assert_same(result, expected)
    for failure in failures:
        assert "shard 1 of 3" in str(failure)
    assert det.unavailable() is None
    _assert_same(det.score_embeddings(x), expected)


def _pid(actor: object) -> int | None:
    """The actor's process id, or None while it is unavailable."""
    try:
        return int(ray.get(actor.describe.remote(), timeout=10)["pid"])  # type: ignore[attr-defined]
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None


def test_unsharded_snnl_does_not_import_ray() -> None:
    code = (
        "import sys; from snnl.model.detector import Detector; "
        f"Detector.load({str(REPOSITORY)!r}, 'digits-mlp', device='cpu'); "
        "assert 'ray' not in sys.modules, 'ray was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
