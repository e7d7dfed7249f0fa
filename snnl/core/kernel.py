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
and a per-class sum is a plain row reduction over a slice, no scatter. Each slice is reduced with
its OWN maximum M subtracted, exp(z - M) clamped at e^-87 (a normal float32: out-of-range inputs
make exp many times slower on the CPU): S_k is exact to n_k e^-87 relative for every class,
however far below the query's best class it lies, and nothing underflows at any T. Chunks and
shards are merged with logaddexp.

A term asked only "at the predicted class" (the neighbor-mass terms when the prediction is known
before the neighbor search) is evaluated on each predicted class's slice for the queries that
predict it: B n / C entries instead of B n.

The k largest z of the first term (the nearest rows) are kept as a running top-k over chunks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from snnl.core.distances import Distance

EXP_FLOOR = -87.0  # exp(-87) is still a normal float32
LOG_FLOOR = -1e12  # log mean kernel of a class with no rows (never for a fitted model's classes)
_NORM_EPS = 1e-12  # as torch.nn.functional.normalize
# BLAS multiplies a few query rows with other kernels (GEMV, small-M paths) than many rows, and
# they round differently. Padding every product to at least this many query rows makes a
# sample's scores independent of the batch it comes in (alone == merged by the server).
# Measured with torch's MKL on the CPU: products of 1-15 rows differ in the last bits, from 16
# rows on they agree. cuBLAS chooses kernels by shape too; on a GPU this is not guaranteed.
MIN_GEMM_ROWS = 16


@dataclass(frozen=True)
class Term:
    """One kernel exp(-D(h, r)/T) served from a layer's rows."""

    distance: Distance
    temperature: float


def class_slices(sorted_labels: torch.Tensor, num_classes: int) -> list[tuple[int, int]]:
    """[start_k, stop_k) of each class k in ``sorted_labels`` (N,), non-decreasing ints."""
    counts = torch.bincount(sorted_labels.cpu(), minlength=num_classes)
    ends = torch.cumsum(counts, 0).tolist()
    return [(end - int(count), end) for count, end in zip(counts, ends, strict=True)]


