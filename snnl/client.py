"""A typed client of the service's ``/v1`` HTTP API (httpx), JSON or ``.npy`` request bodies.

    from snnl.client import Client

    with Client("http://127.0.0.1:8000", api_key=KEY) as client:
        results = client.score("digits-mlp", x)  # x: (B, 64) float32, sent as .npy
        results[0]["p_value"], results[0]["outlier"]

An array is sent as one ``application/x-npy`` body (``alpha``/``neighbors`` as query
parameters), the fastest encoding; ``embeddings`` of several layers and ``evaluate`` go as JSON.
Every non-2xx answer raises ``ServiceError`` carrying the status and the server's detail, a
network failure ``ServiceError`` with status 0: both are ``SnnlError`` (the CLI prints one line).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, TypedDict

import httpx
import numpy as np
from numpy.typing import ArrayLike

from snnl.errors import SnnlError

NPY_MEDIA_TYPE = "application/x-npy"


class LayerScore(TypedDict, total=False):
    """One layer's view of one sample (``neighbors`` only when asked)."""

    name: str
    soft_neighbor_score: float
    same_class_neighbors: int
    p_value: float
    neighbors: list[int] | None


class _SampleScore(TypedDict):
    prediction: int
    label: str
    confidence: float
    nonconformity: float
    p_value: float
    outlier: bool
    layers: list[LayerScore]


class SampleScore(_SampleScore, total=False):
    """One sample's prediction, scores and calibrated outlier flag (``outlier_fdr``: only when
    the request asked for a batch FDR level)."""

    outlier_fdr: bool


class ServiceError(SnnlError):
    """The service refused a request (``status``: the HTTP status; 0: it could not be reached)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}" if status else detail)
        self.status = status
        self.detail = detail


class Client:
    """The ``/v1`` API of one service at ``url``; an API key goes as ``Authorization: Bearer``."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def ready(self) -> bool:
        """True once every model is loaded and warmed up (``/readyz`` is 200)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def models(self) -> list[dict[str, Any]]:
        """Every model: name, version, input shape, layers, classes, reference size, alpha."""
        return list(self._request("GET", "/v1/models")["models"])

    def model(self, name: str) -> dict[str, Any]:
        """One model's manifest and calibration summary."""
        return dict(self._request("GET", f"/v1/models/{name}"))

    def score(
        self,
        model: str,
        inputs: ArrayLike | None = None,
        *,
        embeddings: Mapping[str, ArrayLike] | None = None,
        alpha: float | None = None,
        guarantee: str | None = None,
        delta: float | None = None,
        fdr: float | None = None,
        neighbors: int = 0,
        encoding: Literal["npy", "json"] = "npy",
    ) -> list[SampleScore]:
        """Score ``inputs`` (B, *input_shape), or the ``embeddings`` {layer: (B, d)}.

        ``encoding="npy"`` sends an array (or one layer's embeddings) as one .npy body, else
        JSON; ``alpha``, ``guarantee`` and ``delta`` set the flag's rule (default: the model's),
        ``fdr`` adds ``outlier_fdr`` (Benjamini-Hochberg over this request), ``neighbors`` k adds
        the ids of the k nearest reference points per layer.
        """
        rule = {"alpha": alpha, "guarantee": guarantee, "delta": delta, "fdr": fdr}
        given = {key: value for key, value in rule.items() if value is not None}
        if (inputs is None) == (embeddings is None):
            raise ValueError("give exactly one of inputs and embeddings")
        path = f"/v1/models/{model}/score"
        single = inputs if inputs is not None else _only_layer(embeddings)
        if encoding == "npy" and single is not None:
            params: dict[str, Any] = {"neighbors": neighbors, **given}
            body = self._request(
                "POST", path, content=_npy(single), params=params,
                headers={"Content-Type": NPY_MEDIA_TYPE},
            )  # fmt: skip
        else:
            payload: dict[str, Any] = {"alpha": alpha, "neighbors": neighbors, **given}
            if inputs is not None:
                payload["inputs"] = np.asarray(inputs).tolist()
            else:
                payload["embeddings"] = {k: np.asarray(v).tolist() for k, v in embeddings.items()}  # type: ignore[union-attr]
            body = self._request("POST", path, json=payload)
        return list(body["results"])

    def evaluate(
        self,
        model: str,
        labels: Sequence[int | str] | np.ndarray,
        inputs: ArrayLike | None = None,
        *,
        embeddings: Mapping[str, ArrayLike] | None = None,
    ) -> dict[str, Any]:
        """Evaluate a labeled batch: per layer SNNL at T_l, T*, entanglement, k-NN accuracy."""
        payload: dict[str, Any] = {"labels": np.asarray(labels).tolist()}
        if inputs is not None:
            payload["inputs"] = np.asarray(inputs).tolist()
        if embeddings is not None:
            payload["embeddings"] = {k: np.asarray(v).tolist() for k, v in embeddings.items()}
        return dict(self._request("POST", f"/v1/models/{model}/evaluate", json=payload))

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise ServiceError(0, f"cannot reach {self._http.base_url}: {err}") from err
        if response.is_success:
            return response.json()
        try:
            detail = str(response.json()["detail"])
        except (ValueError, KeyError, TypeError):
            detail = response.text[:200] or response.reason_phrase
        raise ServiceError(response.status_code, detail)


def _only_layer(embeddings: Mapping[str, ArrayLike] | None) -> ArrayLike | None:
    """The one layer's array of single-layer embeddings (sent as .npy); None otherwise."""
    if embeddings is not None and len(embeddings) == 1:
        return next(iter(embeddings.values()))
    return None


def _npy(array: ArrayLike) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()
