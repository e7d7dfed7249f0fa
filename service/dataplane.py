"""The data plane: one path from a decoded request to its scores, for every protocol.

``/v1`` and ``/v2`` routes only decode their protocol's body into a ``Given`` (what the request
carries, unchecked) with ``alpha`` and ``neighbors``, and encode the ``Scored`` they get back.
Everything in between happens here, once, in this order:

1. resolve the model version that serves now (404 unknown, 503 loading or unavailable);
2. choose between samples and embeddings by what the model takes (the only place that does) and
   check them: shape, dtype, finiteness, layers (422);
3. check ``neighbors`` against the reference size and the flag's rule against the calibration
   (422 naming the value and n_cal);
4. submit the batch to the model's ``DynamicBatcher`` (413 / 503 when its queue cannot take it)
   and note the batch size for the request's log line;
5. await the result, giving up when the client disconnects first (499; its samples leave the
   queue, so no batch scores samples nobody waits for);
6. with ``fdr``: Benjamini-Hochberg over this request's p-values alone (its batch may have been
   merged with other requests' rows: the rule is grouped on, the batch FDR is applied here).

No ``await`` separates resolving the model from queueing the samples, so a reload that swaps the
model cannot slip in between. The batch metrics are observed by the batch runner, the request
metrics and the log line by ``service.http.logging.RequestLogMiddleware``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request

from service.http.disconnect import unless_disconnected
from service.http.errors import InvalidInput
from service.runtime.models import InputSpec, ServedModel, ServiceState
from service.runtime.runner import FlagOptions
from snnl.scoring.batch import CheckedBatch, num_rows
from snnl.scoring.results import ScoreResult
from snnl.scoring.validation import check_embeddings, check_inputs, check_neighbors

SAMPLES_TENSOR = "inputs"
"""The name of the samples: the JSON field of /v1, the input tensor of /v2."""


@dataclass(frozen=True, slots=True)
class Given:
    """What a request carries, decoded but not checked.

    ``inputs``: the samples (B, *input_shape) as sent (nested lists or an array), when the
    request can be read as samples. ``embeddings``: {layer: (B, d_l)} as sent, when it can be
    read as embeddings. ``unnamed``: the request held one unnamed array (an ``.npy`` body, in
    ``inputs``): the samples, or the embeddings of a model that serves one layer. ``tensors``:
    the names of a /v2 request's tensors (for its error message).
    """

    inputs: Any = None
    embeddings: Mapping[str, Any] | None = None
    unnamed: bool = False
    tensors: tuple[str, ...] | None = None

    @classmethod
    def array(cls, array: np.ndarray) -> Given:
        """One unnamed array (an ``.npy`` body)."""
        return cls(inputs=array, unnamed=True)

    @classmethod
    def named(cls, tensors: Mapping[str, np.ndarray]) -> Given:
        """Named tensors (/v2): the samples if the only one is ``inputs``, else per layer."""
        names = tuple(tensors)
        samples = tensors[SAMPLES_TENSOR] if names == (SAMPLES_TENSOR,) else None
        return cls(inputs=samples, embeddings=tensors, tensors=names)


def checked_samples(spec: InputSpec, given: Given) -> CheckedBatch:
    """The batch of ``given`` for a model taking ``spec``: samples (B, *input_shape) float32 for a
    model with a network, {layer: (B, d_l) float32} for an embedding-only model; 422 naming the
    field otherwise. The choice between the two is made here and nowhere else."""
    if spec.input_shape is not None:
        if given.inputs is not None:
            return check_inputs(given.inputs, spec.input_shape)
        if given.tensors is not None:
            shape = ", ".join(map(str, spec.input_shape))
            raise InvalidInput(
                f"inputs: this model takes one tensor {SAMPLES_TENSOR!r} (B, {shape}), "
                f"got {list(given.tensors)}"
            )
        raise InvalidInput("inputs: required for this model (raw samples, not embeddings)")
    if given.embeddings is not None:
        return check_embeddings(given.embeddings, spec.layer_dims)
    if not given.unnamed:
        raise InvalidInput("embeddings: required for this embedding-only model, not inputs")
    if len(spec.layer_dims) != 1:
        raise InvalidInput(
            f"body: an .npy body holds one array but the model serves layers "
            f"{list(spec.layer_dims)}; send JSON {{'embeddings': {{layer: [[...]]}}}}"
        )
    return check_embeddings({layer: given.inputs for layer in spec.layer_dims}, spec.layer_dims)


def class_labels(value: Sequence[int | str], class_names: Sequence[str], n: int) -> np.ndarray:
    """Labels as class indices (B,) int64, from indices 0..C-1 or from class names."""
    if len(value) != n:
        raise InvalidInput(f"labels: expected {n} labels (one per sample), got {len(value)}")
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.empty(n, dtype=np.int64)
    for row, label in enumerate(value):
        if isinstance(label, str):
            if label not in index:
                raise InvalidInput(
                    f"labels.{row}: unknown class name {label!r}; classes {list(class_names)}"
                )
            labels[row] = index[label]
        elif 0 <= label < len(class_names):
            labels[row] = label
        else:
            raise InvalidInput(
                f"labels.{row}: class index {label} outside 0..{len(class_names) - 1}"
            )
    return labels


@dataclass(frozen=True, slots=True)
class Scored:
    """A scored request: the model version that scored it, and one result row per sample."""

    model: ServedModel
    result: ScoreResult


class DataPlane:
    """Scores and evaluates decoded requests against the models of a ``ServiceState``."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def model(self, name: str) -> ServedModel:
        """The version of ``name`` that serves now (404 / 503): what a route checks before it
        reads a body."""
        return self.state.served(name)

    async def score(
        self,
        request: Request,
        name: str,
        given: Given,
        *,
        alpha: float | None,
        neighbors: int,
        guarantee: str | None = None,
        delta: float | None = None,
        fdr: float | None = None,
    ) -> Scored:
        """Score ``given`` with model ``name`` under the flag rule ``alpha``, ``guarantee``,
        ``delta`` (each None: the manifest's) and the batch FDR level ``fdr``, with the ids of
        the ``neighbors`` nearest reference points per layer."""
        served = self.state.served(name)
        samples = checked_samples(served.spec, given)
        k = check_neighbors(neighbors, served.info.reference_size)
        rule = served.detector.flag_rule(alpha, guarantee, delta, fdr)
        request.state.batch_size = num_rows(samples)
        flag = FlagOptions(rule.alpha, rule.guarantee, rule.delta)
        submitted = served.batcher.submit(samples, flag=flag, neighbors=k)
        result = await unless_disconnected(request, submitted)
        return Scored(served, result.with_fdr(rule.fdr))

    async def evaluate(
        self, request: Request, name: str, given: Given, labels: Sequence[int | str]
    ) -> tuple[ServedModel, dict[str, Any]]:
        """Embedding evaluation of a labeled batch (``labels``: class indices or names) in the
        model's scoring thread; the model version and the evaluation as plain values."""
        served = self.state.served(name)
        samples = checked_samples(served.spec, given)
        n = num_rows(samples)
        request.state.batch_size = n
        checked = class_labels(labels, served.class_names, n)
        return served, await unless_disconnected(request, served.evaluate(samples, checked))
