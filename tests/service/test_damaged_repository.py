"""A damaged repository: each broken model is refused alone, with one log line naming the file;
the others serve; /readyz, /v1/models and requests to it say why. No file of a repository is ever
unpickled or run (a pickle posing as safetensors or ONNX, an ONNX custom operator, external data).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import onnx
import pytest
from _repo import clone, pickled_payload
from _server import Server, blob_embeddings, start_server
from onnx import TensorProto, helper

from snnl.model.detector import Detector

MARKER = "unpickled.marker"


def _custom_op_onnx() -> bytes:
    """A valid ONNX graph whose one node is an operator of an unknown domain (custom code)."""
    node = helper.make_node("Evil", ["input"], ["logits"], domain="com.evil")
    graph = helper.make_graph(
        [node], "evil",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def _external_data_onnx() -> bytes:
    """An ONNX graph whose weights point at a file outside the model (/etc/hostname)."""
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[64, 10])
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../../../../../etc/hostname"
    node = helper.make_node("MatMul", ["input", "w"], ["logits"])
    graph = helper.make_graph(
        [node], "outside",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])],
        initializer=[weight],
    )  # fmt: skip
    return onnx.helper.make_model(graph).SerializeToString()


def _bump_dim(manifest: dict[str, Any]) -> None:
    manifest["layers"][0]["dim"] += 1


# folder -> (how it is damaged, the file its log line and reason name, words of the reason)
DAMAGED: dict[str, tuple[str, str, str]] = {
    "tampered": ("blobs", "reference.safetensors", "sha256 does not match"),
    "missing-file": ("blobs", "calibration.safetensors", "missing"),
    "bad-manifest": ("blobs", "manifest.json", "invalid manifest"),
    "foreign-key-manifest": ("blobs", "manifest.json", "Extra inputs are not permitted"),
    "bad-onnx": ("digits-mlp", "model.onnx", "ONNX Runtime cannot load it"),
    "bad-shapes": ("blobs", "reference.safetensors", "the manifest says"),
    "unreadable": ("blobs", "manifest.json", "cannot be read"),
    "pickled-reference": ("blobs", "reference.safetensors", "not a readable safetensors"),
    "pickled-onnx": ("digits-mlp", "model.onnx", "ONNX Runtime cannot load it"),
    "custom-op-onnx": ("digits-mlp", "model.onnx", "ONNX Runtime cannot load it"),
    "external-data-onnx": ("digits-mlp", "model.onnx", "ONNX Runtime cannot load it"),
}


def _damage(repository: Path, models: Path, marker: Path) -> None:
    """Build every folder of DAMAGED in ``models`` from the good models of ``repository``."""
    blobs, mlp = repository / "blobs", repository / "digits-mlp"
    clone(blobs, models / "tampered")
    with (models / "tampered" / "reference.safetensors").open("ab") as f:
        f.write(b"tampered")
    clone(blobs, models / "missing-file")
    (models / "missing-file" / "calibration.safetensors").unlink()
    clone(blobs, models / "bad-manifest")
    (models / "bad-manifest" / "manifest.json").write_text('{"name": "bad-manifest", ')
    clone(blobs, models / "foreign-key-manifest", change=lambda m: m.update(loader="os.system"))
    clone(mlp, models / "bad-onnx", files={"model.onnx": b"\x08\x07not a model"})
    clone(blobs, models / "bad-shapes", change=_bump_dim)
    (models / "unreadable").symlink_to("unreadable")  # a loop: every look inside fails (ELOOP)
    payload = pickled_payload(marker)
    clone(blobs, models / "pickled-reference", files={"reference.safetensors": payload})
    clone(mlp, models / "pickled-onnx", files={"model.onnx": payload})
    clone(mlp, models / "custom-op-onnx", files={"model.onnx": _custom_op_onnx()})
    clone(mlp, models / "external-data-onnx", files={"model.onnx": _external_data_onnx()})


@pytest.fixture(scope="module")
def damaged(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server (no API keys) on the two good models and every damaged one."""
    root = tmp_path_factory.mktemp("damaged")
    models = root / "models"
    models.mkdir()
    for good in ("blobs", "digits-mlp"):
        clone(repository / good, models / good, seal=False)
    _damage(repository, models, root / MARKER)
    with start_server(models, root / "server.log", warmup_iterations="1") as running:
        yield running


