"""Per-class kernel sums of queries against one layer's reference rows: one product per chunk.

A layer serves one or more *terms* (distance D, temperature T): its soft-neighbor score and the
neighbor-mass terms of the nonconformity. For every term the kernel returns, per query h and
class k over a run of label-sorted reference rows r_j,

    log-sum   S_k(h) = logsumexp_{j: y_j = k} z_j(h)

of *shifted logits* z_j = -D(h, r_j)/T + o(h), where the shift o(h) is the same for every row:

    cosine:    z_j = <h/|h|, r_j/|r_j|> / T                 o(h) = 1/T
    euclidean: z_j = (2 <h, r_j> - |r_j|^2) / T             o(h) = |h|^2/T

All terms of a layer come from ONE matrix product G = (s(h) h) R^T per chunk, R the layer's rows
as the first term needs them (unit rows when any term is cosine, raw rows otherwise). Each other
term is an elementwise map of G: z = a(h) G c_j + b_j with c_j = |r_j| and b_j = -|r_j|^2/T when a
euclidean term is served from unit rows (the raw inner product is |r_j| <h, r_j/|r_j|>).

Rows are sorted by label, so class k is one contiguous slice [start_k, stop_k) (``class_slices``)
and a chunk's per-class sums are segment sums of its logits (one ``numpy.add.reduceat`` call on
the CPU), no scatter. Per chunk the B x chunk logits of a term are read a few times only:

* a cosine term with 1/T + ln(chunk) <= 87 (``LayerKernel._bounded``): z lies in [-1/T, 1/T],
  so exp(z) is taken as it is (no maximum, no shift) and summed per segment: one exp pass;
* any other term: each segment's own maximum M is subtracted, exp(z - M) clamped at e^-87 (a
  normal float32: out-of-range inputs make exp many times slower on the CPU), so S_k is exact to
  n_k e^-87 relative for every class however far below the query's best class it lies, and
  nothing underflows at any T.

Chunks and shards are merged with logaddexp in float64.

A term asked only "at the predicted class" (the neighbor-mass terms when the prediction is known
before the neighbor search) is evaluated on each predicted class's slice for the queries that
predict it when there are many queries per class (B n / C entries instead of B n), else over
every class (fewer, larger operations): both give the same bits.

The k largest z of the first term (the nearest rows) are kept as a running top-k over chunks; a
chunk is selected from only for the queries whose maximum over it beats their k-th largest so
far (snnl.core.topk). The hard count needs only the labels of those k rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from snnl.core.distances import BaseDistance
from snnl.core.logspace import EXP_FLOOR, log_add, merge_segment_sums, segment_log_sums
from snnl.core.topk import RunningTopK

_NORM_EPS = 1e-12  # as torch.nn.functional.normalize
# BLAS picks its kernels by shape, and for a few query rows (GEMV, small-M paths) or a few
# reference columns the per-element results depend on the shape and even on a row's position
# among the others. Every product is therefore at least this many query rows by this many
# reference columns (zero rows and columns padded): measured with torch's MKL on Intel Xeon and
# AMD EPYC CPUs, such products give each element the same bits whatever the other rows and
# their order, so a sample's scores do not depend on its batch (alone == merged by the server)
# and the two rounds of an embedding-only batch agree. cuBLAS chooses kernels by shape too; on
# a GPU this is not guaranteed.
MIN_GEMM_ROWS = 16
MIN_GEMM_COLUMNS = 16
# With known classes, the mass terms are evaluated per class slice (B n / C entries, but a few
# operations per class and chunk) from this many queries per class on, else over every class.
PER_CLASS_ROWS = 16
_SQ_NORM_ROWS = 65_536  # rows squared at once for the rows' |r|^2


@dataclass(frozen=True)
class Term:
    """One kernel exp(-D(h, r)/T) served from a layer's rows."""

    distance: BaseDistance
    temperature: float


def class_slices(sorted_labels: torch.Tensor, num_classes: int) -> list[tuple[int, int]]:
    """[start_k, stop_k) of each class k in ``sorted_labels`` (N,), non-decreasing ints."""
    counts = torch.bincount(sorted_labels.cpu(), minlength=num_classes)
    ends = torch.cumsum(counts, 0).tolist()
    return [(end - int(count), end) for count, end in zip(counts, ends, strict=True)]


def compute_dtype_of(stored: torch.dtype, compute: torch.dtype | None) -> torch.dtype:
    """The dtype a product runs in: ``compute`` if given, else float64 stays float64 and every
    other stored dtype (float16, bfloat16, float32) computes in float32."""
    if compute is not None:
        return compute
    return torch.float64 if stored == torch.float64 else torch.float32


