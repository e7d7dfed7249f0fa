"""The training loop, the run directory and load_run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from snnl.core.taps import LayerTaps
from snnl.core.temperature import entanglement, stratified_subsample
from snnl.errors import InputError
from snnl.training.loop import (
    ENTANGLEMENT_POINTS,
    TEMPERATURE_LR,
    TrainSettings,
    load_run,
    prepare_run,
    train,
)
from snnl.training.run import RunConfig

HISTORY_FIELDS = {
    "epoch",
    "loss",
    "cross_entropy",
    "train_accuracy",
    "test_accuracy",
    "entanglement",
    "optimal_temperature",
    "temperature",
    "snnl",
}


def small(**overrides: object) -> TrainSettings:
    return TrainSettings(
        **{"dataset": "digits", "classes": [0, 1, 2], "epochs": 2, "seed": 0, **overrides}
    )


def test_run_directory_files(digits_run_dir: Path) -> None:
    names = {p.name for p in digits_run_dir.iterdir()}
    assert names == {
        "config.json",
        "model.safetensors",
        "split.npz",
        "history.jsonl",
        "entanglement.png",
    }
    config = json.loads((digits_run_dir / "config.json").read_text())
    assert config["arch"] == "mlp" and config["input_shape"] == [64]
    assert config["num_classes"] == 10 and config["class_names"] == [str(i) for i in range(10)]
    assert config["hidden_layers"] == ["fc1", "fc2", "fc3"] and config["classes"] is None
    assert (digits_run_dir / "entanglement.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (digits_run_dir / "history.jsonl").read_text().splitlines()
    assert len(lines) == config["epochs"] == 5
    for epoch, line in enumerate(lines, start=1):
        record = json.loads(line)
        assert set(record) == HISTORY_FIELDS and record["epoch"] == epoch
        for key in ("entanglement", "temperature", "optimal_temperature", "snnl"):
            assert set(record[key]) == {"fc1", "fc2", "fc3"}
        assert 0.0 <= record["test_accuracy"] <= 1.0
    assert json.loads(lines[-1])["train_accuracy"] > json.loads(lines[0])["train_accuracy"]


def test_load_run(digits_run_dir: Path) -> None:
    run = load_run(digits_run_dir)
    assert isinstance(run.config, RunConfig) and not run.net.training
    split = run.split
    assert split.x_train.dtype == np.float32 and split.y_train.dtype == np.int64
    assert len(split.y_train) + len(split.y_calibration) + len(split.y_test) == 1797
    # Standardization statistics come from the training split.
    np.testing.assert_allclose(
        run.net.standardize.mean.numpy(), split.x_train.mean(0), rtol=1e-5, atol=1e-6
    )
    weights = load_file(str(digits_run_dir / "model.safetensors"))
    for name, value in run.net.state_dict().items():
        assert torch.equal(weights[name], value)
    # The recorded test accuracy is the loaded net's.
    with torch.no_grad():
        predictions = run.net(torch.from_numpy(split.x_test)).argmax(1).numpy()
    last = json.loads((digits_run_dir / "history.jsonl").read_text().splitlines()[-1])
    assert (predictions == split.y_test).mean() == pytest.approx(last["test_accuracy"])


def test_history_entanglement_is_that_of_the_features(digits_run_dir: Path) -> None:
    run = load_run(digits_run_dir)
    last = json.loads((digits_run_dir / "history.jsonl").read_text().splitlines()[-1])
    probe = stratified_subsample(run.split.y_train, ENTANGLEMENT_POINTS, run.config.seed)
    with torch.no_grad(), LayerTaps(run.net, run.config.hidden_layers) as taps:
        run.net(torch.from_numpy(run.split.x_train[probe]))
    for name in run.config.hidden_layers:
        t_star, value = entanglement(taps.activations[name], run.split.y_train[probe])
        assert value == pytest.approx(last["entanglement"][name], rel=1e-6, abs=1e-9)
        assert t_star == pytest.approx(last["optimal_temperature"][name], rel=1e-4)


def test_same_seed_same_result_other_seed_differs() -> None:
    a, b = train(small()), train(small())
    assert a.history == b.history
    for (name, va), vb in zip(
        a.run.net.state_dict().items(), b.run.net.state_dict().values(), strict=True
    ):
        assert torch.equal(va, vb), name
    c = train(small(seed=1))
    assert c.history != a.history


def test_train_does_not_disturb_the_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(small(epochs=1))
    assert torch.equal(torch.rand(3), expected)


def test_prepare_then_train_and_on_epoch(tmp_path: Path) -> None:
    settings = small(arch="cnn1d", temperature="annealed", factor=-10.0)
    run = prepare_run(settings)
    assert run.config.hidden_layers == ["conv1", "conv2", "fc1"]
    seen: list[int] = []
    result = train(run, tmp_path / "run", on_epoch=lambda r: seen.append(r.epoch))
    assert seen == [1, 2]
    assert result.history[1].temperature == pytest.approx(
        dict.fromkeys(["conv1", "conv2", "fc1"], 2**-0.55)
    )
    assert load_run(tmp_path / "run").config.factor == -10.0


def test_snnl_layers_choose_the_regularized_layers() -> None:
    result = train(small(epochs=1, snnl_layers=["fc2"]))
    record = result.history[0]
    assert set(record.temperature) == set(record.snnl) == {"fc2"}
    assert set(record.entanglement) == {"fc1", "fc2", "fc3"}
    assert result.run.config.snnl_layers == ["fc2"]
    with pytest.raises(InputError, match="'fc9' is not a layer"):
        train(small(snnl_layers=["fc9"]))


def test_learned_temperature_starts_at_the_initial_temperature() -> None:
    """A learned T starts where the settings say: after one digits epoch (9 Adam steps of 0.05 on
    log(1/T)) it is within a factor e^0.45 of its start, whether that is 1 or 100."""
    for start in (1.0, 100.0):
        record = train(small(epochs=1, initial_temperature=start)).history[0]
        for value in record.temperature.values():
            assert start * math.exp(-0.5) < value < start * math.exp(0.5)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_lr_schedule(monkeypatch: pytest.MonkeyPatch, schedule: str) -> None:
    """Every Adam step's learning rate, per group: constant at lr (the temperature group at its
    own rate), or lr (1 + cos(pi t / S)) / 2 at step t of S."""
    seen: list[list[float]] = []
    step = torch.optim.Adam.step

    def record(self: torch.optim.Adam, *args: object, **kwargs: object) -> object:
        seen.append([group["lr"] for group in self.param_groups])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", record)
    run = prepare_run(small(epochs=2, lr=0.01, lr_schedule=schedule))
    train(run)
    steps = len(seen)
    assert steps == 2 * math.ceil(len(run.split.x_train) / run.config.batch_size)
    for t, (net_lr, temperature_lr) in enumerate(seen):
        decay = (1 + math.cos(math.pi * t / steps)) / 2 if schedule == "cosine" else 1.0
        assert net_lr == pytest.approx(0.01 * decay)
        assert temperature_lr == pytest.approx(TEMPERATURE_LR * decay)


def test_random_shift_trains_on_translated_images(tmp_path: Path) -> None:
    """random_shift changes what a 2-D image net trains on (another history) and is refused,
    naming the option, for samples that are not images."""
    from snnl.training.data import load_dataset

    digits = load_dataset("digits", [0, 1, 2])
    images = tmp_path / "images.npz"
    np.savez(images, x=digits.x.reshape(-1, 8, 8), y=digits.y)
    base = small(dataset=str(images), classes=None, arch="cnn2d", epochs=1)
    plain = train(base)
    shifted = train(base.model_copy(update={"random_shift": 1}))
    assert shifted.history != plain.history
    assert shifted.run.config.random_shift == 1
    with pytest.raises(InputError, match="--random-shift"):
        train(small(random_shift=1))


def test_load_run_errors(digits_run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_run(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(digits_run_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "arch": "transformer"}))
    with pytest.raises(InputError, match=r"config\.json"):
        load_run(broken)
    (broken / "config.json").write_text(json.dumps({**config, "net_kwargs": {"hidden": [8]}}))
    with pytest.raises(InputError, match=r"model\.safetensors"):
        load_run(broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(InputError, match=r"config\.json"):
        load_run(broken)
    (broken / "config.json").write_text(json.dumps(config))
    (broken / "split.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"split\.npz"):
        load_run(broken)


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        TrainSettings(dataset="digits", temperature=-1.0)
    with pytest.raises(ValueError):
        TrainSettings(dataset="digits", temperature="cold")
    with pytest.raises(InputError, match="--classes"):
        train(small(classes=[0, 99]))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_cnn2d_trains_exports_and_scores_images(tmp_path: Path) -> None:
    """The 8x8 digits as one-channel images: a cnn2d run, exported (ONNX checked against
    PyTorch) and scored from raw pixel values by the loaded model."""
    from snnl.build.from_run import export_run
    from snnl.model.detector import Detector
    from snnl.training.data import load_dataset

    digits = load_dataset("digits", [0, 1, 2])
    images = tmp_path / "images.npz"
    np.savez(images, x=digits.x.reshape(-1, 8, 8), y=digits.y)
    settings = small(dataset=str(images), classes=None, arch="cnn2d", epochs=3, lr=3e-3)
    result = train(settings, tmp_path / "run")
    assert result.run.config.input_shape == [8, 8]
    assert result.run.config.hidden_layers == ["conv1", "conv2", "fc1"]
    assert result.history[0].test_accuracy > 0.8
    manifest = export_run(tmp_path / "run", tmp_path / "models", "img", layers=["conv2", "fc1"])
    assert [layer.name for layer in manifest.layers] == ["conv2", "fc1"]
    det = Detector.load(tmp_path / "models", "img", device="cpu")
    split = result.run.split
    scores = det.score(split.x_test[:20])
    assert scores.soft_neighbor_score.shape == (20, 2)
    assert np.mean(scores.prediction == split.y_test[:20]) > 0.8
