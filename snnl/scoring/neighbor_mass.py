"""The neighbor-mass nonconformity: how many soft neighbors of its predicted class a sample has.

The product flags data that has fewer than the normal number of neighbors from the predicted
class. The soft-neighbor score s_l is a *fraction* (same-class mass over all mass), so it cannot
tell a sample far from every reference point from one in the middle of its class (the query's
distance cancels in the ratio); this nonconformity uses the *amount* instead. For served layer l,
geometry g (cosine and squared euclidean), predicted class c and the n_c reference rows r_j of c:

    m_{l,g}(x) = log( (1/n_c) sum_{j: y_j = c} exp(-D_g(h_l(x), r_j) / T_{l,g}) )
    a(x)       = -sum_{l,g} (m_{l,g}(x) - mu_{l,g}) / sigma_{l,g}     (higher = less typical)

m is the log of a class-conditional kernel density, computed by
``snnl.core.kernel.class_mean_log_mass`` (the kernel the scorer runs on every batch). Everything
is fitted on the reference set (in-distribution training features) only: T_{l,g} by the
perplexity rule (``snnl.scoring.temperature_rule.perplexity_temperature``: the leave-one-out soft
neighborhood holds P points, P = 30), mu and sigma as the mean and standard deviation of m over
reference rows left out of their own sum, each with its own label as c. Cosine sees the direction
of a representation and euclidean its position, including its norm (inputs scaled far out keep
their direction).

A layer can enter one-sided instead: each of its terms adds max(0, f_{l,g} - z_{l,g}(x)), with
z = (m - mu) / sigma and the floor f_{l,g} the q-quantile of z over the same left-out reference
rows (q = 0.01 by default). Such a term is silent while the layer's mass stays within the range
it takes on in-distribution data and adds the shortfall below it: a low layer whose features
see unseen classes as typical (digits are all made of the same strokes) but other kinds of data
as far off can then flag the latter without adding noise to the ranking of the former.
The calibration split is then scored with this a(x), so the conformal flag keeps its guarantee.

Each term can carry a weight w_{l,g} = w_l * w_g > 0, a layer's weight times a geometry's (1
unless chosen at export): a(x) then sums w_{l,g} times each term's contribution above.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import torch

from snnl.core.class_mass import class_mean_log_mass
from snnl.core.distances import Distance, check_distance, distance_of
from snnl.core.kernel import Term
from snnl.core.temperature import stratified_subsample
from snnl.errors import InputError
from snnl.scoring.nonconformity import MassTerm, NeighborMass
from snnl.scoring.temperature_rule import perplexity_temperature

DEFAULT_PERPLEXITY = 30.0
DEFAULT_FLOOR_QUANTILE = 0.01
GEOMETRIES: tuple[Distance, ...] = ("cosine", "euclidean")
_CHUNK = 4096


def check_one_sided(
    layers: Sequence[str], one_sided: Collection[str], floor_quantile: float
) -> None:
    """InputError unless the ``one_sided`` layers are among ``layers``, at least one layer stays
    two-sided and 0 <= ``floor_quantile`` < 1; the messages name the options of ``snnl
    export`` (--one-sided, --floor-quantile)."""
    unknown = sorted(set(one_sided) - set(layers))
    if unknown:
        raise InputError(f"--one-sided: layers {unknown} are not served (served: {list(layers)})")
    if not set(layers) - set(one_sided):
        raise InputError(
            f"--one-sided {','.join(sorted(one_sided))}: at least one served layer must stay "
            "two-sided"
        )
    if not 0 <= floor_quantile < 1:
        raise InputError(f"--floor-quantile: expected 0 <= q < 1, got {floor_quantile}")


def check_weights(
    layers: Collection[str],
    geometries: Collection[str],
    layer_weights: Mapping[str, float],
    geometry_weights: Mapping[str, float],
) -> None:
    """InputError unless ``layer_weights`` name served ``layers`` only, ``geometry_weights``
    the neighbor mass's ``geometries`` only, and every weight and every term's product of a
    layer's and a geometry's weight is finite and > 0; the messages name the options of ``snnl
    export`` (--layer-weights, --geometry-weights)."""
    for option, weights, known in (
        ("--layer-weights", layer_weights, layers),
        ("--geometry-weights", geometry_weights, geometries),
    ):
        unknown = sorted(set(weights) - set(known))
        if unknown:
            raise InputError(f"{option}: {unknown} not among {sorted(known)}")
        for name, weight in weights.items():
            if not (math.isfinite(weight) and weight > 0):
                raise InputError(f"{option}: {name}={weight}: expected a finite weight > 0")
    for layer in layers:
        for geometry in geometries:
            weight = layer_weights.get(layer, 1.0) * geometry_weights.get(geometry, 1.0)
            if not (math.isfinite(weight) and weight > 0):
                raise InputError(
                    f"--layer-weights {layer} times --geometry-weights {geometry} is {weight}: "
                    "expected a finite product > 0"
                )


def fit_neighbor_mass(
    features: Mapping[str, np.ndarray | torch.Tensor],
    labels: np.ndarray | torch.Tensor,
    *,
    perplexity: float = DEFAULT_PERPLEXITY,
    geometries: Sequence[Distance] = GEOMETRIES,
    one_sided: Collection[str] = (),
    floor_quantile: float = DEFAULT_FLOOR_QUANTILE,
    layer_weights: Mapping[str, float] | None = None,
    geometry_weights: Mapping[str, float] | None = None,
    max_stat_rows: int = 2000,
    seed: int = 0,
) -> NeighborMass:
    """The manifest's neighbor-mass section fitted on reference features {layer: (N, d_l)} and
    labels (N,), in float64 on the CPU; mu, sigma and (for the ``one_sided`` layers) the floor at
    ``floor_quantile`` over at most ``max_stat_rows`` reference rows (stratified, seeded), each
    left out of its own class's sum; each term's weight is ``layer_weights[layer]`` times
    ``geometry_weights[distance]`` (a name left out: 1). The features keep their dtype (rows
    are converted to float64 in bounded blocks as they are used) and are copied only when the
    labels are not sorted already."""
    if not perplexity > 1:
        raise InputError(f"perplexity: expected > 1, got {perplexity}")
    if not geometries:
        raise InputError("geometries: expected at least one distance")
    check_one_sided(list(features), one_sided, floor_quantile)
    layer_weights, geometry_weights = dict(layer_weights or {}), dict(geometry_weights or {})
    check_weights(list(features), geometries, layer_weights, geometry_weights)
    y = np.asarray(torch.as_tensor(labels).cpu())
    if y.ndim != 1 or len(y) < 3 or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise InputError(
            f"labels: expected (N >= 3,) class ids >= 0, got shape {y.shape} dtype {y.dtype}"
        )
    order = None if bool(np.all(y[1:] >= y[:-1])) else np.argsort(y, kind="stable")
    y = (y if order is None else y[order]).astype(np.int64)
    sorted_labels = torch.from_numpy(y)
    num_classes = int(y.max()) + 1
    rows = torch.from_numpy(stratified_subsample(y, max_stat_rows, seed))
    classes = sorted_labels[rows]
    terms = []
    for layer, values in features.items():
        x = torch.as_tensor(values).detach().cpu()
        if x.ndim != 2 or x.shape[0] != len(y):
            raise InputError(f"features.{layer}: expected ({len(y)}, d), got {tuple(x.shape)}")
        x = x if order is None else x[torch.from_numpy(order)]
        h = x[rows].to(torch.float64)
        for g in geometries:
            distance = check_distance(g)
            t = perplexity_temperature(x, y, distance, perplexity, seed=seed)
            term = Term(distance_of(distance), t)
            loo = class_mean_log_mass(
                x, sorted_labels, num_classes, term, h, classes, _CHUNK, rows, dtype=torch.float64
            )
            mean, std = float(loo.mean()), max(float(loo.std(correction=0)), 1e-12)
            floor = None
            if layer in one_sided:
                floor = float(torch.quantile((loo - mean) / std, floor_quantile))
            weight = layer_weights.get(layer, 1.0) * geometry_weights.get(g, 1.0)
            term_spec = MassTerm(
                layer=layer, distance=g, temperature=t, mean=mean, std=std, floor=floor,
                weight=weight,
            )  # fmt: skip
            terms.append(term_spec)
    return NeighborMass(perplexity=perplexity, terms=terms)
