"""train -> export -> score (and index -> score) through the real ``snnl`` command."""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest

from snnl.cli import main
from tests.cli._process import run_snnl as _snnl


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    done = _snnl("train", "--data", "digits", "--epochs", "1", "--out", "run", cwd=root)
    assert done.returncode == 0, done.stderr
    done = _snnl(
        "export", "run", "--repository", "models", "--name", "digits", "--created",
        "2024-01-01T00:00:00Z", "--reference-dtype", "float16", cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "exported digits version 1" in done.stdout
    split = np.load(root / "run" / "split.npz")
    np.savez(root / "test.npz", x=split["x_test"][:40])
    return root


def test_score_writes_one_json_object_per_sample(workdir: Path) -> None:
    done = _snnl("score", "--repository", "models", "--model", "digits", "test.npz", cwd=workdir)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 40
    assert set(records[0]) == {
        "prediction",
        "label",
        "confidence",
        "nonconformity",
        "p_value",
        "outlier",
        "layers",
    }
    assert [layer["name"] for layer in records[0]["layers"]] == ["fc1", "fc2", "fc3"]
    assert "scored 40 samples" in done.stderr
    done = _snnl(
        "score", "--repository", "models", "--model", "digits", "test.npz", "--out", "out.jsonl",
        "--neighbors", "2", "--alpha", "0.2", "--batch-size", "7", cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    lines = (workdir / "out.jsonl").read_text().splitlines()
    assert len(lines) == 40 and len(json.loads(lines[0])["layers"][0]["neighbors"]) == 2
    assert [json.loads(line)["prediction"] for line in lines] == [r["prediction"] for r in records]


def test_index_then_score_embeddings(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In process (the same code as the command, without another interpreter start)."""
    monkeypatch.chdir(workdir)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=200)
    x = rng.normal(size=(200, 4)).astype(np.float32) + y[:, None]
    np.savez(workdir / "emb.npz", x=x, y=y)
    assert main(["index", "emb.npz", "--repository", "models", "--name", "enc"]) == 0
    captured = capsys.readouterr()
    assert "indexed enc" in captured.out and "warning: no --calibration file" in captured.err
    assert main(["score", "--repository", "models", "--model", "enc", "emb.npz"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 200 and json.loads(lines[0])["layers"][0]["name"] == "embedding"
    score = ["score", "--repository", "models", "--model", "enc", "emb.npz", "--alpha", "0.2"]
    assert main([*score, "--guarantee", "pac", "--delta", "0.2", "--fdr", "0.1"]) == 0
    out, err = capsys.readouterr()
    first = json.loads(out.splitlines()[0])
    assert isinstance(first["outlier_fdr"], bool) and "at alpha 0.2 (pac)" in err
    # 31 calibration rows: alpha 0.01 < 1/32 is refused, one line naming the value and n_cal.
    assert main([*score[:-2], "--alpha", "0.01"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "alpha=0.01 is below" in err and "n_cal=31" in err
    assert main(["index", "emb.npz", "--repository", "models", "--name", "enc", "--force",
                 "--alpha", "0.01"]) == 2  # fmt: skip
    assert "n_cal=31" in capsys.readouterr().err


SCORE = ("score", "--repository", "models", "--model")


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, (*SCORE, "digits", "absent.npz"), "no such data file"),
        ({"z": np.zeros((2, 64), np.float32)}, (*SCORE, "digits", "bad.npz"), "missing key 'x'"),
        (
            {"x": np.zeros((2, 63), np.float32)},
            (*SCORE, "digits", "bad.npz"),
            "expected shape (B, 64)",
        ),
        ({"x": np.float32(1.0)}, (*SCORE, "digits", "bad.npz"), "expected a non-empty batch"),
    ],
)
def test_errors_are_one_line_and_exit_2(
    workdir: Path, setup: dict[str, np.ndarray] | None, args: tuple[str, ...], message: str
) -> None:
    if setup is not None:
        np.savez(workdir / "bad.npz", **setup)
    done = _snnl(*args, cwd=workdir)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((*SCORE, "digits", "garbage.npz"), "not an .npz archive"),
        ((*SCORE, "nope", "test.npz"), "no model 'nope'"),
        ((*SCORE, "digits", "test.npz", "--neighbors", "-1"), "neighbors: expected"),
        (("export", "models", "--repository", "models", "--name", "x"), "config.json not found"),
        (("export", "run", "--repository", "models", "--name", "../x"), "is invalid"),
        (
            ("export", "run", "--repository", "models", "--name", "x", "--temperature-rule", "hot"),
            "temperature rule",
        ),
        (("index", "test.npz", "--repository", "models", "--name", "x"), "missing key 'y'"),
        ((*SCORE, "digits", "short.npy"), "inputs: expected shape (B, 64)"),
        ((*SCORE, "digits", "objects.npy"), "holds an object array"),
        (
            (
                "export",
                "run",
                "--repository",
                "models",
                "--name",
                "x",
                "--calibration-fraction",
                "nan",
            ),
            "--calibration-fraction nan",
        ),
    ],
)
def test_more_errors_in_process(
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    message: str,
) -> None:
    monkeypatch.chdir(workdir)
    (workdir / "garbage.npz").write_bytes(b"not a zip")
    np.save(workdir / "short.npy", np.zeros((2, 63), np.float32))
    np.save(workdir / "objects.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert message in err


def test_score_takes_an_npy_of_samples_as_an_npz_with_x(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(workdir)
    np.save(workdir / "test.npy", np.load(workdir / "test.npz")["x"])
    assert main([*SCORE, "digits", "test.npz"]) == 0
    from_npz = capsys.readouterr().out
    assert main([*SCORE, "digits", "test.npy"]) == 0
    from_npy = capsys.readouterr().out
    assert from_npy == from_npz and len(from_npy.splitlines()) == 40


def test_bad_sample_is_named_by_its_row_in_the_file_before_any_output(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(workdir)
    x = np.zeros((12, 64), np.float32)
    x[9, 3] = np.nan
    np.savez(workdir / "nan.npz", x=x)
    assert main([*SCORE, "digits", "nan.npz", "--batch-size", "4"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "nan.npz: inputs: NaN or inf" in captured.err and "in sample 9" in captured.err


def test_export_refuses_to_replace_a_model_without_force(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(workdir)
    manifest = workdir / "models" / "digits" / "manifest.json"
    before = manifest.read_bytes()
    export = ["export", "run", "--repository", "models", "--name", "digits", "--device", "cpu"]
    assert main(export) == 2
    err = capsys.readouterr().err
    assert "models/digits exists; add --force to replace it" in err
    assert manifest.read_bytes() == before
    assert main([*export, "--force", "--created", "2025-01-01T00:00:00Z"]) == 0
    assert "2025-01-01T00:00:00Z" in manifest.read_text()


def test_export_one_sided_layers(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(workdir)
    export = ["export", "run", "--repository", "models", "--device", "cpu"]
    floors = {}
    for q in ("0.05", "0.5"):
        assert main([*export, "--name", f"q{q}", "--one-sided", "fc1", "--floor-quantile", q]) == 0
        manifest = json.loads((workdir / "models" / f"q{q}" / "manifest.json").read_text())
        terms = manifest["nonconformity"]["terms"]
        assert [t["floor"] is not None for t in terms] == [t["layer"] == "fc1" for t in terms]
        floors[q] = [t["floor"] for t in terms if t["layer"] == "fc1"]
    assert all(low < high for low, high in zip(floors["0.05"], floors["0.5"], strict=True))
    capsys.readouterr()
    for bad, message in [
        (["--one-sided", "fc1,fc2,fc3"], "--one-sided fc1,fc2,fc3: at least one served layer"),
        (["--one-sided", "fc1", "--floor-quantile", "1.5"], "--floor-quantile: expected 0 <= q"),
        (["--floor-quantile", "0.05"], "--floor-quantile: only means something with --one-sided"),
    ]:
        assert main([*export, "--name", "bad", *bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    assert not (workdir / "models" / "bad").exists()


def test_export_term_weights(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(workdir)
    export = ["export", "run", "--repository", "models", "--device", "cpu"]
    weights = ["--layer-weights", "fc2=2", "--geometry-weights", "cosine=0.5,euclidean=3"]
    assert main([*export, "--name", "weighted", *weights]) == 0
    manifest = json.loads((workdir / "models" / "weighted" / "manifest.json").read_text())
    terms = manifest["nonconformity"]["terms"]
    assert {(t["layer"], t["distance"]): t["weight"] for t in terms} == {
        ("fc1", "cosine"): 0.5, ("fc1", "euclidean"): 3.0,
        ("fc2", "cosine"): 1.0, ("fc2", "euclidean"): 6.0,
        ("fc3", "cosine"): 0.5, ("fc3", "euclidean"): 3.0,
    }  # fmt: skip
    capsys.readouterr()
    for bad, message in [
        (["--layer-weights", "fc9=2"], "--layer-weights: ['fc9'] not among ['fc1', 'fc2', 'fc3']"),
        (["--layer-weights", "fc1=0"], "--layer-weights: fc1=0.0: expected a finite weight > 0"),
        (["--layer-weights", "fc1"], "expected NAME=WEIGHT pairs, got 'fc1'"),
        (["--geometry-weights", "cosine=x"], "expected NAME=WEIGHT pairs, got 'cosine=x'"),
        (["--geometry-weights", "cosine=1,cosine=2"], "cosine given twice"),
        (["--geometry-weights", "l2=2"], "--geometry-weights: ['l2'] not among"),
    ]:
        try:
            code = main([*export, "--name", "bad", *bad])
        except SystemExit as exit_:  # argparse rejects a malformed pair itself
            code = exit_.code
        assert code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    assert not (workdir / "models" / "bad").exists()


def test_score_draws_a_progress_bar_only_on_a_terminal(workdir: Path) -> None:
    """Without a terminal stderr holds only the summary; with one (a pseudo-terminal) tqdm
    draws its bar there."""
    plain = _snnl(*SCORE, "digits", "test.npz", "--batch-size", "8", cwd=workdir)
    assert plain.returncode == 0 and plain.stderr.strip().startswith("scored 40 samples")
    assert "\r" not in plain.stderr
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    try:
        done = subprocess.run(
            [sys.executable, "-m", "snnl.cli", *SCORE, "digits", "test.npz", "--out", "o.jsonl"],
            cwd=workdir,
            stderr=terminal,
            stdout=subprocess.DEVNULL,
            timeout=120,
        )
        os.close(terminal)
        drawn = b""
        while chunk := _read(controller):
            drawn += chunk
    finally:
        os.close(controller)
    assert done.returncode == 0
    assert b"score: 100%" in drawn and b"40/40" in drawn


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # the terminal's other end is closed: everything was read
        return b""
