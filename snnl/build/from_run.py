"""``snnl export``: a training run -> a model folder of the repository.

model.onnx takes raw samples ``input`` (B, *input_shape) float32 (the standardization is the
net's first module, so it is inside the graph) and returns ``logits`` and one output per served
layer, named as the layer, in the net's order (the last is the penultimate layer). The export is
checked against PyTorch on the same inputs before anything is written: every output element
must satisfy |onnx - torch| <= 1e-5 + 1e-5 |torch| (absolute near zero, relative for large
values: float32 rounding of logits of size ~10 differs by ~1e-5 between the two runtimes). The
reference set is the training split's activations, the calibration set the run's calibration
split (or a stratified re-split of its calibration + test pool). The nonconformity a(x) is
``neighbor-mass`` by default (snnl.scoring.neighbor_mass) or ``neg-log-score`` (sum_l -log s_l).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from snnl import __version__
from snnl.build.assemble import (
    DEFAULT_NONCONFORMITY,
    ModelRecipe,
    build_model,
    class_floor,
    stratified_rows,
)
from snnl.core.distances import Distance
from snnl.core.taps import LayerTaps
from snnl.errors import InputError, SnnlError
from snnl.model.manifest import Manifest
from snnl.model.reference import ReferenceSet, StorageDtype
from snnl.model.runtime import OnnxRunner, resolve_device
from snnl.scoring.guarantees import Guarantee
from snnl.scoring.neighbor_mass import (
    DEFAULT_FLOOR_QUANTILE,
    DEFAULT_PERPLEXITY,
    GEOMETRIES,
    check_one_sided,
    check_weights,
)
from snnl.scoring.temperature_rule import DEFAULT_RULE
from snnl.training.loop import load_run

ONNX_OPSET = 17
TOLERANCE = 1e-5  # absolute and relative: |a - b| <= TOLERANCE (1 + |b|)
ALPHA = 0.05  # the exported model's default level of the flag (ModelRecipe's)
PREPROCESSING = "standardize: (x - mean) / std of the training split, inside model.onnx"


class _WithLayers(nn.Module):
    """net(x) -> (logits, *layer outputs flattened to (B, d_l)), for tracing."""

    def __init__(self, net: nn.Module, layers: Sequence[str]) -> None:
        super().__init__()
        self.net = net
        self.layers = tuple(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with LayerTaps(self.net, self.layers) as taps:
            logits = self.net(x)
        return (logits, *(taps.activations[name] for name in self.layers))


def export_onnx(net: nn.Module, layers: Sequence[str], input_shape: Sequence[int]) -> bytes:
    """The ONNX model of ``net`` (eval mode, CPU) with outputs logits + ``layers``; the same net
    gives the same bytes (the legacy TorchScript exporter is deterministic)."""
    wrapper = _WithLayers(net, layers).eval()
    names = ["input", "logits", *layers]
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            wrapper,
            (torch.zeros(2, *input_shape),),
            buffer,  # type: ignore[arg-type]  # the exporter also writes to a binary file object
            input_names=["input"],
            output_names=names[1:],
            dynamic_axes={name: {0: "batch"} for name in names},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return buffer.getvalue()


def verify_onnx(
    model: bytes, net: nn.Module, layers: Sequence[str], x: np.ndarray, tolerance: float = TOLERANCE
) -> float:
    """Max abs difference between ONNX Runtime and PyTorch outputs on ``x``; SnnlError when any
    element has |onnx - torch| > tolerance + tolerance |torch|."""
    runner = OnnxRunner(model, layers, torch.device("cpu"))
    onnx_out = runner.run(np.ascontiguousarray(x, dtype=np.float32))
    with torch.no_grad():
        torch_out = _WithLayers(net, layers)(torch.from_numpy(x))
    names = ["logits", *layers]
    pairs = zip(names, [onnx_out.logits, *onnx_out.features.values()], torch_out, strict=True)
    worst = 0.0
    for name, a, b in pairs:
        expected = b.numpy()
        error = np.abs(a - expected)
        bad = ~(error <= tolerance * (1.0 + np.abs(expected)))  # NaN is bad
        if bad.any():
            i = tuple(np.argwhere(bad)[0])
            raise SnnlError(
                f"ONNX export differs from PyTorch in output {name!r}: {a[i]:.7g} vs "
                f"{expected[i]:.7g} (allowed {tolerance:g} + {tolerance:g} |torch|)"
            )
        worst = max(worst, float(error.max()))
    return worst


def _calibration_split(
    x_cal: np.ndarray,
    y_cal: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    fraction: float,
    total: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Re-split calibration + test: round(fraction * total) calibration rows, stratified."""
    x_pool, y_pool = np.concatenate([x_cal, x_test]), np.concatenate([y_cal, y_test])
    size = round(fraction * total) if 0.0 < fraction < 1.0 else 0  # NaN and inf included
    if not 1 <= size < len(y_pool):
        raise InputError(
            f"--calibration-fraction {fraction} asks for {size} of {total} samples; the run's "
            f"calibration + test pool holds {len(y_pool)}"
        )
    try:
        cal, test = train_test_split(
            np.arange(len(y_pool)), train_size=size, random_state=seed, stratify=y_pool
        )
    except ValueError as err:
        raise InputError(f"cannot re-split the calibration + test pool: {err}") from err
    cal, test = np.sort(cal), np.sort(test)
    return x_pool[cal], y_pool[cal], x_pool[test], y_pool[test]