class LayerKernel:
    """One layer's label-sorted reference rows (n, d) and its terms, ready for one product.

    ``labels`` (n,) non-decreasing class ids in [0, num_classes); ``terms[0]`` is the layer's own
    term (its top-k is the nearest rows); ``dtype`` the dtype of the product (rows are stored in
    it; float16/bfloat16 products accumulate and return float32, see ``_product``).
    """

    def __init__(
        self,
        rows: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        terms: Sequence[Term],
        dtype: torch.dtype,
    ) -> None:
        if not terms:
            raise ValueError("a layer kernel needs at least one term")
        self.terms = tuple(terms)
        self.num_classes = num_classes
        self.slices = class_slices(labels, num_classes)
        self._chunk_cache: dict[int, list[tuple[int, int, list[tuple[int, int, int]]]]] = {}
        self.size = int(rows.shape[0])
        self.dtype = dtype
        # norms, bias and scales in float32 (float64 stays float64) whatever the product's dtype
        self.exact = torch.float64 if rows.dtype == torch.float64 else torch.float32
        x = rows.to(self.exact)
        # unit rows when any term's distance sees them; the raw rows' norms for the others
        self.unit_rows = any(t.distance.normalizes for t in self.terms)
        raw_terms = any(not t.distance.normalizes for t in self.terms)
        norms = x.norm(dim=1)
        base = x / norms.clamp_min(_NORM_EPS)[:, None] if self.unit_rows else x
        self.rows = base.to(dtype).contiguous()
        self.norms = norms if self.unit_rows and raw_terms else None
        self.sq_norms = _sq_norms(x) if raw_terms else None

    def prepare(self, h: torch.Tensor) -> Prepared:
        """Per-batch factors of ``h`` (B, d): the product's query and each term's a(h), o(h)."""
        h = h.to(device=self.rows.device, dtype=self.exact)
        first = self.terms[0]
        # s(h) of the product G = s(h) <h, row>: the first term's c(h) (snnl.core.distances)
        scale = first.distance.query_scale(h, first.temperature)
        sq = h.pow(2).sum(1)
        factors: list[torch.Tensor | float | None] = []
        offsets = []
        for index, term in enumerate(self.terms):
            factor: torch.Tensor | float
            if term.distance is first.distance and not self._needs_columns(term):
                # the same c(h) at another temperature, on the rows it sees: z = G T_0 / T
                factor = first.temperature / term.temperature
            else:
                # z = c(h) <h, row> = G c(h) / s(h); a raw-row term on unit rows also takes
                # <h, r> = |r| <h, r^> and b(r) (``_logits``)
                factor = term.distance.query_scale(h, term.temperature, relative_to=scale)
            offsets.append(term.distance.offset(sq, term.temperature))
            plain = index == 0 and not self._needs_columns(term)
            factors.append(None if plain else factor)
        query = (h * scale[:, None]).to(self.dtype)
        return Prepared(query, factors, torch.stack(offsets, 0))

    def _needs_columns(self, term: Term) -> bool:
        """Whether term's z needs the rows' norms: a raw-row distance served from unit rows."""
        return self.unit_rows and not term.distance.normalizes

    def _product(self, query: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """G (B, stop - start) in float32/float64: the first term's z for a plain first term;
        computed as a product of at least ``MIN_GEMM_ROWS`` x ``MIN_GEMM_COLUMNS``."""
        batch = query.shape[0]
        if batch < MIN_GEMM_ROWS:  # a row's z must not depend on its batch: see MIN_GEMM_ROWS
            query = torch.cat([query, query.new_zeros(MIN_GEMM_ROWS - batch, query.shape[1])])
        width = stop - start
        rows = self.rows[start:stop]
        if width < MIN_GEMM_COLUMNS:  # a few columns: see MIN_GEMM_COLUMNS
            rows = torch.cat([rows, rows.new_zeros(MIN_GEMM_COLUMNS - width, rows.shape[1])])
        first = self.terms[0]
        bias = None
        if not self.unit_rows and self.sq_norms is not None:  # raw rows: the first term's b(r)
            bias = first.distance.row_bias(self.sq_norms[start:stop], first.temperature)
        if bias is not None:
            bias = torch.nn.functional.pad(bias.to(self.dtype), (0, rows.shape[0] - width))
            product = torch.addmm(bias, query, rows.T)
        else:
            product = query @ rows.T
        return product[:batch, :width].to(self.exact)

    def _logits(
        self,
        product: torch.Tensor,
        prepared: Prepared,
        t: int,
        rows: torch.Tensor | None,
        start: int,
        stop: int,
    ) -> torch.Tensor:
        """z of term t for the queries ``rows`` (None: all) over reference rows [start, stop)
        from their product block; the block itself, overwritten later, when z is the product
        (callers pass a block they own)."""
        factor = prepared.factors[t]
        if factor is None:
            return product
        if isinstance(factor, float):
            z = product * factor
        else:
            z = product * (factor if rows is None else factor[rows])[:, None]
        term = self.terms[t]
        if self._needs_columns(term) and self.norms is not None and self.sq_norms is not None:
            z.mul_(self.norms[start:stop])
            bias = term.distance.row_bias(self.sq_norms[start:stop], term.temperature)
            if bias is not None:
                z.add_(bias)
        return z

    def log_sums(
        self,
        prepared: Prepared,
        classes: torch.Tensor | None,
        top: int,
        chunk_size: int,
        *,
        score: bool = True,
        mass: bool = True,
        exclude: torch.Tensor | None = None,
    ) -> KernelSums:
        """Per-class log-sums of the terms over all rows, and the first term's local top-k.

        ``score``: term 0, every class, and its ``top`` largest z (top <= n). ``mass``: terms
        1.., summed only over each query's class ``classes`` (B,) when given (other columns stay
        -inf), else over every class. Without ``score`` (classes required) each chunk is
        multiplied with the queries of the classes it holds only (about B (n / C + chunk)
        products) and the mass terms evaluated on their class slices. ``exclude`` (B,) optional
        row per query left out of every sum (leave-one-out). Terms not computed stay -inf.
        """
        if not score and classes is None:
            raise ValueError("mass terms alone need the classes")
        query = prepared.query
        batch, device = query.shape[0], query.device
        every_class: dict[int, list[tuple[list[int], torch.Tensor]]] = {}
        at_class: dict[tuple[int, int], list[torch.Tensor]] = {}
        nearest = RunningTopK(top)
        mass_terms = list(range(1, len(self.terms))) if mass else []
        bounded = [self._bounded(t, chunk_size) for t in range(len(self.terms))]
        # known classes: the mass terms over each class's slice for its queries only, or, for
        # few queries per class, over every class (fewer, larger operations; the same bits)
        per_class = classes is not None and batch >= PER_CLASS_ROWS * self.num_classes
        groups = _groups(classes) if classes is not None and (per_class or not score) else {}

        def sums_of(
            t: int, z: torch.Tensor, cuts: list[int], rows: torch.Tensor | None, start: int
        ) -> torch.Tensor:
            if exclude is not None:
                _leave_out(z, (exclude if rows is None else exclude[rows]) - start)
            return segment_log_sums(z, cuts, bounded[t], exclude is not None)

        if score:
            for start, stop, segments in self._chunks(chunk_size):
                product = self._product(query, start, stop)
                ks = [k for k, _, _ in segments]
                cuts = [a - start for _, a, _ in segments]
                for t in mass_terms:
                    if not per_class:
                        z = self._logits(product, prepared, t, None, start, stop)
                        every_class.setdefault(t, []).append((ks, sums_of(t, z, cuts, None, start)))
                        continue
                    for k, a, b in segments:
                        rows = groups.get(k)
                        if rows is None:
                            continue
                        block = product[rows, a - start : b - start]
                        z = self._logits(block, prepared, t, rows, a, b)
                        at_class.setdefault((t, k), []).append(sums_of(t, z, [0], rows, a)[:, 0])
                # the first term last: when z is the product itself it is reduced in place
                z = self._logits(product, prepared, 0, None, start, stop)
                if top > 0:
                    nearest.add(z, start)
                every_class.setdefault(0, []).append((ks, sums_of(0, z, cuts, None, start)))
        elif mass_terms:
            # the same chunk grid, and each chunk multiplied whole (the queries of the classes
            # it holds), so the sums are bit-identical to the ones a score pass gives: products
            # of at least 16 x 16 do not depend on which rows are multiplied together, but a
            # narrow class slice multiplied alone can differ from the same columns of a wider
            # product (measured; MIN_GEMM_ROWS)
            for start, stop, segments in self._chunks(chunk_size):
                present = [(k, a, b, groups[k]) for k, a, b in segments if k in groups]
                if not present:
                    continue
                members = torch.cat([p[3] for p in present])
                product = self._product(query[members], start, stop)
                offset = 0
                for k, a, b, rows in present:
                    block = product[offset : offset + len(rows), a - start : b - start]
                    offset += len(rows)
                    for t in mass_terms:
                        z = self._logits(block, prepared, t, rows, a, b)
                        at_class.setdefault((t, k), []).append(sums_of(t, z, [0], rows, a)[:, 0])
        shape = (len(self.terms), batch, self.num_classes)
        # float64 log-sums (B x C, cheap): the log of a float32 sum keeps its ~1e-7 relative
        # error instead of a float32 ulp of max z (1e-6 at |z| ~ 10), so shards merge exactly
        sums = torch.full(shape, float("-inf"), dtype=torch.float64, device=device)
        for t, parts in every_class.items():
            merged = merge_segment_sums(parts, batch, self.num_classes, device)
            if t == 0 or classes is None:
                sums[t] = merged
            else:  # the other classes stay -inf, as on the per-class path
                at = classes[:, None]
                sums[t].scatter_(1, at, merged.gather(1, at))
        for (t, k), values in at_class.items():
            sums[t, groups[k], k] = log_add(values)
        if nearest.values is None or nearest.rows is None:
            empty = torch.empty((batch, 0), dtype=self.exact, device=device)
            return KernelSums(sums, prepared.offsets, empty, empty.to(torch.int64))
        return KernelSums(sums, prepared.offsets, nearest.values, nearest.rows)

    def _chunks(self, chunk_size: int) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
        """[start, stop) of each chunk of rows with its class segments (k, a, b), a <= j < b."""
        cached = self._chunk_cache.get(chunk_size)
        if cached is None:
            cached = []
            for start in range(0, self.size, chunk_size):
                stop = min(start + chunk_size, self.size)
                segments = [
                    (k, max(a, start), min(b, stop))
                    for k, (a, b) in enumerate(self.slices)
                    if a < stop and b > start
                ]
                cached.append((start, stop, segments))
            self._chunk_cache[chunk_size] = cached  # one atomic store: safe across threads
        return cached

    def _bounded(self, t: int, chunk_size: int) -> bool:
        """Whether term t's exp(z) stays in the normal float32 range with no shift at all.

        A z bounded by |z| <= M (cosine: M = 1/T) with M + ln(chunk) <= 87 has every exp(z) >=
        e^-87 a normal float32 and a slice's sum <= chunk e^M < e^88 does not overflow, so the
        slice maxima (a max and a subtraction per entry) are not needed: one exp pass per term.
        Otherwise (and for an unbounded z, euclidean) each slice's maximum is subtracted.
        """
        term = self.terms[t]
        bound = term.distance.logit_bound(term.temperature)
        return bound is not None and bound + math.log(chunk_size) <= -EXP_FLOOR


@dataclass(frozen=True)
class Prepared:
    """A batch as a ``LayerKernel`` multiplies it: ``query`` (B, d) in the product's dtype,
    ``factors[t]`` (B,) or a number: the a(h) of term t (None: z is the product itself),
    ``offsets`` (T, B)
    the shifts o(h) of each term."""

    query: torch.Tensor
    factors: list[torch.Tensor | float | None]
    offsets: torch.Tensor


@dataclass(frozen=True)
class KernelSums:
    """One layer over a run of rows: ``sums`` (T, B, C) the per-class log-sums S_k of shifted
    logits of every term, ``offsets`` (T, B) their shifts o(h), ``top_values`` (B, m) the first
    term's m largest z and ``top_rows`` (B, m) their rows (positions in the kernel), unordered."""

    sums: torch.Tensor
    offsets: torch.Tensor
    top_values: torch.Tensor
    top_rows: torch.Tensor


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    """|x_j|^2 (N,) of the rows of ``x`` (N, d), ``_SQ_NORM_ROWS`` rows at a time: no (N, d)
    temporary. Each row's sum is reduced alone, so the values are those of one pass."""
    return torch.cat([part.pow(2).sum(1) for part in x.split(_SQ_NORM_ROWS)])


def _groups(classes: torch.Tensor) -> dict[int, torch.Tensor]:
    """{class: indices of the queries that predict it}."""
    order = torch.argsort(classes, stable=True)
    values, counts = torch.unique_consecutive(classes[order], return_counts=True)
    return dict(zip(values.tolist(), torch.split(order, counts.tolist()), strict=True))


def _leave_out(z: torch.Tensor, columns: torch.Tensor) -> None:
    """z[i, columns_i] = -inf where 0 <= columns_i < z.shape[1]."""
    hit = torch.nonzero((columns >= 0) & (columns < z.shape[1]))[:, 0]
    z[hit, columns[hit]] = float("-inf")
