"""User errors name the flag and the problem in one line on stderr, exit 2."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from snnl.cli import main

MODELS = Path(__file__).resolve().parents[2] / "models"
SCORE = ("score", "--repository", str(MODELS), "--model", "digits-mlp")


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse rejects a malformed value itself
        code = exit_.code
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_an_unknown_dataset_names_the_flag_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "x.npz")
    line = _error(["data", "--dataset", "nosuch", "--out", out], capsys)
    assert "--dataset" in line and "'nosuch'" in line and "--data " not in line
    line = _error(["train", "--data", "nosuch", "--out", str(tmp_path / "run")], capsys)
    assert "--data" in line and "'nosuch'" in line


def test_a_text_file_named_npz_is_not_called_pickled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "notes.npz"
    text.write_text("just some text\n")
    line = _error([*SCORE, str(text)], capsys)
    assert "not an .npz archive" in line and "pickle" not in line
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([{"a": 1}], dtype=object))
    assert "object array" in _error([*SCORE, str(objects)], capsys)


@pytest.mark.parametrize("command", ["score", "evaluate"])
def test_a_missing_repository_is_named_as_such(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "x.npz"
    np.savez(data, x=np.zeros((2, 64), np.float32), y=np.zeros(2, np.int64))
    missing = tmp_path / "nonexistent"
    argv = [command, "--repository", str(missing), "--model", "digits-mlp"]
    argv += [str(data)] if command == "score" else ["--id", str(data), "--ood", str(data)]
    assert _error(argv, capsys).endswith(f"--repository {missing}: no such folder")


def test_a_busy_port_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = _error(["serve", "--repository", str(MODELS), "--port", str(port)], capsys)
    assert line.startswith(f"snnl serve: error: --port {port}: cannot listen on 127.0.0.1")


def test_image_datasets_without_their_package_are_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.metadata

    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    out = str(tmp_path / "x.npz")
    monkeypatch.setenv("SNNL_FASHION_MNIST_DIR", str(tmp_path))
    line = _error(["data", "--dataset", "fashion-mnist", "--out", out], capsys)
    assert "apt-get install dataset-fashion-mnist" in line
    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    line = _error(["train", "--data", "mnist", "--out", str(tmp_path / "run")], capsys)
    assert "pip install 'snnl[images]'" in line