def test_every_damaged_model_is_refused_with_one_log_line_naming_the_file(
    damaged: Server,
) -> None:
    refused = [json.loads(line) for line in damaged.log_lines() if '"model refused"' in line]
    assert sorted(line["model"] for line in refused) == sorted(DAMAGED)
    for line in refused:
        _, file, words = DAMAGED[line["model"]]
        assert f"{line['model']}/{file}" in line["error"], line
        assert words in line["error"], line
        assert line["level"] == "ERROR"


def test_readiness_and_the_model_list_say_which_model_failed_and_why(damaged: Server) -> None:
    with damaged.client() as client:
        ready = client.get("/readyz")
        listed = client.get("/v1/models").json()
    assert ready.status_code == 200
    assert ready.json()["models"] == ["blobs", "digits-mlp"]
    assert [m["name"] for m in listed["models"]] == ["blobs", "digits-mlp"]
    for statuses in (ready.json()["unavailable"], listed["unavailable"]):
        assert sorted(s["name"] for s in statuses) == sorted(DAMAGED)
        for status in statuses:
            _, file, words = DAMAGED[status["name"]]
            assert status["state"] == "UNAVAILABLE"
            assert file in status["reason"] and words in status["reason"], status


def test_requests_to_a_damaged_model_get_503_with_the_reason(damaged: Server) -> None:
    x, _ = blob_embeddings(3, seed=1)
    with damaged.client() as client:
        for name, (_, _, words) in DAMAGED.items():
            body = {"embeddings": {"embedding": x.tolist()}}
            response = client.post(f"/v1/models/{name}/score", json=body)
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"] == "30"
            detail = response.json()["detail"]
            assert detail.startswith(f"model '{name}': unavailable: ") and words in detail
            assert client.get(f"/v1/models/{name}").status_code == 503


def test_the_good_models_still_serve_correct_results(damaged: Server, repository: Path) -> None:
    x, _ = blob_embeddings(5, seed=2)
    expected = Detector.load(repository, "blobs", device="cpu").score_embeddings({"embedding": x})
    with damaged.client() as client:
        response = client.post(
            "/v1/models/blobs/score", json={"embeddings": {"embedding": x.tolist()}}
        )
        assert response.status_code == 200
        assert response.json()["results"] == expected.to_records()
        digits = client.post("/v1/models/digits-mlp/score", json={"inputs": [[0.0] * 64]})
        assert digits.status_code == 200
        assert client.get("/healthz").status_code == 200


def test_no_file_of_the_repository_was_unpickled(damaged: Server) -> None:
    """The pickles posing as reference.safetensors and model.onnx were read as data only."""
    assert not (damaged.log.parent / MARKER).exists()
    assert not any(MARKER in line for line in damaged.log_lines())


def test_an_unreadable_folder_is_refused_also_without_permission(
    repository: Path, tmp_path: Path
) -> None:
    """A folder without read permission (meaningful when not root: root reads anything)."""
    models = tmp_path / "models"
    clone(repository / "blobs", models / "blobs", seal=False)
    clone(repository / "blobs", models / "locked")
    (models / "locked").chmod(0)
    try:
        with start_server(models, tmp_path / "log", warmup_iterations="1") as s:
            statuses = httpx.get(f"{s.url}/readyz").json()["unavailable"]
    finally:
        (models / "locked").chmod(0o755)
    if os.geteuid() != 0:
        assert [(x["name"], x["state"]) for x in statuses] == [("locked", "UNAVAILABLE")]
        assert "cannot be read (Permission denied)" in statuses[0]["reason"]


def test_a_repository_where_nothing_loads_is_not_ready(repository: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    clone(repository / "blobs", models / "only")
    with (models / "only" / "reference.safetensors").open("ab") as f:
        f.write(b"tampered")
    with start_server(models, tmp_path / "log", wait_ready=False) as s, s.client() as client:
        deadline = time.monotonic() + 60
        while "no model serves" not in (ready := client.get("/readyz")).text:
            assert ready.status_code == 503
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.05)
        assert ready.status_code == 503
        assert "only: " in ready.json()["detail"] and "sha256" in ready.json()["detail"]
        assert client.get("/healthz").status_code == 200


def test_repository_control_is_off_without_api_keys(damaged: Server) -> None:
    """An open service (no keys) cannot be emptied by whoever reaches it."""
    with damaged.client() as client:
        for path in ("/v1/admin/reload", "/v2/repository/models/blobs/unload"):
            response = client.post(path)
            assert response.status_code == 403
            body = response.json()  # {"error": ...} under /v2, as v2 clients expect
            assert "SNNL_API_KEYS" in body.get("detail", body.get("error", ""))