def log_mean(log_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """log(sum / n) from log(sum) and n (same shape), floored at -1e12 (n = 0: no rows)."""
    return (log_sum - count.to(log_sum.dtype).clamp_min(1.0).log()).clamp_min(LOG_FLOOR)


def class_mean_log_mass(
    rows: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    term: Term,
    h: torch.Tensor,
    classes: torch.Tensor,
    chunk_size: int,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """m_i = log mean_{j: y_j = c_i, j != exclude_i} exp(-D(h_i, r_j) / T), (B,), floored at
    -1e12, over label-sorted ``rows`` (N, d) with ``labels`` (N,), computed in their dtype (float16
    in float32). ``h`` (B, d) raw queries, ``classes`` (B,), ``exclude`` (B,) optional rows left
    out of the mean (leave-one-out)."""
    kernel = LayerKernel(rows, labels, num_classes, [term], compute_dtype_of(rows.dtype, None))
    classes = classes.to(device=rows.device, dtype=torch.int64)
    if exclude is not None:
        exclude = exclude.to(rows.device)
    result = kernel.partial(kernel.prepare(h), classes, [True], 0, chunk_size, exclude)
    log_sum = result.sums[0].gather(1, classes[:, None])[:, 0] - result.offsets[0]
    count = torch.bincount(labels, minlength=num_classes).to(rows.device)[classes]
    if exclude is not None:
        count = count - (labels[exclude] == classes).to(count.dtype)
    return log_mean(log_sum, count)


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
        self.size = int(rows.shape[0])
        self.dtype = dtype
        # norms, bias and scales in float32 (float64 stays float64) whatever the product's dtype
        self.exact = torch.float64 if rows.dtype == torch.float64 else torch.float32
        x = rows.to(self.exact)
        geometries = {t.distance for t in self.terms}
        self.unit_rows = "cosine" in geometries
        norms = x.norm(dim=1)
        base = x / norms.clamp_min(_NORM_EPS)[:, None] if self.unit_rows else x
        self.rows = base.to(dtype).contiguous()
        self.norms = norms if self.unit_rows and "euclidean" in geometries else None
        self.sq_norms = x.pow(2).sum(1) if "euclidean" in geometries else None

    def _scale(self, h: torch.Tensor) -> torch.Tensor:
        """s(h) (B,) of the product G = s(h) h R^T: 1/(|h| T_0) (cosine first term), 2/T_0."""
        first = self.terms[0]
        if first.distance == "cosine":
            return 1.0 / (h.norm(dim=1).clamp_min(_NORM_EPS) * first.temperature)
        return torch.full((h.shape[0],), 2.0 / first.temperature, dtype=h.dtype, device=h.device)

    def prepare(self, h: torch.Tensor) -> Prepared:
        """Per-batch factors of ``h`` (B, d): the product's query and each term's a(h), o(h)."""
        h = h.to(device=self.rows.device, dtype=self.exact)
        scale = self._scale(h)
        sq = h.pow(2).sum(1)
        factors, offsets = [], []
        for index, term in enumerate(self.terms):
            if term.distance == "cosine":
                # z = <h, r^> / (|h| T) = G / (s |h| T); G itself for a cosine first term
                inv = h.norm(dim=1).clamp_min(_NORM_EPS) * term.temperature * scale
                offsets.append(torch.full_like(sq, 1.0 / term.temperature))
            elif self.unit_rows:
                # z = 2 |r| <h, r^> / T - |r|^2 / T = G (2 / (s T)) |r| - |r|^2 / T
                inv = scale * term.temperature / 2.0
                offsets.append(sq / term.temperature)
            else:
                # raw rows: G = (2 <h, r> - |r|^2) / T_0, so z = G T_0 / T
                inv = torch.full_like(sq, term.temperature / self.terms[0].temperature)
                offsets.append(sq / term.temperature)
            plain = index == 0 and not self._needs_columns(term)
            factors.append(None if plain else 1.0 / inv)
        query = (h * scale[:, None]).to(self.dtype)
        return Prepared(query, factors, torch.stack(offsets, 0))

    def _needs_columns(self, term: Term) -> bool:
        return self.unit_rows and term.distance == "euclidean"

    def _product(self, query: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """G (B, stop - start) in float32/float64: the first term's z for a plain first term."""
        batch = query.shape[0]
        if batch < MIN_GEMM_ROWS:  # a row's z must not depend on its batch: see MIN_GEMM_ROWS
            query = torch.cat([query, query.new_zeros(MIN_GEMM_ROWS - batch, query.shape[1])])
        rows = self.rows[start:stop].T
        if not self.unit_rows and self.sq_norms is not None:  # euclidean first term, raw rows
            bias = (self.sq_norms[start:stop] / -self.terms[0].temperature).to(self.dtype)
            product = torch.addmm(bias, query, rows)
        else:
            product = query @ rows
        return product[:batch].to(self.exact)

    def _logits(
        self,
        product: torch.Tensor,
        factor: torch.Tensor | None,
        term: Term,
        start: int,
        stop: int,
    ) -> torch.Tensor:
        """z of ``term`` over rows [start, stop) from their product columns (the product itself,
        to be overwritten, when z is the product: callers pass a tensor they own)."""
        if factor is None:
            return product
        z = product * factor[:, None]
        if self._needs_columns(term) and self.norms is not None and self.sq_norms is not None:
            z.mul_(self.norms[start:stop]).sub_(self.sq_norms[start:stop] / term.temperature)
        return z

    def partial(
        self,
        prepared: Prepared,
        classes: torch.Tensor | None,
        at_class: Sequence[bool],
        top: int,
        chunk_size: int,
        exclude: torch.Tensor | None = None,
    ) -> KernelSums:
        """Per-class log-sums of every term over all rows, and the first term's local top-k.

        ``classes`` (B,) the predicted class of each query (None: not known); a term with
        ``at_class[t]`` true and known classes is summed only over its query's class (the other
        columns stay -inf). ``top`` the number of largest first-term z kept (<= n). ``exclude``
        (B,) optional row per query left out of every sum (leave-one-out; then ``top`` is 0).
        """
        query = prepared.query
        batch, device = query.shape[0], query.device
        shape = (len(self.terms), batch, self.num_classes)
        # float64 log-sums (B x C, cheap): the log of a float32 sum keeps its ~1e-7 relative
        # error instead of a float32 ulp of max z (1e-6 at |z| ~ 10), so sums merge exactly
        sums = torch.full(shape, float("-inf"), dtype=torch.float64, device=device)
        groups = _groups(classes) if classes is not None else {}
        guard = exclude is not None
        best: tuple[torch.Tensor, torch.Tensor] | None = None
        # the first term last: when z is the product itself it is reduced in place
        order = [*range(1, len(self.terms)), 0]
        for start in range(0, self.size, chunk_size):
            stop = min(start + chunk_size, self.size)
            product = self._product(query, start, stop)
            segments = [
                (k, max(a, start) - start, min(b, stop) - start)
                for k, (a, b) in enumerate(self.slices)
                if a < stop and b > start
            ]
            for t in order:
                term, factor = self.terms[t], prepared.factors[t]
                if classes is not None and at_class[t]:
                    for k, a, b in segments:
                        rows = groups.get(k)
                        if rows is None:
                            continue
                        z = self._logits(
                            product[rows, a:b],
                            None if factor is None else factor[rows],
                            term,
                            start + a,
                            start + b,
                        )
                        if exclude is not None:
                            _leave_out(z, exclude[rows] - (start + a))
                        _accumulate(sums[t], rows, k, _logsumexp(z, guard))
                    continue
                z = self._logits(product, factor, term, start, stop)
                if exclude is not None:
                    _leave_out(z, exclude - start)
                if t == 0 and top > 0:
                    best = _merge_top(best, *_top_k(z, min(top, stop - start)), start, top)
                for k, a, b in segments:
                    _accumulate(sums[t], None, k, _logsumexp(z[:, a:b], guard))
        if best is None:
            empty = torch.empty((batch, 0), dtype=self.exact, device=device)
            best = (empty, torch.empty((batch, 0), dtype=torch.int64, device=device))
        return KernelSums(sums=sums, offsets=prepared.offsets, top_values=best[0], top_rows=best[1])


@dataclass(frozen=True)
class Prepared:
    """A batch as a ``LayerKernel`` multiplies it: ``query`` (B, d) in the product's dtype,
    ``factors[t]`` (B,) the a(h) of term t (None: z is the product itself), ``offsets`` (T, B)
    the shifts o(h) of each term."""

    query: torch.Tensor
    factors: list[torch.Tensor | None]
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


def _groups(classes: torch.Tensor) -> dict[int, torch.Tensor]:
    """{class: indices of the queries that predict it}."""
    order = torch.argsort(classes, stable=True)
    values, counts = torch.unique_consecutive(classes[order], return_counts=True)
    return dict(zip(values.tolist(), torch.split(order, counts.tolist()), strict=True))


def _logsumexp(z: torch.Tensor, guard: bool) -> torch.Tensor:
    """log sum_j exp(z_ij) (B,) of a slice (overwritten), its own row maximum subtracted and the
    exp clamped at e^-87 (module docstring); ``guard``: z holds -inf entries (left-out rows, that
    must count 0, not e^-87), reduced by torch.logsumexp without the clamp instead."""
    if guard:
        return torch.logsumexp(z, 1)
    top = z.amax(1, keepdim=True)
    return z.sub_(top).clamp_min_(EXP_FLOOR).exp_().sum(1).double().log_().add_(top[:, 0])


def _leave_out(z: torch.Tensor, columns: torch.Tensor) -> None:
    """z[i, columns_i] = -inf where 0 <= columns_i < z.shape[1]."""
    hit = torch.nonzero((columns >= 0) & (columns < z.shape[1]))[:, 0]
    z[hit, columns[hit]] = float("-inf")


def _accumulate(
    sums: torch.Tensor, rows: torch.Tensor | None, label: int, values: torch.Tensor
) -> None:
    """sums[rows, label] = logaddexp(sums[rows, label], values)."""
    if rows is None:
        sums[:, label] = torch.logaddexp(sums[:, label], values)
    else:
        sums[rows, label] = torch.logaddexp(sums[rows, label], values)


def _top_k(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of each row of ``values`` (B, n), unordered, and their columns."""
    return values.topk(k, dim=1, sorted=False)


def _merge_top(
    best: tuple[torch.Tensor, torch.Tensor] | None,
    values: torch.Tensor,
    columns: torch.Tensor,
    start: int,
    top: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The running top-``top`` merged with a chunk's candidates (columns offset by ``start``)."""
    rows = columns + start
    if best is None:
        return values, rows
    values = torch.cat([best[0], values], 1)
    rows = torch.cat([best[1], rows], 1)
    if values.shape[1] <= top:
        return values, rows
    kept, pick = values.topk(top, dim=1, sorted=False)
    return kept, rows.gather(1, pick)
