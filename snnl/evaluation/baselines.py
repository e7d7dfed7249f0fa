"""Baseline OOD detectors, in the style of pytorch-ood: small ``fit`` / ``score`` objects.

Every detector is fitted on the model's reference set (penultimate-layer training features
(N, d) and labels (N,)) and scores a batch from its logits (B, C) and penultimate features
(B, d). Scores are "higher = more in-distribution" (the negated outlier scores of the papers),
returned as float64 (B,).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
from scipy.special import logsumexp, softmax

from snnl.errors import InputError

_QUERY_CHUNK = 1024


def _as_matrix(values: np.ndarray, field: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise InputError(f"{field}: expected a non-empty (rows, dims) array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{field}: values must be finite (found NaN or inf)")
    return arr


class BaselineDetector(ABC):
    """A fit/score OOD detector; ``name`` is its key in reports."""

    name: ClassVar[str]

    def fit(self, features: np.ndarray, labels: np.ndarray) -> BaselineDetector:
        """Fit on reference features (N, d) and labels (N,); returns ``self``."""
        return self

    @abstractmethod
    def score(self, logits: np.ndarray, features: np.ndarray) -> np.ndarray:
        """ID scores (B,) from logits (B, C) and penultimate features (B, d); higher = more ID."""


class MSP(BaselineDetector):
    """Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017).

    score(x) = max_c softmax(f(x))_c
    """

    name = "msp"

    def score(self, logits: np.ndarray, features: np.ndarray) -> np.ndarray:
        return softmax(_as_matrix(logits, "logits"), axis=1).max(axis=1)


class Energy(BaselineDetector):
    """Negative free energy (Liu, Wang, Owens & Li, NeurIPS 2020).

    score(x) = T * logsumexp_c(f(x)_c / T), with T = 1 by default (= -E(x; f)).
    """

    name = "energy"

    def __init__(self, temperature: float = 1.0) -> None:
        if not temperature > 0:
            raise InputError(f"temperature: expected > 0, got {temperature}")
        self.temperature = temperature

    def score(self, logits: np.ndarray, features: np.ndarray) -> np.ndarray:
        t = self.temperature
        return t * logsumexp(_as_matrix(logits, "logits") / t, axis=1)


class Mahalanobis(BaselineDetector):
    """Class-conditional Gaussians with a tied covariance (Lee, Lee, Lee & Shin, NeurIPS 2018).

    mu_c = mean of the class-c features
    Sigma = (1/N) sum_c sum_{i: y_i = c} (h_i - mu_c)(h_i - mu_c)^T
    score(x) = -min_c (h - mu_c)^T Sigma^+ (h - mu_c)

    Sigma^+ is the pseudo-inverse (eigenvalues below ``rtol`` * the largest are dropped, as in
    ``scipy.linalg.pinvh``), so dead units (zero variance) do not blow the distance up. No input
    pre-processing (the paper's gradient step) and a single layer: the plain feature-space method.
    """

    name = "mahalanobis"

    def __init__(self, rtol: float = 1e-10) -> None:
        self.rtol = rtol
        self.whitener: np.ndarray | None = None  # (d, r): Sigma^+ = W W^T
        self.white_means: np.ndarray | None = None  # (C, r): mu_c W

    def fit(self, features: np.ndarray, labels: np.ndarray) -> Mahalanobis:
        h = _as_matrix(features, "features")
        y = np.asarray(labels)
        if y.shape != (h.shape[0],):
            raise InputError(f"labels: expected shape ({h.shape[0]},), got {y.shape}")
        classes = np.unique(y)
        means = np.stack([h[y == c].mean(axis=0) for c in classes])
        centered = h - means[np.searchsorted(classes, y)]
        covariance = centered.T @ centered / h.shape[0]
        eigvals, eigvecs = np.linalg.eigh(covariance)
        keep = eigvals > self.rtol * max(float(eigvals.max()), np.finfo(np.float64).tiny)
        self.whitener = eigvecs[:, keep] / np.sqrt(eigvals[keep])
        self.white_means = means @ self.whitener
        return self

    def score(self, logits: np.ndarray, features: np.ndarray) -> np.ndarray:
        if self.whitener is None or self.white_means is None:
            raise RuntimeError("Mahalanobis.score called before fit")
        z = _as_matrix(features, "features") @ self.whitener
        sq = (
            (z**2).sum(axis=1, keepdims=True)
            + (self.white_means**2).sum(axis=1)[None, :]
            - 2.0 * z @ self.white_means.T
        )
        return -np.maximum(sq, 0.0).min(axis=1)


class KNN(BaselineDetector):
    """Deep nearest neighbors (Sun, Ming, Zhu & Li, ICML 2022), on normalized features.

    z = h / |h|; score(x) = -|z(x) - z_(k)|, the L2 distance to the k-th nearest normalized
    reference feature (k = 50 by default, the paper's choice for CIFAR-10). The normalization
    is the paper's (their ablation: without it the detector is much weaker).
    """

    name = "knn"

    def __init__(self, k: int = 50) -> None:
        if k < 1:
            raise InputError(f"k: expected >= 1, got {k}")
        self.k = k
        self.reference: np.ndarray | None = None  # (N, d) unit rows

    @staticmethod
    def _normalize(h: np.ndarray) -> np.ndarray:
        return h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)

    def fit(self, features: np.ndarray, labels: np.ndarray) -> KNN:
        h = _as_matrix(features, "features")
        if h.shape[0] < self.k:
            raise InputError(
                f"features: KNN with k={self.k} needs >= {self.k} rows, got {h.shape[0]}"
            )
        self.reference = self._normalize(h)
        return self

    def score(self, logits: np.ndarray, features: np.ndarray) -> np.ndarray:
        if self.reference is None:
            raise RuntimeError("KNN.score called before fit")
        z = self._normalize(_as_matrix(features, "features"))
        out = np.empty(z.shape[0])
        for start in range(0, z.shape[0], _QUERY_CHUNK):
            chunk = z[start : start + _QUERY_CHUNK]
            # |a - b|^2 = 2 - 2 <a, b> for unit rows.
            sq = np.maximum(2.0 - 2.0 * chunk @ self.reference.T, 0.0)
            kth = np.partition(sq, self.k - 1, axis=1)[:, self.k - 1]
            out[start : start + _QUERY_CHUNK] = -np.sqrt(kth)
        return out


class ViM(BaselineDetector):
    """Virtual-logit matching (Wang, Li, Feng & Zhang, CVPR 2022).

    With the last linear layer logits = W h + b (W (C, d), b (C,)):

        o = -W^+ b                           the origin the logits are measured from
        P = the top-D eigenvectors of the covariance of (h_i - o) over the reference set
        r(x) = |(I - P P^T)(h(x) - o)|       the norm of the residual outside the principal space
        alpha = mean_i max_c f(h_i)_c / mean_i r(x_i)      over the reference set
        score(x) = logsumexp_c f(x)_c - alpha * r(x)       (higher = more in-distribution)

    i.e. the energy score minus a virtual logit that grows with the residual. D defaults to
    half the feature dimension, capped by the number of non-degenerate directions (the paper
    uses D = 1000 of 2048 for ResNet features; OpenOOD uses 256 of 512): features that only
    differ from the training data off the principal space look out-of-distribution.
    """

    name = "vim"

    def __init__(self, weight: np.ndarray, bias: np.ndarray, dim: int | None = None) -> None:
        self.weight = _as_matrix(weight, "weight")
        self.bias = np.asarray(bias, dtype=np.float64)
        if self.bias.shape != (self.weight.shape[0],):
            raise InputError(
                f"bias: expected shape ({self.weight.shape[0]},) to match weight "
                f"{self.weight.shape}, got {self.bias.shape}"
            )
        if dim is not None and dim < 1:
            raise InputError(f"dim: expected >= 1, got {dim}")
        self.dim = dim
        self.origin = -np.linalg.pinv(self.weight) @ self.bias  # (d,)
        self.residual_basis: np.ndarray | None = None  # (d, d - D)
        self.alpha: float | None = None

    def _residual(self, h: np.ndarray) -> np.ndarray:
        assert self.residual_basis is not None
        return np.linalg.norm((h - self.origin) @ self.residual_basis, axis=1)

    def fit(self, features: np.ndarray, labels: np.ndarray) -> ViM:
        h = _as_matrix(features, "features")
        d = h.shape[1]
        if self.weight.shape[1] != d:
            raise InputError(
                f"features: {d} dimensions do not fit the weight's {self.weight.shape[1]}"
            )
        centered = h - self.origin
        eigvals, eigvecs = np.linalg.eigh(centered.T @ centered / h.shape[0])  # ascending
        informative = int(np.sum(eigvals > 1e-10 * max(float(eigvals.max()), 1e-300)))
        dim = self.dim if self.dim is not None else max(1, min(d // 2, informative - 1))
        if not 1 <= dim < d:
            raise InputError(f"dim: expected 1 <= D < {d} (the feature dimension), got {dim}")
        self.residual_basis = eigvecs[:, : d - dim]  # the d - D smallest directions
        max_logit = (h @ self.weight.T + self.bias).max(axis=1)
        residual = self._residual(h)
        self.alpha = float(max_logit.mean() / max(float(residual.mean()), 1e-12))
        return self

    def score(self, logits: np.ndarray, features: np.ndarray) -> np.ndarray:
        if self.residual_basis is None or self.alpha is None:
            raise RuntimeError("ViM.score called before fit")
        energy = logsumexp(_as_matrix(logits, "logits"), axis=1)
        return energy - self.alpha * self._residual(_as_matrix(features, "features"))


def linear_head(
    features: np.ndarray, logits: np.ndarray, *, tolerance: float = 1e-3
) -> tuple[np.ndarray, np.ndarray] | None:
    """The last linear layer (W (C, d), b (C,)) recovered from penultimate features (N, d) and
    logits (N, C) of the same samples by least squares, or None when logits = W h + b does not
    hold within ``tolerance`` * (1 + max |logit|) (the features are not the penultimate layer).

    The head of a net is exactly affine in its penultimate layer, so the fit is exact up to
    rounding; directions with no variance (dead units) get weight 0 (the minimum-norm solution),
    which leaves W h + b unchanged on the data.
    """
    h = _as_matrix(features, "features")
    z = _as_matrix(logits, "logits")
    if z.shape[0] != h.shape[0] or h.shape[0] <= h.shape[1]:
        return None
    design = np.hstack([h, np.ones((h.shape[0], 1))])
    solution, *_ = np.linalg.lstsq(design, z, rcond=None)
    if np.abs(design @ solution - z).max() > tolerance * (1.0 + np.abs(z).max()):
        return None
    return solution[:-1].T.copy(), solution[-1].copy()


def default_baselines(
    head: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[BaselineDetector]:
    """MSP, energy, Mahalanobis and KNN (k = 50), and ViM when the last linear layer
    ``head`` = (W, b) is known, in report order."""
    chosen: list[BaselineDetector] = [MSP(), Energy(), Mahalanobis(), KNN()]
    if head is not None:
        chosen.append(ViM(*head))
    return chosen
