"""Synthetic out-of-distribution sets made from an in-distribution sample array x (N, *shape).

* ``uniform_noise``: i.i.d. uniform values over the global range [min x, max x] of the source;
* ``transform``: the source samples changed by one named transform (the "transformed inputs"
  OOD of the study), all with the source's global range lo = min x, hi = max x:

  - ``invert``      x' = lo + hi - x
  - ``scale=F``     x' = F * x
  - ``shift=F``     x' = x + F * (hi - lo)
  - ``permute``     each sample's features in a random order (same values, no structure)
"""

from __future__ import annotations

import numpy as np

from snnl.errors import InputError

TRANSFORMS: tuple[str, ...] = ("invert", "scale=F", "shift=F", "permute")


def uniform_noise(x: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` samples (n, *x.shape[1:]) float32, uniform over [min x, max x]."""
    if n < 1:
        raise InputError(f"--noise: expected a number of samples >= 1, got {n}")
    rng = np.random.default_rng(seed)
    lo, hi = float(x.min()), float(x.max())
    return rng.uniform(lo, hi, size=(n, *x.shape[1:])).astype(np.float32)


def _parse(spec: str) -> tuple[str, float]:
    """(name, F) of ``spec``; F is 0 for the transforms without a parameter."""
    name, _, value = spec.partition("=")
    if name in ("invert", "permute") and not value:
        return name, 0.0
    if name in ("scale", "shift") and value:
        try:
            return name, float(value)
        except ValueError:
            pass
    raise InputError(
        f"--transform: expected one of {', '.join(TRANSFORMS)} (F a number), got {spec!r}"
    )


def transform(x: np.ndarray, spec: str, seed: int = 0) -> np.ndarray:
    """The samples x (N, *shape) changed by the transform ``spec`` (see the module doc)."""
    name, value = _parse(spec)
    lo, hi = float(x.min()), float(x.max())
    if name == "invert":
        out = lo + hi - x
    elif name == "scale":
        out = x * value
    elif name == "shift":
        out = x + value * (hi - lo)
    else:
        rng = np.random.default_rng(seed)
        flat = x.reshape(len(x), -1)
        order = np.argsort(rng.random(flat.shape), axis=1)
        out = np.take_along_axis(flat, order, axis=1).reshape(x.shape)
    return np.ascontiguousarray(out, dtype=np.float32)