def export_run(
    run_dir: str | Path,
    repository: str | Path,
    name: str,
    *,
    version: str = "1",
    calibration_fraction: float | None = None,
    calibration_size: int | None = None,
    guarantee: Guarantee = "marginal",
    delta: float | None = None,
    reference_dtype: StorageDtype = "float32",
    distance: Distance = "cosine",
    temperature_rule: str = DEFAULT_RULE,
    nonconformity: str = DEFAULT_NONCONFORMITY,
    mass_geometries: Sequence[Distance] = GEOMETRIES,
    mass_perplexity: float = DEFAULT_PERPLEXITY,
    mass_one_sided: Sequence[str] = (),
    mass_floor_quantile: float = DEFAULT_FLOOR_QUANTILE,
    mass_layer_weights: Mapping[str, float] | None = None,
    mass_geometry_weights: Mapping[str, float] | None = None,
    layers: Sequence[str] | None = None,
    created: str | None = None,
    device: str = "auto",
) -> Manifest:
    """Export the run in ``run_dir`` to ``repository/<name>``; returns the written manifest.

    ``mass_geometries`` and ``mass_perplexity``: the distances and the perplexity P of the
    neighbor-mass nonconformity's terms; ``mass_one_sided``: served layers whose terms are
    one-sided, with floors at ``mass_floor_quantile``; ``mass_layer_weights`` and
    ``mass_geometry_weights``: {layer: w} and {distance: w}, each term weighted by the product
    (a name left out: 1) (``snnl.scoring.neighbor_mass``)."""
    run = load_run(run_dir)
    config, split, net = run.config, run.split, run.net.cpu().eval()
    served = tuple(layers) if layers else tuple(config.hidden_layers)
    unknown = [layer for layer in served if layer not in config.hidden_layers]
    if unknown:
        raise InputError(f"--layers: {unknown} not among the run's {config.hidden_layers}")
    layer_weights, geometry_weights = (
        dict(mass_layer_weights or {}),
        dict(mass_geometry_weights or {}),
    )
    if nonconformity != "neighbor-mass":
        for option, chosen in (
            ("--one-sided", mass_one_sided),
            ("--layer-weights", layer_weights),
            ("--geometry-weights", geometry_weights),
        ):
            if chosen:
                raise InputError(
                    f"{option} needs --nonconformity neighbor-mass, got {nonconformity}"
                )
    check_one_sided(served, mass_one_sided, mass_floor_quantile)
    check_weights(served, mass_geometries, layer_weights, geometry_weights)
    model = export_onnx(net, served, config.input_shape)
    verify_onnx(model, net, served, split.x_test[:256])
    x_cal, y_cal, x_test, y_test = (
        split.x_calibration,
        split.y_calibration,
        split.x_test,
        split.y_test,
    )
    if calibration_fraction is not None:
        total = len(split.y_train) + len(y_cal) + len(y_test)
        x_cal, y_cal, x_test, y_test = _calibration_split(
            x_cal, y_cal, x_test, y_test, calibration_fraction, total, config.seed
        )
    if calibration_size is not None:
        if calibration_size < 1:
            raise InputError(f"--calibration-size must be >= 1, got {calibration_size}")
        kept = stratified_rows(
            y_cal, calibration_size, floor=class_floor(ALPHA), max_fraction=1.0, seed=config.seed
        )
        x_cal, y_cal = x_cal[kept], y_cal[kept]
    reference = ReferenceSet.from_net(
        net, split.x_train, split.y_train, served, device=resolve_device(device)
    )
    recipe = ModelRecipe(
        name=name,
        version=version,
        created=created,
        class_names=config.class_names,
        input_shape=config.input_shape,
        preprocessing=PREPROCESSING,
        distance=distance,
        temperature_rule=temperature_rule,
        nonconformity=nonconformity,
        mass_geometries=tuple(mass_geometries),
        mass_perplexity=mass_perplexity,
        mass_one_sided=tuple(mass_one_sided),
        mass_floor_quantile=mass_floor_quantile,
        mass_layer_weights=layer_weights,
        mass_geometry_weights=geometry_weights,
        reference_dtype=reference_dtype,
        alpha=ALPHA,
        guarantee=guarantee,
        delta=delta,
        provenance={
            "run": config.model_dump(mode="json"),
            "snnl_version": __version__,
            "torch_version": torch.__version__,
        },
    )
    return build_model(
        repository,
        recipe,
        reference=reference,
        calibration_inputs=x_cal,
        onnx_model=model,
        test=(x_test, y_test),
        device=device,
        seed=config.seed,
    )
