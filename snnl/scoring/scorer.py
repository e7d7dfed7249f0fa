"""Exact soft-neighbor scores of a batch against a reference set, chunked and in log space.

For a query h with predicted class c, in layer l with temperature T and distance D (SPEC §2):

    m_k(h)     = logsumexp_{j: y_j = k} (-D(h, r_j) / T)        per-class log-mass, (B, C)
    log s_l(h) = m_c(h) - logsumexp_k m_k(h)

log s_l and the class probabilities exp(m_k - logsumexp m) do not change when a constant is added
to a query's logits, so the scorer uses shifted logits that are one matrix product:

    cosine:    z_j = <h/|h|, r_j/|r_j|> / T                  (= -D/T + 1/T)
    euclidean: z_j = (2 <h, r_j> - |r_j|^2) / T              (= -D/T + |h|^2/T)

The reference is walked in chunks of ``chunk_size`` rows (memory O(B * chunk_size) whatever N
is). Per chunk, with the row maximum M subtracted, sum_j exp(max(z_j - M, -87)) is accumulated per
class (index_add) and the chunks are merged with logaddexp. The clamp keeps exp in float32's
normal range (out-of-range inputs make exp some 30 times slower on the CPU); it adds at most
N e^-87 to a class's relative mass, so every class mass within e^-60 of the row's total is exact
to N * 2e-12 relative. A predicted class below that (log s_l < -60) is recomputed on its own:
rows are kept sorted by label, so a class is one contiguous slice, reduced with its own maximum
subtracted. Nothing underflows at any T.

The hard count is the number of rows of class c among the k nearest (largest z), kept as a
running top-k merged over the chunks.

Mass terms (the neighbor-mass nonconformity, snnl.scoring.neighbor_mass): for each (layer, distance,
temperature) term, m = log mean_{j: y_j = c} exp(-D(h, r_j) / T) at the predicted class c, one
pass over that class's slice of the sorted reference with its maximum subtracted (snnl.core.kernel).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from snnl.core.distances import Distance, check_distance
from snnl.core.kernel import (
    EXP_FLOOR,
    ReferenceKernel,
    class_log_mass,
    prepare_rows,
    slice_logsumexp,
)

DEFAULT_CHUNK_SIZE = 16384
_EXACT_BELOW = -60.0  # log s_l under which the predicted class mass is recomputed on its own

MassTermKey = tuple[str, Distance, float]  # (layer, distance, temperature)


@dataclass(frozen=True)
class BatchScores:
    """Scores of B queries in L layers, on the host.

    ``log_score`` (B, L) float64 is log s_l; ``same_class`` (B, L) int64 the hard counts among the
    k nearest; ``neighbor_ids`` (B, L, m) int64 the nearest reference rows, nearest first (rows in
    the order the reference was given), or None; ``class_probability`` (B, C) float64 the
    soft-neighbor class probabilities exp(m_k - logsumexp m) of the last layer (a class below
    e^-60 of the total reads an upper bound, at most N e^-87); ``log_mass`` (B, K) float64 the
    soft-neighbor mass m(h_l, c) (snnl.core.kernel) of each of the K mass terms, at the predicted
    class.
    """

    predicted: np.ndarray
    log_score: np.ndarray
    same_class: np.ndarray
    neighbor_ids: np.ndarray | None
    class_probability: np.ndarray
    log_mass: np.ndarray


class SoftNeighborScorer:
    """Soft-neighbor scores of SPEC §2 over a fixed reference set held on one device.

    ``features`` maps each layer to its reference matrix (N, d_l) (float16 is computed in float32;
    float64 stays float64), ``labels`` (N,) holds ints in [0, num_classes). Rows need not be sorted:
    the scorer sorts them once (stably) and reports neighbor ids in the order given. The object is
    read-only after construction, so ``score`` is safe to call from several threads.

    ``mass_terms`` lists (layer, distance, temperature) triples whose soft-neighbor mass at
    the
    predicted class (snnl.core.kernel.class_log_mass) ``score`` also returns. Prepared rows are
    shared
    between a layer's kernels of the same distance, so a layer's raw (unnormalized) rows are held
    only when a euclidean term or layer needs them.
    """

    def __init__(
        self,
        features: Mapping[str, torch.Tensor],
        labels: torch.Tensor,
        *,
        num_classes: int,
        temperatures: Mapping[str, float],
        distances: Mapping[str, Distance],
        mass_terms: Sequence[MassTermKey] = (),
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        if not features:
            raise ValueError("a scorer needs at least one layer")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        labels = labels.to(torch.int64)
        if labels.ndim != 1 or labels.numel() == 0:
            raise ValueError(f"labels must be (N,) with N >= 1, got {tuple(labels.shape)}")
        if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise ValueError(
                f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}"
            )
        self.layers: tuple[str, ...] = tuple(features)
        self.num_classes = num_classes
        self.chunk_size = chunk_size
        self.device = labels.device
        is_sorted = bool((labels[1:] >= labels[:-1]).all())
        order = None if is_sorted else torch.argsort(labels, stable=True)
        self._order = order  # sorted position -> given row, or None when already sorted
        self.labels = labels if order is None else labels[order]
        counts = torch.bincount(self.labels, minlength=num_classes).cpu()
        ends = torch.cumsum(counts, 0)
        self._class_rows = [(int(e - c), int(e)) for c, e in zip(counts, ends, strict=True)]
        prepared: dict[tuple[str, Distance], torch.Tensor] = {}

        def kernel(name: str, distance: Distance, temperature: float) -> ReferenceKernel:
            if not temperature > 0:
                raise ValueError(f"temperature of layer {name!r} must be > 0, got {temperature}")
            if (name, distance) not in prepared:
                x = features[name]
                if x.ndim != 2 or x.shape[0] != labels.shape[0]:
                    raise ValueError(
                        f"features of layer {name!r} must be (N={labels.shape[0]}, d), "
                        f"got {tuple(x.shape)}"
                    )
                x = x if order is None else x[order]
                prepared[name, distance] = prepare_rows(x, distance)
            return ReferenceKernel(prepared[name, distance], distance, temperature)

        self._layers: dict[str, ReferenceKernel] = {
            name: kernel(name, check_distance(distances[name]), float(temperatures[name]))
            for name in self.layers
        }
        self._mass: list[tuple[str, ReferenceKernel]] = []
        for name, distance, temperature in mass_terms:
            if name not in features:
                raise ValueError(f"mass term layer {name!r} is not among {list(features)}")
            self._mass.append((name, kernel(name, check_distance(distance), float(temperature))))

    @property
    def reference_size(self) -> int:
        """N, the number of reference rows."""
        return int(self.labels.shape[0])

    def _chunks(self) -> range:
        return range(0, self.reference_size, self.chunk_size)

    def class_log_mass(
        self, layer: str, query: torch.Tensor, top: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-class log-masses of shifted logits (B, C) of ``query`` (B, d), and the ``top``
        nearest rows (B, min(top, N)) as indices into the sorted reference, nearest first (None
        when ``top`` is 0). Masses below e^-60 of a row's total are upper bounds."""
        spec = self._layers[layer]
        q = spec.query(query)
        batch = q.shape[0]
        mass = torch.full((batch, self.num_classes), float("-inf"), dtype=q.dtype, device=q.device)
        best_values: torch.Tensor | None = None
        best_ids: torch.Tensor | None = None
        for start in self._chunks():
            stop = min(start + self.chunk_size, self.reference_size)
            z = spec.logits(q, start, stop)
            row_max = z.amax(1, keepdim=True)
            weights = (z - row_max).clamp_min_(EXP_FLOOR).exp_()
            sums = torch.zeros_like(mass).index_add_(1, self.labels[start:stop], weights)
            mass = torch.logaddexp(mass, sums.log_().add_(row_max))
            if top > 0:
                values, ids = _top_k(z, top)
                ids = ids + start
                if best_values is not None and best_ids is not None:
                    values, merged = _top_k(torch.cat([best_values, values], 1), top)
                    ids = torch.cat([best_ids, ids], 1).gather(1, merged)
                best_values, best_ids = values, ids
        if best_values is None or best_ids is None:
            return mass, None
        nearest_first = torch.argsort(best_values, dim=1, descending=True, stable=True)
        return mass, best_ids.gather(1, nearest_first)

    def exact_class_log_mass(self, layer: str, query: torch.Tensor, label: int) -> torch.Tensor:
        """log sum over the rows of class ``label`` of exp(z), (B,), each chunk reduced with its
        own maximum subtracted (snnl.core.kernel.slice_logsumexp: exact at float precision, at any
        temperature); -inf for an absent class."""
        spec = self._layers[layer]
        start, stop = self._class_rows[label]
        return slice_logsumexp(spec, spec.query(query), start, stop, self.chunk_size)

    @torch.inference_mode()
    def score(
        self,
        queries: Mapping[str, torch.Tensor],
        predicted: torch.Tensor | None = None,
        *,
        k: int = 50,
        neighbors: int = 0,
    ) -> BatchScores:
        """Scores of a batch: ``queries`` maps every layer to (B, d_l); ``predicted`` (B,) or None.

        Without ``predicted`` (embedding-only models), the predicted class is the argmax of the
        soft-neighbor class probabilities in the last layer. ``k`` is the hard-count neighborhood,
        ``neighbors`` how many nearest ids to return per layer (0: none).
        """
        if k < 0 or neighbors < 0:
            raise ValueError(f"k and neighbors must be >= 0, got {k} and {neighbors}")
        top = min(max(k, neighbors), self.reference_size)
        results = {name: self.class_log_mass(name, queries[name], top) for name in self.layers}
        last_mass = results[self.layers[-1]][0]
        log_probability = last_mass - last_mass.logsumexp(1, keepdim=True)
        if predicted is None:
            pred = log_probability.argmax(1)
        else:
            pred = predicted.to(device=self.device, dtype=torch.int64)
        log_scores, counts, ids = [], [], []
        for name in self.layers:
            mass, nearest = results[name]
            total = mass.logsumexp(1)
            log_score = mass.gather(1, pred[:, None])[:, 0] - total
            log_scores.append(self._refine(name, queries[name], pred, log_score, total))
            if nearest is None:
                counts.append(torch.zeros_like(pred))
                continue
            counts.append((self.labels[nearest[:, :k]] == pred[:, None]).sum(1))
            if neighbors > 0:
                chosen = nearest[:, :neighbors]
                ids.append(chosen if self._order is None else self._order[chosen])
        masses = [
            class_log_mass(spec, queries[name], pred, self._class_rows, self.chunk_size)
            for name, spec in self._mass
        ]
        log_mass = torch.stack(masses, 1) if masses else torch.zeros(len(pred), 0)
        return BatchScores(
            predicted=pred.cpu().numpy(),
            log_score=torch.stack(log_scores, 1).double().cpu().numpy(),
            same_class=torch.stack(counts, 1).cpu().numpy(),
            neighbor_ids=torch.stack(ids, 1).cpu().numpy() if ids else None,
            class_probability=log_probability.exp().double().cpu().numpy(),
            log_mass=log_mass.double().cpu().numpy(),
        )

    def _refine(
        self,
        layer: str,
        query: torch.Tensor,
        pred: torch.Tensor,
        log_score: torch.Tensor,
        total: torch.Tensor,
    ) -> torch.Tensor:
        """log s_l with the rows below e^-60 recomputed from their class alone."""
        low = torch.nonzero(log_score < _EXACT_BELOW)[:, 0]
        if low.numel() == 0:
            return log_score
        log_score = log_score.clone()
        query = query.to(self.device)
        for label in torch.unique(pred[low]).tolist():
            rows = low[pred[low] == label]
            exact = self.exact_class_log_mass(layer, query[rows], label)
            log_score[rows] = exact - total[rows]
        return log_score


def _top_k(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of each row of ``values`` (B, n), unordered, and their columns.

    On the CPU numpy's introselect (argpartition) is several times faster than ``torch.topk``.
    """
    n = values.shape[1]
    if k >= n:
        columns = torch.arange(n, device=values.device).expand(values.shape[0], n)
        return values, columns
    if values.device.type == "cpu":
        columns = torch.from_numpy(np.argpartition(values.numpy(), n - k, axis=1)[:, n - k :])
        return values.gather(1, columns), columns
    return values.topk(k, dim=1, sorted=False)
