"""The run directory written by ``snnl train`` and read by ``snnl export`` (no pickle).

RUN_DIR/config.json        RunConfig as JSON (architecture, data, split and training settings)
RUN_DIR/model.safetensors  net.state_dict(), including the standardization buffers
RUN_DIR/split.npz          x_/y_ train, calibration, test (raw float32 samples, int64 labels)
RUN_DIR/history.jsonl      one object per epoch (written by snnl.training.loop)
RUN_DIR/entanglement.png   entanglement per layer over epochs (written by snnl.training.loop)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from snnl.errors import InputError
from snnl.training.data import Split
from snnl.training.nets import Net, build_net

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SPLIT_FILE = "split.npz"
HISTORY_FILE = "history.jsonl"
PLOT_FILE = "entanglement.png"

TemperatureSetting = (
    Literal["learned", "annealed"] | Annotated[float, Field(gt=0, allow_inf_nan=False)]
)

DEFAULT_FACTOR = 1.0
DEFAULT_TEMPERATURE: TemperatureSetting = "learned"


class TrainSettings(BaseModel):
    """What a user chooses for a training run (the options of ``snnl train``).

    ``snnl_layers``: the submodules whose SNNL enters the loss (None: all hidden layers).
    ``initial_temperature``: where a learned temperature starts (unused by the other modes).
    ``lr_schedule``: ``constant`` keeps Adam's step at ``lr``; ``cosine`` lowers every group's
    step along half a cosine, lr_t = lr (1 + cos(pi t / S)) / 2 over the S steps of training.
    ``random_shift``: 2-D images only; each training sample is translated by independent
    integer offsets in [-s, s] along height and width, the uncovered border filled with 0.
    """

    model_config = ConfigDict(extra="forbid")

    dataset: str
    classes: list[int] | None = None
    arch: Literal["mlp", "cnn1d", "cnn2d"] = "mlp"
    net_kwargs: dict[str, Any] = Field(default_factory=dict)
    snnl_layers: list[str] | None = Field(default=None, min_length=1)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)  # numpy/scikit-learn seed range
    factor: float = Field(default=DEFAULT_FACTOR, allow_inf_nan=False)
    temperature: TemperatureSetting = DEFAULT_TEMPERATURE
    initial_temperature: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    distance: Literal["cosine", "euclidean"] = "cosine"
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=128, ge=2)
    lr: float = Field(default=1e-3, gt=0, allow_inf_nan=False)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    random_shift: int = Field(default=0, ge=0)
    calibration_fraction: float = Field(default=0.15, gt=0, lt=1)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)


class RunConfig(TrainSettings):
    """Everything needed to rebuild the net and to repeat the run (config.json): the settings
    plus what follows from the data and the net."""

    input_shape: list[int] = Field(min_length=1)
    num_classes: int = Field(ge=2)
    class_names: list[str]
    hidden_layers: list[str] = Field(min_length=1)


@dataclass
class Run:
    """A loaded run: its config, the net (eval mode, weights loaded) and its data split."""

    config: RunConfig
    net: nn.Module
    split: Split


def save_run(run_dir: str | Path, config: RunConfig, net: nn.Module, split: Split) -> None:
    """Write config.json, model.safetensors and split.npz into ``run_dir`` (created if needed)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(config.model_dump_json(indent=2) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(run_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    split.save(run_dir / SPLIT_FILE)


def load_config(run_dir: str | Path) -> RunConfig:
    """The validated config.json of ``run_dir``; InputError naming the file otherwise."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a run directory of snnl train?")
    try:
        return RunConfig.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as err:
        first = str(err).splitlines()
        raise InputError(f"{path}: invalid run config ({'; '.join(first[:3])})") from err


def build_run_net(config: RunConfig) -> Net:
    """The (untrained) net that ``config`` describes."""
    return build_net(config.arch, config.input_shape, config.num_classes, **config.net_kwargs)


def load_run(run_dir: str | Path) -> Run:
    """Load a run directory: config, net in eval mode with its weights, and the split."""
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    net = build_run_net(config)
    model_path = run_dir / WEIGHTS_FILE
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} not found")
    try:
        state: dict[str, torch.Tensor] = load_file(str(model_path))
        net.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError) as err:
        raise InputError(f"{model_path}: weights do not fit the config's net ({err})") from err
    split_path = run_dir / SPLIT_FILE
    if not split_path.is_file():
        raise FileNotFoundError(f"{split_path} not found")
    net.eval()
    return Run(config=config, net=net, split=Split.load(split_path))
