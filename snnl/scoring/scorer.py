"""Exact soft-neighbor scores of a batch against a reference set: shard sums, merge, finalize.

For a query h with predicted class c, in layer l with temperature T and distance D:

    m_k(h)     = logsumexp_{j: y_j = k} (-D(h, r_j) / T)        per-class log-mass, (B, C)
    log s_l(h) = m_c(h) - logsumexp_k m_k(h)

and for each neighbor-mass term (layer, distance, temperature) of the nonconformity
(snnl.scoring.neighbor_mass), the class-conditional log kernel density at the predicted class

    m(h, c)    = log( (1/n_c) sum_{j: y_j = c} exp(-D(h, r_j) / T) ).

Everything is a per-class log-sum over the reference rows (snnl.core.kernel: one matrix product per
layer and chunk, per-class sums over the slices of the label-sorted reference), so it decomposes
over any split of the rows into *shards*. That is the scoring API, local or distributed:

1. ``SoftNeighborScorer.shard_sums(queries, predicted, top=m)`` over the scorer's rows -> a
   ``ShardSums``. A scorer built on rows [a, a + n) of the label-sorted reference with
   ``row_offset=a`` is a shard: its row ids are global.
2. ``merge_shard_sums([...])``: logaddexp of the per-class sums, sum of the class counts, top-m of
   the union of the nearest rows. Associative and commutative (up to float rounding of logaddexp
   and ties among equal distances).
3. ``finalize(sums, predicted, k=..., neighbors=...)`` -> ``BatchScores``.

``SoftNeighborScorer.score`` is exactly finalize(shard_sums(all rows)), so a local and a sharded
scorer share one code path. All shards must be given the same queries, layers, temperatures,
distances, mass terms, compute dtype, ``predicted`` and ``top``.

The prediction: with logits (a network) it is argmax logits, known before the neighbor search;
pass it to ``shard_sums`` and the mass terms are summed over each query's own class only. For an
embedding-only model the prediction is argmax_k m_k(h) of the LAST layer (``predict``), which
needs every row. Two ways, both exact:

* two rounds (``score`` for very small and for large batches): ``shard_sums(..., predicted=None,
  mass=False)`` on every shard, merge, ``predict``; then ``shard_sums(..., predicted=pred,
  score=False)`` on every shard (each class's queries against that class's rows only: about 1/C
  of the first round's products), merge, and put its ``term_log_mass`` into the first merged
  sums (``dataclasses.replace``) before ``finalize``;
* one round (``score`` for batches in between): ``shard_sums(..., predicted=None)`` sums the mass
  terms for every class (B x C each, an elementwise pass over B x N per term) and ``finalize``
  picks them at its prediction.

Both give bit-identical mass terms on the CPU (same chunk grid, same operations per element).

The hard count is the number of rows of class c among the k nearest (largest z), from the merged
top-m values and labels (no sort unless more ids than k are asked for).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch

from snnl.core.distances import Distance, distance_of
from snnl.core.kernel import LayerKernel, Term, compute_dtype_of
from snnl.core.logspace import log_add, log_mean

DEFAULT_CHUNK_SIZE = 4096  # CPU: B x 4096 logits stay in the caches for small B
GPU_CHUNK_SIZE = 1 << 18  # GPU: few, large kernels (launches, not memory, limit small batches)
# Embedding-only batches take two rounds (the mass terms at the predicted class only) when they
# have at least this many queries per class, or fewer than ONE_ROUND_FROM queries (a few classes:
# few small products); in between one round (every class: an elementwise pass over B x N per
# term costs less than a second round of products padded to 16 rows for each class).
TWO_ROUNDS_PER_CLASS = 16
ONE_ROUND_FROM = 4

MassTermKey = tuple[str, Distance, float]  # (layer, distance, temperature)


@dataclass(frozen=True)
class BatchScores:
    """Scores of B queries in L layers, on the host.

    ``log_score`` (B, L) float64 is log s_l; ``same_class`` (B, L) int64 the hard counts among the
    k nearest; ``neighbor_ids`` (B, L, m) int64 the nearest reference rows, nearest first (global
    rows in the order the reference was given), or None; ``class_probability`` (B, C) float64 the
    soft-neighbor class probabilities exp(m_k - logsumexp m) of the last layer; ``log_mass``
    (B, K) float64 the neighbor-mass m(h, c) of each of the K mass terms at the predicted class.
    """

    predicted: np.ndarray
    log_score: np.ndarray
    same_class: np.ndarray
    neighbor_ids: np.ndarray | None
    class_probability: np.ndarray
    log_mass: np.ndarray


@dataclass(frozen=True)
class ShardSums:
    """Mergeable sums of a batch of B queries over a set of reference rows (a shard, or all).

    * ``class_log_mass`` (L, B, C): logsumexp over the set's rows of class k of the layer's
      shifted logits z (snnl.core.kernel; the shift depends on the query only, so it cancels in
      log s_l and in the class probabilities), -inf for a class without rows in the set.
    * ``term_log_mass`` (K, B, C): logsumexp over the set's rows of class k of -D(h, r_j)/T of
      each mass term (unshifted). When the prediction was given, only column predicted[b] of
      row b is computed; the others hold -inf.
    * ``class_count`` (C,) int64: the set's rows per class.
    * ``top_values`` (L, B, m): the m largest z of each layer in the set (-inf: padding),
      ``top_rows`` (L, B, m) int64 their global row ids (-1: padding), ``top_labels`` (L, B, m)
      int64 their classes (-1: padding); unordered.
    """

    class_log_mass: torch.Tensor
    term_log_mass: torch.Tensor
    class_count: torch.Tensor
    top_values: torch.Tensor
    top_rows: torch.Tensor
    top_labels: torch.Tensor


def merge_shard_sums(parts: Sequence[ShardSums]) -> ShardSums:
    """The sums of the union of disjoint row sets, from their sums (same queries, same
    top width m: the m largest of the union are kept)."""
    if not parts:
        raise ValueError("merge_shard_sums needs at least one ShardSums")
    if len(parts) == 1:
        return parts[0]
    values = torch.cat([p.top_values for p in parts], 2)
    width = parts[0].top_values.shape[2]
    values, pick = values.topk(width, dim=2, sorted=False)
    return ShardSums(
        class_log_mass=log_add([p.class_log_mass for p in parts]),
        term_log_mass=log_add([p.term_log_mass for p in parts]),
        class_count=torch.stack([p.class_count for p in parts]).sum(0),
        top_values=values,
        top_rows=torch.cat([p.top_rows for p in parts], 2).gather(2, pick),
        top_labels=torch.cat([p.top_labels for p in parts], 2).gather(2, pick),
    )


def top_width(k: int, neighbors: int, reference_size: int) -> int:
    """m = min(max(k, neighbors), N): the nearest rows the sums keep for a score with hard-count
    neighborhood ``k`` and ``neighbors`` ids over N reference rows (all shards together)."""
    if k < 0 or neighbors < 0:
        raise ValueError(f"k and neighbors must be >= 0, got {k} and {neighbors}")
    return min(max(k, neighbors), reference_size)


def predict(sums: ShardSums) -> torch.Tensor:
    """The soft-neighbor prediction (B,): argmax_k of the last layer's class masses (models
    without logits)."""
    return sums.class_log_mass[-1].argmax(1)


def finalize(
    sums: ShardSums,
    predicted: torch.Tensor | None,
    *,
    k: int,
    neighbors: int,
) -> BatchScores:
    """Scores from the sums of ALL reference rows.

    ``predicted`` (B,) or None (embedding-only: argmax of the last layer's class masses). ``k``
    the hard-count neighborhood, ``neighbors`` how many nearest ids per layer (0: none); both at
    most the sums' top width m (``top_width(k, neighbors, N)``).
    """
    mass = sums.class_log_mass
    log_probability = mass[-1] - mass[-1].logsumexp(1, keepdim=True)
    pred = predict(sums) if predicted is None else predicted.to(mass.device, torch.int64)
    at_pred = pred[None, :, None].expand(mass.shape[0], -1, 1)
    log_score = mass.gather(2, at_pred)[..., 0] - mass.logsumexp(2)
    terms = sums.term_log_mass
    count = sums.class_count.to(terms.device)[pred]
    at_pred = pred[None, :, None].expand(terms.shape[0], -1, 1)
    log_mass = log_mean(terms.gather(2, at_pred)[..., 0], count)
    values, rows, labels = sums.top_values, sums.top_rows, sums.top_labels
    ids = None
    if max(k, neighbors) < values.shape[2] or neighbors > 0:
        # nearest first; equal values by row id (stable sorts), as a sort by distance would
        by_row = rows.argsort(dim=2, stable=True)
        values, rows, labels = (x.gather(2, by_row) for x in (values, rows, labels))
        nearest = values.argsort(dim=2, descending=True, stable=True)
        rows, labels = rows.gather(2, nearest), labels.gather(2, nearest)
        if neighbors > 0:
            ids = rows[:, :, :neighbors].permute(1, 0, 2).cpu().numpy()
    same_class = (labels[:, :, :k] == pred[None, :, None]).sum(2)
    return BatchScores(
        predicted=pred.cpu().numpy(),
        log_score=log_score.T.double().cpu().numpy(),
        same_class=same_class.T.cpu().numpy(),
        neighbor_ids=ids,
        class_probability=log_probability.exp().double().cpu().numpy(),
        log_mass=log_mass.T.double().cpu().numpy(),
    )


class Scorer(Protocol):
    """What a ``Detector`` needs from its scorer: ``SoftNeighborScorer`` over rows on one
    device, or ``snnl.sharding.scorer.ShardedScorer`` over rows held by Ray actors."""

    @property
    def reference_size(self) -> int:
        """N, the number of reference rows (all shards together)."""
        ...

    def score(
        self,
        queries: Mapping[str, torch.Tensor],
        predicted: torch.Tensor | None = None,
        *,
        k: int = 50,
        neighbors: int = 0,
    ) -> BatchScores:
        """Scores of a batch {layer: (B, d_l)}; ``predicted`` (B,) or None (embedding-only)."""
        ...

    def unavailable(self) -> str | None:
        """None when ``score`` can answer now; else why not."""
        ...


class SoftNeighborScorer:
    """Soft-neighbor scores over a fixed reference set (or a shard of it) held on one device.

    ``features`` maps each layer to its reference matrix (N, d_l); ``labels`` (N,) holds ints in
    [0, num_classes). Rows need not be sorted: the scorer sorts them once (stably) and reports
    row ids in the order given, plus ``row_offset`` (a shard holding rows [a, a + N) of a larger
    reference passes a, and must be given in that reference's label-sorted order so that shards
    tile it). The object is read-only after construction: ``score`` is safe from several threads.

    ``mass_terms`` lists (layer, distance, temperature) triples whose neighbor mass at the
    predicted class ``score`` also returns. ``compute_dtype``: the dtype of the matrix products
    (None: float32, float64 for a float64 reference; torch.bfloat16 / torch.float16 multiply
    rounded rows and queries, accumulating in float32). ``chunk_size``: reference rows per product
    (memory O(B * chunk_size)); it must not depend on the batch (a sample's result would).
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
        row_offset: int = 0,
        compute_dtype: torch.dtype | None = None,
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
        self.labels = labels if order is None else labels[order]
        # sorted position -> global row id
        given = torch.arange(len(labels), device=self.device) if order is None else order
        self._global_rows = given + row_offset
        self._class_count = torch.bincount(self.labels, minlength=num_classes)
        terms: dict[str, list[Term]] = {}
        for name in self.layers:
            terms[name] = [_term(name, distances[name], temperatures[name])]
        self._mass: list[tuple[int, int]] = []  # (layer index, term index) of each mass term
        for name, distance, temperature in mass_terms:
            if name not in features:
                raise ValueError(f"mass term layer {name!r} is not among {list(features)}")
            term = _term(name, distance, temperature)
            if term not in terms[name][1:]:
                terms[name].append(term)
            self._mass.append((self.layers.index(name), terms[name].index(term, 1)))
        self._kernels: list[LayerKernel] = []
        for name in self.layers:
            x = features[name]
            if x.ndim != 2 or x.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"features of layer {name!r} must be (N={labels.shape[0]}, d), "
                    f"got {tuple(x.shape)}"
                )
            dtype = compute_dtype_of(x.dtype, compute_dtype)
            rows = x if order is None else x[order]
            self._kernels.append(LayerKernel(rows, self.labels, num_classes, terms[name], dtype))

    @property
    def reference_size(self) -> int:
        """N, the number of reference rows (of this shard)."""
        return int(self.labels.shape[0])

    def unavailable(self) -> str | None:
        """Always None: the rows are in this process."""
        return None

    @torch.inference_mode()
    def shard_sums(
        self,
        queries: Mapping[str, torch.Tensor],
        predicted: torch.Tensor | None = None,
        *,
        top: int,
        score: bool = True,
        mass: bool = True,
    ) -> ShardSums:
        """The ``ShardSums`` of a batch over this scorer's rows: ``queries`` maps every layer
        to (B, d_l); ``predicted`` (B,) or None (module docstring); ``top`` the width m of the
        nearest rows kept (padded with -inf / -1 beyond this scorer's N). ``score=False`` leaves
        the class masses and nearest rows out (-inf, width 0), ``mass=False`` the mass terms."""
        classes = None if predicted is None else predicted.to(self.device, torch.int64)
        local_top = min(top, self.reference_size) if score else 0
        sums, values, rows = [], [], []
        for name, kernel in zip(self.layers, self._kernels, strict=True):
            result = kernel.log_sums(
                kernel.prepare(queries[name]),
                classes,
                local_top,
                self.chunk_size,
                score=score,
                mass=mass and len(kernel.terms) > 1,
            )
            # mass terms unshifted: -D/T = z - o(h)
            shift = result.offsets[1:, :, None]
            sums.append(torch.cat([result.sums[:1], result.sums[1:] - shift]))
            values.append(result.top_values)
            rows.append(result.top_rows)
        exact = max((s.dtype for s in sums), key=lambda d: torch.finfo(d).bits)
        top_values = torch.stack([v.to(exact) for v in values])
        top_sorted = torch.stack(rows)
        labels = self.labels[top_sorted]
        top_rows = self._global_rows[top_sorted]
        width = top if score else 0
        if local_top < width:
            pad = (0, width - local_top)
            top_values = torch.nn.functional.pad(top_values, pad, value=float("-inf"))
            top_rows = torch.nn.functional.pad(top_rows, pad, value=-1)
            labels = torch.nn.functional.pad(labels, pad, value=-1)
        batch = top_values.shape[1]
        terms = [sums[layer][term].to(exact) for layer, term in self._mass]
        empty = torch.empty((0, batch, self.num_classes), dtype=exact, device=self.device)
        return ShardSums(
            class_log_mass=torch.stack([s[0].to(exact) for s in sums]),
            term_log_mass=torch.stack(terms) if terms else empty,
            class_count=self._class_count,
            top_values=top_values,
            top_rows=top_rows,
            top_labels=labels,
        )

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
        soft-neighbor class probabilities in the last layer; the mass terms take one round or
        two by batch size (``ONE_ROUND_FROM``, ``TWO_ROUNDS_PER_CLASS``; module docstring). Both
        give bit-identical sums, so a sample's scores do not depend on its batch. ``k`` is the
        hard-count neighborhood,
        ``neighbors`` how many nearest ids to return per layer (0: none).
        """
        top = top_width(k, neighbors, self.reference_size)
        batch = len(next(iter(queries.values())))
        one_round = ONE_ROUND_FROM <= batch < TWO_ROUNDS_PER_CLASS * self.num_classes
        if predicted is not None or not self._mass or one_round:
            part = self.shard_sums(queries, predicted, top=top)
            return finalize(part, predicted, k=min(k, top), neighbors=neighbors)
        part = self.shard_sums(queries, None, top=top, mass=False)
        predicted = predict(part)
        terms = self.shard_sums(queries, predicted, top=top, score=False).term_log_mass
        part = replace(part, term_log_mass=terms)
        return finalize(part, predicted, k=min(k, top), neighbors=neighbors)


def default_chunk_size(device: torch.device | str) -> int:
    """Reference rows per product for scorers on ``device``."""
    return GPU_CHUNK_SIZE if torch.device(device).type == "cuda" else DEFAULT_CHUNK_SIZE


def _term(layer: str, distance: str, temperature: float) -> Term:
    t = float(temperature)
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"temperature of layer {layer!r} must be > 0, got {temperature}")
    return Term(distance_of(distance), t)
