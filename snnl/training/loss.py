"""``SNNLoss``: cross-entropy plus a factor times the SNNL of chosen hidden layers (docs/method.md).

    total = CE(logits, y) + factor * sum_l SNNL_l(h_l, T_l)

The hidden representations h_l are captured with forward hooks (:class:`snnl.core.taps.LayerTaps`);
the wrapped model is not changed. Temperature per layer:

* a float: fixed T;
* ``"annealed"``: T = 1 / (1 + epoch)^0.55 (Frosst et al.), advanced with ``set_epoch``;
* ``"learned"``: theta = log(1/T) is a parameter (so T stays positive), updated to *minimize*
  that layer's SNNL whatever the sign of ``factor``. The main term sees T detached and the
  temperature sees the features detached:

      total = CE + factor * sum_l SNNL_l(h_l, T_l.detach())
                 + sum_l [SNNL_l(h_l.detach(), T_l) - SNNL_l(h_l.detach(), T_l).detach()]

  The bracket is 0 in value, so ``total`` is the honest objective, and its gradient reaches
  theta only, with the SNNL's own sign. theta is projected onto [-log 1e4, log 1e4] before each
  use, so T stays in [1e-4, 1e4], the stable range, and can still leave a bound it has reached
  (clamping T instead would zero theta's gradient there for good).

With factor < 0 (maximizing entanglement) the log-space SNNL is unbounded, so each row's term is
bounded on purpose: -log(eps + p_i) <= -log(eps), eps = 1e-5 (the cap of Frosst et al.'s code,
about 11.5). The reported per-layer SNNL is the term that enters ``total``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from snnl.core.distances import Distance, check_distance
from snnl.core.functional import soft_nearest_neighbor_loss
from snnl.core.taps import LayerTaps
from snnl.core.temperature import TEMPERATURE_BOUNDS, annealed_temperature
from snnl.errors import InputError

TemperatureMode = Literal["learned", "annealed"] | float

MAXIMIZE_EPS = 1e-5


@dataclass
class LossResult:
    """The parts of one evaluation: ``total`` and ``primary`` (CE) are 0-dim tensors,
    ``snnl`` per layer 0-dim tensors, ``temperature`` per layer floats, ``logits`` (B, C)."""

    total: torch.Tensor
    primary: torch.Tensor
    snnl: dict[str, torch.Tensor]
    temperature: dict[str, float]
    logits: torch.Tensor


def check_temperature_mode(mode: object) -> TemperatureMode:
    """Return ``mode`` if it is "learned", "annealed" or a positive finite float."""
    if mode in ("learned", "annealed"):
        return mode
    if isinstance(mode, bool) or not isinstance(mode, int | float):
        raise InputError(f"temperature must be 'learned', 'annealed' or a number, got {mode!r}")
    if not (math.isfinite(mode) and mode > 0):
        raise InputError(f"temperature must be a positive finite number, got {mode}")
    return float(mode)


class SNNLoss(nn.Module):
    """CE + ``factor`` * sum of per-layer SNNL over ``layers`` of ``model``.

    ``temperature`` is one mode for every layer or a mapping {layer: mode}; ``initial_temperature``
    is where learned temperatures start. ``parameters()`` yields the model's parameters and the
    learned log inverse temperatures (also alone: ``temperature_parameters()``), so one optimizer
    trains both (possibly with a larger step size for the temperatures). Call ``close()`` (or use a
    ``with`` block) to remove the hooks.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        *,
        factor: float = 1.0,
        temperature: TemperatureMode | Mapping[str, TemperatureMode] = "learned",
        distance: Distance = "cosine",
        initial_temperature: float = 1.0,
        primary_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    ) -> None:
        super().__init__()
        try:
            self.distance: Distance = check_distance(distance)
        except ValueError as err:
            raise InputError(str(err)) from err
        if not math.isfinite(factor):
            raise InputError(f"factor must be finite, got {factor}")
        self.factor = float(factor)
        self.model = model
        self.primary_loss = primary_loss
        names = (layers,) if isinstance(layers, str) else tuple(layers)
        if isinstance(temperature, Mapping):
            if set(temperature) != set(names) or len(temperature) != len(names):
                raise InputError(
                    f"temperature must name each layer of {list(names)} once, "
                    f"got {list(temperature)}"
                )
            modes = {name: check_temperature_mode(temperature[name]) for name in names}
        else:
            mode = check_temperature_mode(temperature)
            modes = dict.fromkeys(names, mode)
        initial = check_temperature_mode(initial_temperature)
        if isinstance(initial, str):
            raise InputError(f"initial_temperature must be a positive number, got {initial!r}")
        start = math.log(1.0 / initial)
        self.taps = LayerTaps(model, names)
        self.layers: tuple[str, ...] = self.taps.names
        self.modes: dict[str, TemperatureMode] = modes
        self.log_inverse_temperature = nn.ParameterDict(
            {
                # ParameterDict keys may not contain dots; index by position.
                str(i): nn.Parameter(torch.tensor(start))
                for i, name in enumerate(self.layers)
                if modes[name] == "learned"
            }
        )
        self.epoch = 0

    def temperature_parameters(self) -> list[nn.Parameter]:
        """The learned parameters theta_l = log(1 / T_l) (empty if no layer learns T)."""
        return list(self.log_inverse_temperature.values())

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that annealed temperatures follow."""
        if epoch < 0:
            raise InputError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def temperature_of(self, layer: str) -> torch.Tensor:
        """The current T of ``layer`` as a 0-dim tensor (attached to theta when learned)."""
        mode = self.modes[layer]
        if mode == "learned":
            theta = self.log_inverse_temperature[str(self.layers.index(layer))]
            with torch.no_grad():  # projection onto the stable range; the gradient stays alive
                theta.clamp_(-math.log(TEMPERATURE_BOUNDS[1]), -math.log(TEMPERATURE_BOUNDS[0]))
            return torch.exp(-theta)
        value = annealed_temperature(self.epoch) if mode == "annealed" else float(mode)
        return torch.tensor(value)

    def temperatures(self) -> dict[str, float]:
        """The current temperature of every layer."""
        return {name: float(self.temperature_of(name).detach()) for name in self.layers}

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> LossResult:
        """Run the model on ``x`` (B, ...) and evaluate the loss against labels ``y`` (B,)."""
        if not self.taps.active:
            raise RuntimeError("SNNLoss is closed: its hooks were removed")
        self.taps.clear()
        logits = self.model(x)
        primary = self.primary_loss(logits, y)
        eps = MAXIMIZE_EPS if self.factor < 0 else 0.0
        total = primary
        snnl: dict[str, torch.Tensor] = {}
        temperatures: dict[str, float] = {}
        for name in self.layers:
            h = self.taps.activations[name]
            t = self.temperature_of(name).to(h.dtype)
            term = soft_nearest_neighbor_loss(h, y, t.detach(), self.distance, eps=eps)
            total = total + self.factor * term
            if self.modes[name] == "learned":
                own = soft_nearest_neighbor_loss(h.detach(), y, t, self.distance)
                total = total + (own - own.detach())
            snnl[name] = term
            temperatures[name] = float(t.detach())
        self.taps.clear()
        return LossResult(
            total=total, primary=primary, snnl=snnl, temperature=temperatures, logits=logits
        )

    def close(self) -> None:
        """Remove the hooks from the model; the loss cannot be evaluated afterwards."""
        self.taps.remove()

    def __enter__(self) -> SNNLoss:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
