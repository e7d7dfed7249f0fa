"""``snnl train`` through the installed console script, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

SNNL = str(Path(sys.executable).with_name("snnl"))
HISTORY_FIELDS = {"epoch", "loss", "train_accuracy", "test_accuracy", "entanglement", "temperature"}


def snnl(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [SNNL, *args], capture_output=True, text=True, timeout=300, env=env, check=False
    )


def train(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return snnl(
        "train",
        "--data",
        "digits",
        "--classes",
        "1,3,5,7",
        "--epochs",
        "3",
        "--out",
        str(out),
        *extra,
    )


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("cli_train")
    first = train(root / "a")
    assert first.returncode == 0, first.stderr
    second = train(root / "b")
    assert second.returncode == 0, second.stderr
    return root / "a", root / "b", first.stdout


def test_writes_the_run_directory(two_runs: tuple[Path, Path, str]) -> None:
    run, _, stdout = two_runs
    for name in (
        "config.json",
        "model.safetensors",
        "split.npz",
        "history.jsonl",
        "entanglement.png",
    ):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["classes"] == [1, 3, 5, 7] and config["class_names"] == ["1", "3", "5", "7"]
    assert config["num_classes"] == 4 and config["epochs"] == 3
    with np.load(run / "split.npz", allow_pickle=False) as split:
        assert set(np.unique(split["y_train"])) == {0, 1, 2, 3}
    records = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for record in records:
        assert set(record) >= HISTORY_FIELDS
        assert set(record["entanglement"]) == set(record["temperature"]) == {"fc1", "fc2", "fc3"}
    # One line per epoch on stdout with the loss, accuracies and each layer's entanglement.
    epoch_lines = [line for line in stdout.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 3
    assert f"test_accuracy {records[-1]['test_accuracy']:.4f}" in epoch_lines[-1]
    assert "entanglement fc1 " in epoch_lines[-1] and ", fc3 " in epoch_lines[-1]
    assert "T* " in epoch_lines[-1]
    assert "subsample of 300 training points" in stdout


def test_same_seed_same_run(two_runs: tuple[Path, Path, str]) -> None:
    a, b, _ = two_runs
    assert (a / "history.jsonl").read_text() == (b / "history.jsonl").read_text()
    assert (a / "config.json").read_text() == (b / "config.json").read_text()
    weights_a, weights_b = (
        load_file(str(a / "model.safetensors")),
        load_file(str(b / "model.safetensors")),
    )
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--data", "missing.npz"], "missing.npz"),
        (["--data", "digits", "--temperature", "warm"], "--temperature"),
        (["--data", "BADFILE"], "missing key 'y'"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 2), dtype=np.float32))  # no labels
    args = [str(bad) if a == "BADFILE" else a for a in args]
    result = snnl("train", *args, "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--classes", "0,42"], "[42]"),
        (["--classes", "a,b"], "--classes"),
        (["--epochs", "x"], "--epochs"),
        (["--epochs", "-1"], "--epochs"),
        (["--epochs", "0"], "--epochs"),
        (["--seed", "-3"], "--seed"),
        (["--batch-size", "-5"], "--batch-size"),
        (["--temperature", "0"], "--temperature"),
        (["--initial-temperature", "0"], "--initial-temperature"),
        (["--channels", "a,b"], "--channels"),
        (["--channels", "8,8"], "the mlp has no convolutions"),
        (["--arch", "cnn2d", "--channels", "8"], "takes 2 widths"),
        (["--arch", "cnn1d", "--hidden", "8,8"], "1 dense width"),
        (["--hidden", "64,0"], "--hidden"),
        (["--initial-temperature", "inf"], "--initial-temperature"),
        (["--batch-size", "1"], "--batch-size"),
        (["--lr", "0"], "--lr"),
        (["--factor", "nan"], "--factor"),
        (["--test-fraction", "0.9"], "fraction"),
        (["--distance", "manhattan"], "--distance"),
        (["--lr-schedule", "step"], "--lr-schedule"),
        (["--random-shift", "-1"], "--random-shift"),
        (["--random-shift", "2"], "--random-shift: translates 2-D images"),
        (["--threads", "0"], "--threads"),
        (["--snnl-layers", "fc1,conv9"], "conv9"),
        (["--out", "NOTADIR"], "Not a directory"),
    ],
)
def test_bad_options_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    """The same dispatcher in-process (fast): one line on stderr, exit 2, nothing written."""
    from snnl.cli import main

    (tmp_path / "file").write_text("")
    args = [str(tmp_path / "file" / "run") if a == "NOTADIR" else a for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "run")]
    try:
        code = main(["train", "--data", "digits", *args])
    except SystemExit as exit_:  # argparse rejects a malformed value itself
        code = exit_.code
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], captured.err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], {}),
        (["--hidden", "32,16"], {"hidden": [32, 16]}),
        (["--arch", "cnn1d", "--channels", "8,16", "--hidden", "24"],
         {"channels": [8, 16], "hidden": 24}),
        (["--arch", "cnn2d", "--channels", "32,64", "--hidden", "256"],
         {"channels": [32, 64], "hidden": [256]}),
    ],
)  # fmt: skip
def test_widths_reach_the_net(tmp_path: Path, args: list[str], expected: dict[str, object]) -> None:
    """--channels / --hidden become the run's net_kwargs, and the net built from them has
    those widths."""
    from snnl.cli import build_parser
    from snnl.cli.train import settings_from_args
    from snnl.training.nets import build_net

    parsed = build_parser().parse_args(
        ["train", "--data", "digits", *args, "--out", str(tmp_path / "run")]
    )
    settings = settings_from_args(parsed)
    assert settings.net_kwargs == expected
    shape = (8, 8) if settings.arch == "cnn2d" else (64,)
    net = build_net(settings.arch, shape, 3, **settings.net_kwargs)
    layers = {name: getattr(net, name)[0] for name in net.hidden_layers}
    convs = [m.out_channels for n, m in layers.items() if n.startswith("conv")]
    dense = [m.out_features for n, m in layers.items() if n.startswith("fc")]
    if "channels" in expected:
        assert convs == expected["channels"]
    if "hidden" in expected:
        hidden = expected["hidden"]
        assert dense == (hidden if isinstance(hidden, list) else [hidden])
