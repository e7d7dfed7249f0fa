"""The ``snnl evaluate`` pipeline: OOD detection by one served model, against baselines.

For one ``Detector``, an in-distribution (ID) labeled set and one or more OOD sets, every
detector gives a score per sample, higher = more in-distribution:

* ``soft_neighbor``: -a(x), the negated nonconformity of the served flag (the manifest's kind,
  by default the neighbor mass of snnl.scoring.neighbor_mass; the same ranking as the p-value p(x),
  without its ties);
* ``msp``, ``energy``: from the logits; ``mahalanobis``, ``knn``: from the penultimate layer
  (the manifest's last layer), fitted on the model's reference set (``snnl.evaluation.baselines``);
  ``vim``: both, with the last linear layer (W, b) recovered exactly from the ID set's
  penultimate features and logits (``linear_head``; left out when the last served layer is not
  the penultimate one or the model has no logits), its principal space fitted on the reference;
* ``soft_neighbor_ratio`` (an extra row): sum_l log max(s_l, 1e-12), the ratio score's nonconformity
  (the fraction of soft-neighbor mass in the predicted class), for comparison.

Per OOD set and detector: AUROC, FPR at 95% TPR, AUPR-In and AUPR-Out
(``snnl.evaluation.ood_metrics``); OOD sets are grouped as ``near`` (semantic shift: new classes
of the same kind of data) or ``far`` (other data, noise, transforms; the default), and each group
is summarized by the mean over its sets, as OpenOOD does. On the ID set: accuracy, the flag's
false-positive rate (fraction flagged), and the per-layer embedding evaluation
(``snnl.evaluation.embeddings``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from snnl.errors import InputError
from snnl.evaluation.baselines import BaselineDetector, default_baselines, linear_head
from snnl.evaluation.embeddings import EmbeddingEvaluation, evaluate_embeddings
from snnl.evaluation.ood_metrics import OODMetrics, ood_metrics
from snnl.scoring.batch import Samples
from snnl.scoring.nonconformity import neg_log_score
from snnl.scoring.results import ScoreResult

if TYPE_CHECKING:
    from snnl.model.detector import Detector

SOFT_NEIGHBOR = "soft_neighbor"
DETECTORS: tuple[str, ...] = (SOFT_NEIGHBOR, "msp", "energy", "mahalanobis", "knn", "vim")
GROUPS: tuple[str, ...] = ("near", "far")
DEFAULT_GROUP = "far"
RATIO = "soft_neighbor_ratio"
BATCH_SIZE = 512


@dataclass
class Evaluation:
    """The result: report figures and, for plots, every detector's scores per set."""

    model: str
    version: str
    alpha: float
    nonconformity: str  # the manifest's kind, the soft_neighbor detector
    accuracy: float
    flag_false_positive_rate: float
    layers: EmbeddingEvaluation
    ood: dict[str, dict[str, OODMetrics]]
    sizes: dict[str, Any]  # {"id": N, "ood": {stem: M}}
    groups: dict[str, str]  # {stem: "near" | "far"}
    id_scores: dict[str, np.ndarray] = field(repr=False)  # detector -> (N,)
    ood_scores: dict[str, dict[str, np.ndarray]] = field(repr=False)  # stem -> detector -> (M,)

    @property
    def entanglement(self) -> dict[str, float]:
        """{layer: SNNL at T*} on the ID set."""
        return {layer.name: layer.entanglement for layer in self.layers.layers}

    def summary(self) -> dict[str, dict[str, OODMetrics]]:
        """{group: {detector: mean metrics over the group's sets}}, groups in GROUPS order,
        only those with a set."""
        out: dict[str, dict[str, OODMetrics]] = {}
        for group in GROUPS:
            stems = [stem for stem in self.ood if self.groups[stem] == group]
            if stems:
                detectors = list(self.ood[stems[0]])
                out[group] = {
                    name: OODMetrics.mean([self.ood[stem][name] for stem in stems])
                    for name in detectors
                }
        return out

    def to_json(self) -> dict[str, Any]:
        """report.json: the report keys (accuracy, flag_false_positive_rate, entanglement, ood)
        plus model, version, alpha, nonconformity, sizes, groups ({stem: near | far}), summary
        ({group: {detector: mean metrics}}) and the per-layer evaluation."""
        return {
            "model": self.model,
            "version": self.version,
            "alpha": self.alpha,
            "nonconformity": self.nonconformity,
            "accuracy": self.accuracy,
            "flag_false_positive_rate": self.flag_false_positive_rate,
            "entanglement": self.entanglement,
            "ood": {
                stem: {name: m.as_dict() for name, m in per_detector.items()}
                for stem, per_detector in self.ood.items()
            },
            "groups": self.groups,
            "summary": {
                group: {name: m.as_dict() for name, m in per_detector.items()}
                for group, per_detector in self.summary().items()
            },
            "sizes": self.sizes,
            "layers": self.layers.to_dict()["layers"],
            "score_direction": "higher = more in-distribution; ID is the positive class",
        }


def model_outputs(det: Detector, x: np.ndarray, batch_size: int = BATCH_SIZE) -> ScoreResult:
    """Run ``det`` over x in batches: its scores with the logits (None for an embedding-only
    model) and served-layer features {layer: (N, d)} of the same forward pass.

    For an embedding-only model x must be (N, d) embeddings of its single served layer.
    """
    samples: Samples = x
    if det.input_shape is None:
        if len(det.layers) != 1:
            raise InputError(
                f"x: an embedding-only model with layers {list(det.layers)} needs one "
                "embedding per layer; evaluate supports single-layer models"
            )
        samples = {det.layers[0]: x.reshape(len(x), -1)}
    return det.score(det.check(samples), batch_size=batch_size, with_features=True)


