"""SNNLoss: CE + factor * per-layer SNNL, temperature modes, the bound for factor < 0, hooks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from snnl import soft_nearest_neighbor_loss
from snnl.core.temperature import annealed_temperature
from snnl.errors import InputError
from snnl.training.loss import MAXIMIZE_EPS, SNNLoss
from snnl.training.nets import build_net


def num(t: torch.Tensor) -> float:
    return float(t.detach())


def setup(seed: int = 0, n: int = 32) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    net = build_net("mlp", (10,), 3, hidden=[16, 8])
    x = torch.randn(n, 10)
    y = torch.arange(n) % 3
    return net, x, y


def hidden(net: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The hidden representations computed by hand, without hooks."""
    h1 = net.fc1(net.standardize(x).flatten(1))
    return {"fc1": h1, "fc2": net.fc2(h1)}


def hook_count(net: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in net.modules())


@pytest.mark.parametrize("factor", [0.0, 1.0, -10.0])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_fixed_temperature_total_and_gradient(factor: float, distance: str) -> None:
    net, x, y = setup()
    with SNNLoss(net, ["fc1", "fc2"], factor=factor, temperature=0.5, distance=distance) as loss:
        result = loss(x, y)
        result.total.backward()
    got = {name: p.grad.clone() for name, p in net.named_parameters()}
    net.zero_grad()

    h = hidden(net, x)
    eps = MAXIMIZE_EPS if factor < 0 else 0.0
    ce = F.cross_entropy(net(x), y)
    terms = {k: soft_nearest_neighbor_loss(v, y, 0.5, distance, eps=eps) for k, v in h.items()}
    expected = ce + factor * sum(terms.values())
    expected.backward()

    assert num(result.primary) == pytest.approx(num(ce), rel=1e-6)
    assert num(result.total) == pytest.approx(num(expected), rel=1e-5)
    for name in ("fc1", "fc2"):
        assert num(result.snnl[name]) == pytest.approx(num(terms[name]), rel=1e-5)
    assert result.temperature == {"fc1": 0.5, "fc2": 0.5}
    assert result.logits.shape == (32, 3)
    for name, p in net.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("factor", [1.0, -10.0])
def test_learned_temperature_minimizes_snnl_whatever_the_factor(factor: float) -> None:
    net, x, y = setup(1)
    loss = SNNLoss(
        net, ["fc1", "fc2"], factor=factor, temperature="learned", initial_temperature=0.7
    )
    result = loss(x, y)
    result.total.backward()
    thetas = loss.temperature_parameters()
    assert len(thetas) == 2
    h = hidden(net, x)
    for theta, name in zip(thetas, ("fc1", "fc2"), strict=True):
        ref = torch.tensor(math.log(1 / 0.7), requires_grad=True)
        own = soft_nearest_neighbor_loss(h[name].detach(), y, torch.exp(-ref))
        (grad,) = torch.autograd.grad(own, ref)
        assert theta.grad is not None
        assert num(theta.grad) == pytest.approx(num(grad), rel=1e-4)
        assert result.temperature[name] == pytest.approx(0.7, rel=1e-6)
    # The temperature term adds nothing to the value: total = CE + factor * sum SNNL.
    expected = result.primary + factor * sum(result.snnl.values())
    assert num(result.total) == pytest.approx(num(expected), rel=1e-6)
    # And the net's gradient is the one of the main objective with T held fixed.
    got = {name: p.grad.clone() for name, p in net.named_parameters()}
    net.zero_grad()
    eps = MAXIMIZE_EPS if factor < 0 else 0.0
    main = F.cross_entropy(net(x), y) + factor * sum(
        soft_nearest_neighbor_loss(v, y, 0.7, eps=eps) for v in h.values()
    )
    main.backward()
    for name, p in net.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-6)
    loss.close()


def test_learned_temperature_moves_towards_the_optimum() -> None:
    net, x, y = setup(2)
    loss = SNNLoss(net, ["fc1"], factor=-10.0, temperature="learned", initial_temperature=10.0)
    opt = torch.optim.SGD(loss.temperature_parameters(), lr=0.5)
    before = num(soft_nearest_neighbor_loss(hidden(net, x)["fc1"], y, 10.0))
    for _ in range(20):
        opt.zero_grad()
        loss(x, y).total.backward()
        opt.step()
    t = loss.temperatures()["fc1"]
    assert t < 10.0
    assert num(soft_nearest_neighbor_loss(hidden(net, x)["fc1"], y, t)) < before
    loss.close()


