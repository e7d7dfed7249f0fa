"""The reference nets: named hidden layers, standardization buffers, ONNX-exportable graphs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from snnl.core.taps import LayerTaps
from snnl.errors import InputError
from snnl.training.nets import CNN1d, CNN2d, Standardize, build_net

CASES = [
    ("mlp", (64,), {}, {"fc1": 256, "fc2": 128, "fc3": 64}),
    ("mlp", (8, 8), {"hidden": [16, 8]}, {"fc1": 16, "fc2": 8}),
    ("cnn1d", (40,), {}, {"conv1": 32 * 20, "conv2": 32 * 10, "fc1": 128}),
    (
        "cnn1d",
        (2, 13),
        {"channels": [4, 6], "kernel_size": 3, "hidden": 9},
        {"conv1": 4 * 7, "conv2": 6 * 4, "fc1": 9},
    ),
    ("cnn2d", (28, 28), {}, {"conv1": 16 * 14 * 14, "conv2": 32 * 7 * 7, "fc1": 128}),
    (
        "cnn2d",
        (2, 9, 8),
        {"channels": [3, 5], "kernel_size": 5, "hidden": [7, 6]},
        {"conv1": 3 * 4 * 4, "conv2": 5 * 2 * 2, "fc1": 7, "fc2": 6},
    ),
]


@pytest.mark.parametrize(("arch", "shape", "kwargs", "dims"), CASES)
def test_contract(arch: str, shape: tuple[int, ...], kwargs: dict, dims: dict[str, int]) -> None:
    torch.manual_seed(0)
    net = build_net(arch, shape, 5, **kwargs)
    assert next(iter(net.named_children()))[0] == "standardize"
    assert net.hidden_layers == tuple(dims)
    assert {"standardize.mean", "standardize.std"} <= set(net.state_dict())
    x = torch.randn(3, *shape)
    with LayerTaps(net, net.hidden_layers) as taps:
        logits = net(x)
    assert logits.shape == (3, 5)
    assert {k: v.shape[1] for k, v in taps.activations.items()} == dims
    for name in net.hidden_layers:
        assert (taps.activations[name] >= 0).all()  # post-ReLU representations


def test_standardize_fit_and_forward() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(loc=3.0, scale=2.0, size=(50, 4)).astype(np.float32)
    x[:, 2] = 7.0  # a constant feature: std 1, not 0
    layer = Standardize((4,))
    layer.fit(torch.from_numpy(x))
    mean = x.astype(np.float64).mean(0)
    std = x.astype(np.float64).std(0)
    np.testing.assert_allclose(layer.mean.numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(layer.std.numpy(), np.where(std < 1e-6, 1.0, std), rtol=1e-5)
    out = layer(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out[:, [0, 1, 3]].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out[:, [0, 1, 3]].std(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(out[:, 2], 0.0, atol=1e-6)


def test_cnn2d_scales_all_pixels_alike() -> None:
    pixels = torch.randint(0, 256, (40, 28, 28)).float()
    pixels[:, 0, :] = 0.0  # a border row that never lights up keeps the shared scale
    net = build_net("cnn2d", (28, 28), 3)
    net.standardize.fit(pixels)
    values = pixels.double()
    assert torch.allclose(net.standardize.mean, values.mean().float().expand(28, 28))
    assert torch.allclose(net.standardize.std, values.std(unbiased=False).float().expand(28, 28))
    scaled = net.standardize(pixels)
    assert abs(float(scaled.mean())) < 1e-4 and abs(float(scaled.std()) - 1.0) < 1e-3


def test_standardization_is_part_of_the_forward() -> None:
    torch.manual_seed(1)
    net = build_net("mlp", (6,), 3, hidden=[4])
    x = torch.randn(10, 6) * 5 + 2
    before = net(x)
    net.standardize.fit(x)
    assert not torch.allclose(before, net(x))
    net.standardize.mean.zero_()
    net.standardize.std.fill_(1.0)
    assert torch.allclose(before, net(x))


def test_bad_arguments() -> None:
    with pytest.raises(InputError, match="arch"):
        build_net("resnet", (8,), 3)
    with pytest.raises(InputError, match="num_classes"):
        build_net("mlp", (8,), 1)
    with pytest.raises(InputError, match="net_kwargs"):
        build_net("mlp", (8,), 3, depth=3)
    with pytest.raises(InputError, match="hidden"):
        build_net("mlp", (8,), 3, hidden=[])
    with pytest.raises(InputError, match="input shape"):
        CNN1d((2, 3, 4), 3)
    with pytest.raises(InputError, match="input shape"):
        CNN2d((784,), 3)
    with pytest.raises(InputError, match="at least 4x4"):
        CNN2d((3, 28), 3)
    with pytest.raises(InputError, match="dense layer"):
        CNN2d((28, 28), 3, hidden=[])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(
    ("arch", "shape"), [("mlp", (64,)), ("cnn1d", (40,)), ("cnn2d", (12, 12)), ("cnn2d", (2, 8, 8))]
)
def test_onnx_export_with_hidden_outputs_matches_torch(
    tmp_path, arch: str, shape: tuple[int, ...]
) -> None:
    torch.manual_seed(2)
    net = build_net(arch, shape, 4).eval()
    net.standardize.fit(torch.randn(20, *shape) * 3 + 1)

    class WithHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            with LayerTaps(self.net, self.net.hidden_layers) as taps:
                logits = self.net(x)
            return (logits, *(taps.activations[n] for n in self.net.hidden_layers))

    path = tmp_path / "net.onnx"
    names = ["logits", *net.hidden_layers]
    torch.onnx.export(
        WithHidden(),
        (torch.randn(2, *shape),),
        str(path),
        input_names=["input"],
        output_names=names,
        dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in names}},
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).normal(size=(7, *shape)).astype(np.float32)
    outputs = session.run(names, {"input": x})
    with torch.no_grad():
        expected = WithHidden()(torch.from_numpy(x))
    for got, want in zip(outputs, expected, strict=True):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)