def fit_baselines(
    det: Detector,
    baselines: list[BaselineDetector] | None = None,
    head: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[BaselineDetector]:
    """The baselines fitted on the model's reference set (penultimate = the last served layer);
    by default those of ``default_baselines(head)`` (ViM needs the last linear layer ``head``).

    MSP, energy and ViM need logits, so an embedding-only model gets Mahalanobis and KNN only.
    """
    chosen = default_baselines(head) if baselines is None else baselines
    if det.input_shape is None:
        chosen = [b for b in chosen if b.name not in ("msp", "energy", "vim")]
    penultimate = det.layers[-1]
    reference = det.reference_features(penultimate)
    for baseline in chosen:
        baseline.fit(reference, det.reference_labels)
    return chosen


def detector_scores(
    outputs: ScoreResult, baselines: list[BaselineDetector], penultimate: str
) -> dict[str, np.ndarray]:
    """{detector: scores (B,)} of a ``model_outputs`` result, higher = more in-distribution."""
    assert outputs.features is not None  # model_outputs asks for them
    scores = {SOFT_NEIGHBOR: -outputs.nonconformity.astype(np.float64)}
    logits = outputs.logits
    if logits is None:
        logits = np.zeros((len(outputs.prediction), 1))
    for baseline in baselines:
        scores[baseline.name] = baseline.score(logits, outputs.features[penultimate])
    with np.errstate(divide="ignore"):  # s_l = 0 is floored at 1e-12
        scores[RATIO] = -neg_log_score(np.log(outputs.soft_neighbor_score))
    return scores


def _check_x(det: Detector, x: np.ndarray, field: str) -> None:
    if x.ndim < 2 or len(x) == 0:
        raise InputError(f"{field}: expected a non-empty (N, ...) array, got shape {x.shape}")
    if det.input_shape is not None and tuple(x.shape[1:]) != tuple(det.input_shape):
        raise InputError(
            f"{field}: samples of shape {tuple(x.shape[1:])} do not fit model {det.name!r}, "
            f"which expects {tuple(det.input_shape)}"
        )


def evaluate(
    det: Detector,
    id_x: np.ndarray,
    id_y: np.ndarray,
    ood_sets: Mapping[str, np.ndarray],
    *,
    baselines: list[BaselineDetector] | None = None,
    batch_size: int = BATCH_SIZE,
    on_scored: Callable[[int], None] | None = None,
    groups: Mapping[str, str] | None = None,
) -> Evaluation:
    """Evaluate ``det`` on the ID set (id_x (N, *shape), id_y (N,) in the model's label space)
    against each OOD set {stem: (M, *shape)}, grouped by ``groups`` {stem: "near" | "far"}
    (a stem not named is "far"). ``on_scored(n)`` is called after each set with its number of
    samples (for a progress bar)."""
    report = on_scored or (lambda n: None)
    if not ood_sets:
        raise InputError("ood: give at least one out-of-distribution set")
    chosen_groups = {stem: (groups or {}).get(stem, DEFAULT_GROUP) for stem in ood_sets}
    for stem, group in {**chosen_groups, **(groups or {})}.items():
        if stem not in ood_sets:
            raise InputError(f"groups: {stem!r} is not an OOD set ({', '.join(ood_sets)})")
        if group not in GROUPS:
            raise InputError(f"groups: {stem!r} must be near or far, got {group!r}")
    _check_x(det, id_x, "id.x")
    for stem, x in ood_sets.items():
        _check_x(det, x, f"{stem}.x")
    num_classes = len(det.class_names)
    if id_y.shape != (len(id_x),) or id_y.min() < 0 or id_y.max() >= num_classes:
        raise InputError(f"id.y: expected ({len(id_x)},) class ids in 0..{num_classes - 1}")
    penultimate = det.layers[-1]
    id_out = model_outputs(det, id_x, batch_size)
    report(len(id_x))
    assert id_out.features is not None  # model_outputs asks for them
    head = None
    if id_out.logits is not None and baselines is None:
        head = linear_head(id_out.features[penultimate], id_out.logits)
    fitted = fit_baselines(det, baselines, head)
    id_scores = detector_scores(id_out, fitted, penultimate)
    ood_scores: dict[str, dict[str, np.ndarray]] = {}
    ood: dict[str, dict[str, OODMetrics]] = {}
    for stem, x in ood_sets.items():
        outputs = model_outputs(det, x, batch_size)
        report(len(x))
        ood_scores[stem] = detector_scores(outputs, fitted, penultimate)
        ood[stem] = {
            name: ood_metrics(id_scores[name], ood_scores[stem][name]) for name in id_scores
        }
    layers = evaluate_embeddings(
        id_out.features,
        id_y,
        temperatures={layer.name: layer.temperature for layer in det.manifest.layers},
        distances={layer.name: layer.distance for layer in det.manifest.layers},
    )
    return Evaluation(
        model=det.name,
        version=det.version,
        alpha=float(det.manifest.alpha),
        nonconformity=det.manifest.nonconformity.kind,
        accuracy=float(np.mean(id_out.prediction == id_y)),
        flag_false_positive_rate=float(np.mean(id_out.outlier)),
        layers=layers,
        ood=ood,
        sizes={"id": len(id_x), "ood": {stem: len(x) for stem, x in ood_sets.items()}},
        groups=chosen_groups,
        id_scores=id_scores,
        ood_scores=ood_scores,
    )