def test_learned_temperature_is_projected_and_can_leave_a_bound() -> None:
    net, x, y = setup(4)
    with SNNLoss(net, ["fc1"], temperature="learned") as loss:
        (theta,) = loss.temperature_parameters()
        with torch.no_grad():
            theta.fill_(50.0)  # T = exp(-50), far below the stable range
        result = loss(x, y)
        assert result.temperature["fc1"] == pytest.approx(1e-4, rel=1e-6)
        assert num(theta) == pytest.approx(math.log(1e4), rel=1e-6)
        result.total.backward()
        # Still a gradient at the bound (a clamp on T would give exactly 0 here, for good).
        assert theta.grad is not None and num(theta.grad) != 0.0
        with torch.no_grad():
            theta.fill_(-50.0)
        assert loss.temperatures()["fc1"] == pytest.approx(1e4, rel=1e-6)


def test_annealed_temperature_follows_the_epoch() -> None:
    net, x, y = setup()
    with SNNLoss(net, ["fc2"], temperature="annealed") as loss:
        assert loss(x, y).temperature["fc2"] == 1.0
        loss.set_epoch(4)
        result = loss(x, y)
        assert result.temperature["fc2"] == pytest.approx(annealed_temperature(4))
        h = hidden(net, x)["fc2"]
        expected = soft_nearest_neighbor_loss(h, y, annealed_temperature(4))
        assert num(result.snnl["fc2"]) == pytest.approx(num(expected), rel=1e-5)
        with pytest.raises(InputError):
            loss.set_epoch(-1)


def test_per_layer_modes() -> None:
    net, x, y = setup()
    modes = {"fc1": 0.25, "fc2": "learned"}
    with SNNLoss(net, ["fc1", "fc2"], temperature=modes, initial_temperature=2.0) as loss:
        assert len(loss.temperature_parameters()) == 1
        assert loss(x, y).temperature == pytest.approx({"fc1": 0.25, "fc2": 2.0})
    with pytest.raises(InputError, match="each layer"):
        SNNLoss(net, ["fc1", "fc2"], temperature={"fc1": 1.0})
    assert hook_count(net) == 0


def test_maximizing_stays_bounded() -> None:
    """With factor < 0 the optimizer pushes SNNL up; each row's term is capped at -log(eps)."""
    net, x, y = setup(3, n=48)
    assert MAXIMIZE_EPS == 1e-5  # the cap of Frosst et al.: -log(1e-5) ~ 11.5
    cap = -math.log(1e-5)
    with SNNLoss(net, ["fc1", "fc2"], factor=-10.0, temperature=0.05, distance="euclidean") as loss:
        opt = torch.optim.Adam(net.parameters(), lr=0.05)
        for _ in range(60):
            result = loss(x, y)
            opt.zero_grad()
            result.total.backward()
            opt.step()
            for value in result.snnl.values():
                assert math.isfinite(num(value)) and num(value) <= cap + 1e-6
            assert math.isfinite(num(result.total))
            assert num(result.total) >= num(result.primary) - 10.0 * 2 * cap - 1e-3
        # The maximization really ran into the cap, where the exact SNNL is far larger.
        assert max(num(v) for v in result.snnl.values()) > cap - 0.5
        h = hidden(net, x)
        exact = max(num(soft_nearest_neighbor_loss(v, y, 0.05, "euclidean")) for v in h.values())
        assert exact > 2 * cap


def test_model_is_unchanged_and_hooks_removed() -> None:
    net, x, y = setup()
    before = net(x).detach()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    loss = SNNLoss(net, ["fc1", "fc2"])
    assert hook_count(net) == 2
    loss(x, y)
    loss.close()
    assert hook_count(net) == 0
    assert torch.equal(net(x), before)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    with pytest.raises(RuntimeError, match="closed"):
        loss(x, y)


def test_parameters_include_model_and_temperatures() -> None:
    net, _, _ = setup()
    with SNNLoss(net, ["fc1", "fc2"], temperature="learned") as loss:
        ids = {id(p) for p in loss.parameters()}
        assert {id(p) for p in net.parameters()} <= ids
        assert {id(p) for p in loss.temperature_parameters()} <= ids


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": ["fc7"]}, "'fc7' does not exist"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": -1.0}, "positive"),
        ({"temperature": float("nan")}, "positive"),
        ({"factor": float("inf")}, "factor"),
        ({"distance": "manhattan"}, "distance"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    net, _, _ = setup()
    args = {"layers": ["fc1"], **kwargs}
    with pytest.raises(InputError, match=message):
        SNNLoss(net, args.pop("layers"), **args)
    assert hook_count(net) == 0
