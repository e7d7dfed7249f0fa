"""``snnl serve --shards 2 --ray-address ADDR``: a real server whose reference rows live in shard
actors of a running Ray cluster scores as the unsharded model, and a lost shard turns /readyz and
scoring into 503s that name it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from snnl.model.detector import Detector
from tests.service._server import start_server

ray = pytest.importorskip("ray")

REPOSITORY = Path(__file__).resolve().parents[2] / "models"


def _shard_actors() -> list[str]:
    names = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"] for a in names if a["name"].startswith("snnl-shard-"))


def test_sharded_server_scores_as_local_and_a_lost_shard_is_a_503(
    ray_cluster: str, tmp_path: Path
) -> None:
    x = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
    expected = Detector.load(REPOSITORY, "digits-mlp", device="cpu").score(x).to_records()
    before = set(_shard_actors())
    try:
        with start_server(
            REPOSITORY, tmp_path / "log", shards="2", ray_address=ray_cluster, device="cpu"
        ) as server:
            shards = sorted(set(_shard_actors()) - before)
            assert len(shards) == 2  # named, detached: shared by every replica on the cluster
            with server.client() as http:
                got = http.post("/v1/models/digits-mlp/score", json={"inputs": x.tolist()})
                assert got.status_code == 200, got.text
                for record, want in zip(got.json()["results"], expected, strict=True):
                    assert record["prediction"] == want["prediction"]
                    assert record["p_value"] == pytest.approx(want["p_value"], rel=1e-6)
                    for layer, want_layer in zip(record["layers"], want["layers"], strict=True):
                        assert layer["same_class_neighbors"] == want_layer["same_class_neighbors"]
                        assert layer["soft_neighbor_score"] == pytest.approx(
                            want_layer["soft_neighbor_score"], rel=1e-6
                        )
                ray.kill(ray.get_actor(shards[0], namespace="snnl"), no_restart=True)
                ready = http.get("/readyz")
                assert ready.status_code == 503
                assert "digits-mlp" in ready.json()["detail"] and "shard" in ready.json()["detail"]
                failed = http.post("/v1/models/digits-mlp/score", json={"inputs": x.tolist()})
                assert failed.status_code == 503
                assert "unavailable" in failed.json()["detail"]
                assert failed.headers["Retry-After"] == "1"
    finally:
        for name in set(_shard_actors()) - before:
            ray.kill(ray.get_actor(name, namespace="snnl"), no_restart=True)
