"""LayerTaps: forward hooks that capture named layer outputs, flattened, and go away cleanly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from snnl.core.taps import LayerTaps
from snnl.errors import InputError


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Sequential(nn.Linear(12, 5), nn.Tanh()),
        nn.Linear(5, 2),
    )


def hook_count(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in net.modules())


def test_captures_flattened_outputs_of_named_layers() -> None:
    net = small_net()
    x = torch.randn(4, 1, 4)
    with LayerTaps(net, ["0", "3", "3.0"]) as taps:
        logits = net(x)
        acts = taps.activations
    conv = net[0](x)
    hidden_pre = net[3][0](net[2](net[1](conv)))
    assert acts["0"].shape == (4, 12)
    assert torch.equal(acts["0"], conv.reshape(4, -1))
    assert torch.equal(acts["3.0"], hidden_pre)
    assert torch.equal(acts["3"], torch.tanh(hidden_pre))
    assert torch.equal(logits, net(x))
    assert acts["3"].requires_grad  # still attached to the graph


def test_hooks_removed_on_exit_and_remove() -> None:
    net = small_net()
    assert hook_count(net) == 0
    with LayerTaps(net, ["0", "3"]) as taps:
        assert hook_count(net) == 2 and taps.active
    assert hook_count(net) == 0 and not taps.active
    taps = LayerTaps(net, ["3"])
    taps.remove()
    taps.remove()  # twice is fine
    assert hook_count(net) == 0
    net(torch.randn(2, 1, 4))
    assert taps.activations == {}


def test_hooks_removed_when_the_block_raises() -> None:
    net = small_net()
    with pytest.raises(RuntimeError), LayerTaps(net, ["3"]):
        net(torch.randn(2, 7, 4))  # wrong channel count
    assert hook_count(net) == 0


def test_activations_stay_readable_after_exit_and_clear() -> None:
    net = small_net()
    with LayerTaps(net, ["3"]) as taps:
        net(torch.randn(3, 1, 4))
    assert taps.activations["3"].shape == (3, 5)
    taps.clear()
    assert taps.activations == {}


def test_detach_option() -> None:
    net = small_net()
    with LayerTaps(net, ["3"], detach=True) as taps:
        net(torch.randn(3, 1, 4))
        assert not taps.activations["3"].requires_grad


def test_unknown_or_duplicate_layer_names() -> None:
    net = small_net()
    with pytest.raises(InputError, match="'fc9' does not exist"):
        LayerTaps(net, ["3", "fc9"])
    assert hook_count(net) == 0  # nothing registered on failure
    with pytest.raises(InputError, match="duplicate"):
        LayerTaps(net, ["3", "3"])
    with pytest.raises(InputError, match="at least one"):
        LayerTaps(net, [])


def test_a_single_name_string_is_one_layer() -> None:
    net = small_net()
    with LayerTaps(net, "3") as taps:
        net(torch.randn(2, 1, 4))
    assert list(taps.activations) == ["3"]


class TupleOut(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


def test_non_tensor_output_is_an_error() -> None:
    net = nn.Sequential(TupleOut())
    with LayerTaps(net, ["0"]), pytest.raises(InputError, match="not a tensor"):
        net(torch.randn(2, 3))
