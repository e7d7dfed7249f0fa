"""The model-folder comparison of ``make models-check``: equal within tolerances, or each
difference named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.numpy import load_file, save_file

from snnl.build.compare import FLOAT_RTOL, compare_model_folders, main
from snnl.model.manifest import CALIBRATION_FILE, MANIFEST_FILE, ONNX_FILE, REFERENCE_FILE

COMMITTED = Path(__file__).resolve().parents[3] / "models" / "digits-mlp"


def _copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(COMMITTED, tmp_path / "copy"))


def _scale_floats(path: Path, key: str, factor: float) -> None:
    tensors = load_file(str(path))
    tensors[key] = (tensors[key] * factor).astype(tensors[key].dtype)
    save_file(tensors, str(path))


def test_last_bit_differences_are_within_the_tolerances(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["layers"][0]["temperature"] *= 1 + 1e-12
    manifest["files"][CALIBRATION_FILE] = "0" * 64  # checksums are not compared
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    _scale_floats(copy / CALIBRATION_FILE, "nonconformity", 1 + 1e-9)
    assert compare_model_folders(COMMITTED, copy) == []
    assert main([str(COMMITTED), str(copy)]) == 0


def test_real_differences_are_named(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["layers"][1]["temperature"] *= 1 + 10 * FLOAT_RTOL
    manifest["version"] = "2"
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    _scale_floats(copy / CALIBRATION_FILE, "scores.fc2", 1.01)
    _scale_floats(copy / REFERENCE_FILE, "features.fc3", 1.01)
    (copy / ONNX_FILE).write_bytes((copy / ONNX_FILE).read_bytes() + b"\0")
    problems = compare_model_folders(COMMITTED, copy)
    assert [p.split(":")[0] for p in problems] == [MANIFEST_FILE] * 2 + [
        ONNX_FILE,
        REFERENCE_FILE,
        CALIBRATION_FILE,
    ]
    assert "manifest.layers[1].temperature" in problems[0] and "manifest.version" in problems[1]
    assert "features.fc3" in problems[3] and "scores.fc2" in problems[4]
    assert main([str(COMMITTED), str(copy)]) == 1
