"""The soft-neighbor mass detector: how many soft neighbors of its predicted class a sample has.

SPEC §1 flags data that "has fewer than the normal number of neighbors from the predicted class".
The SPEC §2 score s_l is a *fraction* (same-class mass over all mass), so it cannot tell a sample
far from every reference point from one in the middle of its class; this detector uses the
*amount* instead. For served layer l, geometry g (cosine and squared euclidean), predicted class c
and the n_c reference rows r_j of class c:

    m_{l,g}(x) = log( (1/n_c) sum_{j: y_j = c} exp(-D_g(h_l(x), r_j) / T_{l,g}) )
    z_{l,g}(x) = (m_{l,g}(x) - mu_{l,g}) / sigma_{l,g}
    score(x)   = sum_{l,g} z_{l,g}(x)                      (higher = more in-distribution)

m is the log of a class-conditional kernel density. Everything is fitted on the reference set
(in-distribution training features) only: T_{l,g} by the perplexity rule
(``snnl.temperature_rule.perplexity_temperature``: the leave-one-out soft neighborhood holds P
points), mu and sigma as the mean and standard deviation of m over reference rows left out of
their own sum, each with its own label as c. Cosine sees the direction of a representation and
euclidean its position, including its norm (inputs scaled far out keep their direction).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from snnl.distances import Distance, check_distance, pairwise_distances_prepared, prepare
from snnl.errors import InputError
from snnl.functional import masked_logsumexp
from snnl.temperature import stratified_subsample
from snnl.temperature_rule import perplexity_temperature

DEFAULT_PERPLEXITY = 30.0
GEOMETRIES: tuple[Distance, ...] = ("cosine", "euclidean")
_MAX_ELEMENTS = 4_000_000  # distance entries per query chunk
_LOG_FLOOR = -1e12  # m of a class with no reference rows (never for a fitted model's classes)


def log_class_mass(
    query: torch.Tensor,
    reference: torch.Tensor,
    labels: torch.Tensor,
    classes: torch.Tensor,
    temperature: float,
    distance: Distance,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """m (B,) = log mean_{j: labels_j = classes_i, j != exclude_i} exp(-D(q_i, r_j) / T).

    ``query`` (B, d) and ``reference`` (N, d) already passed through ``prepare``; ``exclude``
    (B,) optional reference rows left out (leave-one-out). Chunked over queries, float64.
    """
    rows = max(1, _MAX_ELEMENTS // max(1, reference.shape[0]))
    sq_norms = reference.pow(2).sum(-1) if distance == "euclidean" else None
    out = []
    for start in range(0, query.shape[0], rows):
        q = query[start : start + rows]
        z = pairwise_distances_prepared(q, reference, distance, sq_norms) / -temperature
        mask = labels.unsqueeze(0) == classes[start : start + rows].unsqueeze(1)
        if exclude is not None:
            mask[torch.arange(q.shape[0]), exclude[start : start + rows]] = False
        count = mask.sum(1).to(z.dtype)
        mass = masked_logsumexp(z, mask) - count.clamp_min(1).log()
        out.append(mass.clamp_min(_LOG_FLOOR))
    return torch.cat(out)


class SoftNeighborMass:
    """The soft-neighbor mass detector (module docstring): fit on reference features, then score.

    ``perplexity`` P sets the temperatures; ``geometries`` the distances used per layer;
    ``max_stat_rows`` bounds the reference rows (stratified, seeded) used for mu and sigma.
    """

    name = "soft_neighbor_mass"

    def __init__(
        self,
        perplexity: float = DEFAULT_PERPLEXITY,
        geometries: Sequence[Distance] = GEOMETRIES,
        max_stat_rows: int = 2000,
        seed: int = 0,
    ) -> None:
        if not perplexity > 1:
            raise InputError(f"perplexity: expected > 1, got {perplexity}")
        if not geometries:
            raise InputError("geometries: expected at least one distance")
        self.perplexity = perplexity
        self.geometries = tuple(check_distance(g) for g in geometries)
        self.max_stat_rows = max_stat_rows
        self.seed = seed
        self.labels: torch.Tensor | None = None
        self.reference: dict[tuple[str, Distance], torch.Tensor] = {}
        self.temperature: dict[tuple[str, Distance], float] = {}
        self.mean: dict[tuple[str, Distance], float] = {}
        self.std: dict[tuple[str, Distance], float] = {}

    def fit(self, features: Mapping[str, np.ndarray], labels: np.ndarray) -> SoftNeighborMass:
        """Fit on reference features {layer: (N, d_l)} and labels (N,); returns ``self``."""
        y = np.asarray(labels)
        if y.ndim != 1 or len(y) < 3 or not np.issubdtype(y.dtype, np.integer):
            raise InputError(
                f"labels: expected (N >= 3,) integers, got shape {y.shape} dtype {y.dtype}"
            )
        self.labels = torch.from_numpy(y.astype(np.int64))
        rows = torch.from_numpy(stratified_subsample(y, self.max_stat_rows, self.seed))
        for layer, values in features.items():
            x = torch.from_numpy(np.asarray(values, dtype=np.float64))
            if x.ndim != 2 or x.shape[0] != len(y):
                raise InputError(f"features.{layer}: expected ({len(y)}, d), got {tuple(x.shape)}")
            for g in self.geometries:
                key = (layer, g)
                t = perplexity_temperature(x, y, g, self.perplexity, seed=self.seed)
                ref = prepare(x, g)
                loo = log_class_mass(ref[rows], ref, self.labels, self.labels[rows], t, g, rows)
                self.reference[key] = ref
                self.temperature[key] = t
                self.mean[key] = float(loo.mean())
                self.std[key] = max(float(loo.std(correction=0)), 1e-12)
        return self

    def layer_masses(
        self, features: Mapping[str, np.ndarray], prediction: np.ndarray
    ) -> dict[tuple[str, Distance], np.ndarray]:
        """{(layer, geometry): m (B,)} for features {layer: (B, d_l)} and predicted classes (B,)."""
        if self.labels is None:
            raise RuntimeError("SoftNeighborMass used before fit")
        classes = torch.from_numpy(np.asarray(prediction, dtype=np.int64))
        out = {}
        for (layer, g), ref in self.reference.items():
            if layer not in features:
                raise InputError(f"features: missing layer {layer!r}")
            q = torch.from_numpy(np.asarray(features[layer], dtype=np.float64))
            if q.ndim != 2 or q.shape[1] != ref.shape[1] or q.shape[0] != len(classes):
                expected = f"({len(classes)}, {ref.shape[1]})"
                raise InputError(f"features.{layer}: expected {expected}, got {tuple(q.shape)}")
            m = log_class_mass(
                prepare(q, g), ref, self.labels, classes, self.temperature[layer, g], g
            )
            out[layer, g] = m.numpy()
        return out

    def score(self, features: Mapping[str, np.ndarray], prediction: np.ndarray) -> np.ndarray:
        """score (B,) = sum over (layer, geometry) of the standardized m; higher = more ID."""
        masses = self.layer_masses(features, prediction)
        return sum(
            ((m - self.mean[key]) / self.std[key] for key, m in masses.items()),
            np.zeros(len(prediction)),
        )
