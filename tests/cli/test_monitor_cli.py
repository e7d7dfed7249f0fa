"""``snnl monitor`` on the committed digits-mlp model: replay, alarms, plot, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from snnl.cli import main, monitor
from snnl.monitoring import drift

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """day1.npz: 600 digits images (in distribution); day2.npz: 300 uniform-noise images."""
    root = tmp_path_factory.mktemp("monitor")
    x = load_digits().data.astype(np.float32)
    np.savez(root / "day1.npz", x=x[:600])
    noise = np.random.default_rng(0).uniform(0, 16, size=(300, 64)).astype(np.float32)
    np.savez(root / "day2.npz", x=noise)
    np.savez(root / "wrong.npz", x=np.zeros((5, 10), dtype=np.float32))
    return root


def _monitor(*args: str | Path) -> list[str]:
    return ["monitor", "--repository", str(MODELS), "--model", "digits-mlp", *map(str, args)]


def test_replay_prints_where_the_alarm_fires_and_plots(
    files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = files / "out" / "drift.png"
    args = _monitor(files / "day1.npz", files / "day2.npz", "--plot", plot, "--batch-size", "128")
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    alarms = [line for line in out if line.startswith("alarm ")]
    assert alarms, out
    first = alarms[0]
    # the first alarm fires in the noise file, soon after it starts, and dates the change to it
    sample = int(first.split("sample ")[1].split(" ")[0])
    assert 600 <= sample < 650, first
    assert "(day2.npz row " in first
    change_point = int(first.split("change point ")[1].split(" ")[0])
    assert 595 <= change_point <= sample, first
    # one line per episode: the noise goes on, so the restarted statistic keeps alarming
    assert len(alarms) == 1
    more = next(line for line in out if line.startswith("  and "))
    count = 1 + int(more.split()[1])
    assert "more alarms as the shift went on, the last at sample " in more
    assert "(day2.npz row 2" in more
    summary = next(line for line in out if line.startswith("replayed"))
    assert summary.startswith("replayed 900 samples from 2 files with digits-mlp version ")
    assert f": {count} alarms" in summary
    assert "alarms per layer: fc1 " in summary
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_in_distribution_data_raises_no_alarm(
    files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_monitor(files / "day1.npz")) == 0
    out = capsys.readouterr().out
    assert "alarm 1" not in out
    assert "replayed 600 samples from 1 files" in out and ": 0 alarms" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["missing.npz"], "missing.npz"),
        (["wrong.npz"], "wrong.npz: "),
        (["day1.npz", "--ert", "100"], "--ert: expected >= 10000"),
        (["day1.npz", "--calibration-risk", "0.5"], "--calibration-risk: expected"),
        (["day1.npz", "--plot", "out.jpg"], "--plot: expected a .png"),
        (["day1.npz", "--batch-size", "0"], "--batch-size must be >= 1"),
    ],
)
def test_errors_are_one_line_and_exit_2(
    files: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(files / a) if a.endswith(".npz") and a != "out.jpg" else a for a in extra]
    assert main(_monitor(*args)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snnl monitor: error: "), lines
    assert message in lines[0]


def test_parser_defaults_mirror_the_library() -> None:
    assert monitor.DEFAULT_ERT == drift.DEFAULT_ERT
    assert monitor.DEFAULT_CALIBRATION_RISK == drift.DEFAULT_CALIBRATION_RISK
