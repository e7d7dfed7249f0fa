"""OpenAPI examples: a real request to and response from the committed ``models/digits-mlp``.

SAMPLES are scikit-learn's digits 0, 10, 20, 30, 36 (five "0") and 1, 11, 21, 42, 47 (five "1"),
as clients send them. The responses were recorded from the model; tests/service/test_examples.py
checks that they still match it, so after retraining the default model record them again (with
the calls of that test).
"""

from __future__ import annotations

from typing import Any

SAMPLES: list[list[int]] = [  # each sample an 8 x 8 image, row by row
    [
         0,  0,  5, 13,  9,  1,  0,  0,
         0,  0, 13, 15, 10, 15,  5,  0,
         0,  3, 15,  2,  0, 11,  8,  0,
         0,  4, 12,  0,  0,  8,  8,  0,
         0,  5,  8,  0,  0,  9,  8,  0,
         0,  4, 11,  0,  1, 12,  7,  0,
         0,  2, 14,  5, 10, 12,  0,  0,
         0,  0,  6, 13, 10,  0,  0,  0,
    ],
    [
         0,  0,  1,  9, 15, 11,  0,  0,
         0,  0, 11, 16,  8, 14,  6,  0,
         0,  2, 16, 10,  0,  9,  9,  0,
         0,  1, 16,  4,  0,  8,  8,  0,
         0,  4, 16,  4,  0,  8,  8,  0,
         0,  1, 16,  5,  1, 11,  3,  0,
         0,  0, 12, 12, 10, 10,  0,  0,
         0,  0,  1, 10, 13,  3,  0,  0,
    ],
    [
         0,  0,  3, 13, 11,  7,  0,  0,
         0,  0, 11, 16, 16, 16,  2,  0,
         0,  4, 16,  9,  1, 14,  2,  0,
         0,  4, 16,  0,  0, 16,  2,  0,
         0,  0, 16,  1,  0, 12,  8,  0,
         0,  0, 15,  9,  0, 13,  6,  0,
         0,  0,  9, 14,  9, 14,  1,  0,
         0,  0,  2, 12, 13,  4,  0,  0,
    ],
    [
         0,  0, 10, 14, 11,  3,  0,  0,
         0,  4, 16, 13,  6, 14,  1,  0,
         0,  4, 16,  2,  0, 11,  7,  0,
         0,  8, 16,  0,  0, 10,  5,  0,
         0,  8, 16,  0,  0, 14,  4,  0,
         0,  8, 16,  0,  1, 16,  1,  0,
         0,  4, 16,  1, 11, 15,  0,  0,
         0,  0, 11, 16, 12,  3,  0,  0,
    ],
    [
         0,  0,  6, 14, 10,  2,  0,  0,
         0,  0, 15, 15, 13, 15,  3,  0,
         0,  2, 16, 10,  0, 13,  9,  0,
         0,  1, 16,  5,  0, 12,  5,  0,
         0,  0, 16,  3,  0, 13,  6,  0,
         0,  1, 15,  5,  6, 13,  1,  0,
         0,  0, 16, 11, 14, 10,  0,  0,
         0,  0,  7, 16, 11,  1,  0,  0,
    ],
    [
         0,  0,  0, 12, 13,  5,  0,  0,
         0,  0,  0, 11, 16,  9,  0,  0,
         0,  0,  3, 15, 16,  6,  0,  0,
         0,  7, 15, 16, 16,  2,  0,  0,
         0,  0,  1, 16, 16,  3,  0,  0,
         0,  0,  1, 16, 16,  6,  0,  0,
         0,  0,  1, 16, 16,  6,  0,  0,
         0,  0,  0, 11, 16, 10,  0,  0,
    ],
    [
         0,  0,  0,  0, 14, 13,  1,  0,
         0,  0,  0,  5, 16, 16,  2,  0,
         0,  0,  0, 14, 16, 12,  0,  0,
         0,  1, 10, 16, 16, 12,  0,  0,
         0,  3, 12, 14, 16,  9,  0,  0,
         0,  0,  0,  5, 16, 15,  0,  0,
         0,  0,  0,  4, 16, 14,  0,  0,
         0,  0,  0,  1, 13, 16,  1,  0,
    ],
    [
         0,  0,  0,  2, 16, 16,  2,  0,
         0,  0,  0,  4, 16, 16,  2,  0,
         0,  1,  4, 12, 16, 12,  0,  0,
         0,  7, 16, 16, 16, 12,  0,  0,
         0,  0,  3, 10, 16, 14,  0,  0,
         0,  0,  0,  8, 16, 12,  0,  0,
         0,  0,  0,  6, 16, 16,  2,  0,
         0,  0,  0,  2, 12, 15,  4,  0,
    ],
    [
         0,  0,  0,  0, 12,  5,  0,  0,
         0,  0,  0,  2, 16, 12,  0,  0,
         0,  0,  1, 12, 16, 11,  0,  0,
         0,  2, 12, 16, 16, 10,  0,  0,
         0,  6, 11,  5, 15,  6,  0,  0,
         0,  0,  0,  1, 16,  9,  0,  0,
         0,  0,  0,  2, 16, 11,  0,  0,
         0,  0,  0,  3, 16,  8,  0,  0,
    ],
    [
         0,  0,  0,  1, 11,  9,  0,  0,
         0,  0,  0,  7, 16, 13,  0,  0,
         0,  0,  4, 14, 16,  9,  0,  0,
         0, 10, 16, 11, 16,  8,  0,  0,
         0,  0,  0,  3, 16,  6,  0,  0,
         0,  0,  0,  3, 16,  8,  0,  0,
         0,  0,  0,  5, 16, 10,  0,  0,
         0,  0,  0,  2, 14,  6,  0,  0,
    ],
]  # fmt: skip
LABELS: list[int] = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]

SCORE_REQUEST: dict[str, Any] = {"inputs": SAMPLES[:1], "alpha": 0.05, "neighbors": 0}
SCORE_RESPONSE: dict[str, Any] = {
    "model": "digits-mlp",
    "version": "1",
    "results": [
        {
            "prediction": 0,
            "label": "0",
            "confidence": 0.9998815761509522,
            "nonconformity": -5.111157650401343,
            "p_value": 0.988929889298893,
            "outlier": False,
            "layers": [
                {
                    "name": "fc1",
                    "soft_neighbor_score": 0.9244877186127687,
                    "same_class_neighbors": 50,
                    "p_value": 0.9630996309963099,
                },
                {
                    "name": "fc2",
                    "soft_neighbor_score": 0.906310712869711,
                    "same_class_neighbors": 50,
                    "p_value": 0.8856088560885609,
                },
                {
                    "name": "fc3",
                    "soft_neighbor_score": 0.8864719790486841,
                    "same_class_neighbors": 50,
                    "p_value": 0.8265682656826568,
                },
            ],
        }
    ],
}
EVALUATE_REQUEST: dict[str, Any] = {"inputs": SAMPLES, "labels": LABELS}
EVALUATE_RESPONSE: dict[str, Any] = {
    "model": "digits-mlp",
    "version": "1",
    "size": 10,
    "layers": [
        {
            "name": "fc1",
            "distance": "cosine",
            "temperature": 0.12131466614124399,
            "snnl": 0.0021457282887484943,
            "optimal_temperature": 0.00010000000000000009,
            "entanglement": 0.0,
            "knn_accuracy": 1.0,
        },
        {
            "name": "fc2",
            "distance": "cosine",
            "temperature": 0.15241941858082209,
            "snnl": 0.0032899475981875924,
            "optimal_temperature": 0.00010000000000000009,
            "entanglement": 0.0,
            "knn_accuracy": 1.0,
        },
        {
            "name": "fc3",
            "distance": "cosine",
            "temperature": 0.16453262756468212,
            "snnl": 0.004532034149507624,
            "optimal_temperature": 0.00010000000000000009,
            "entanglement": 0.0,
            "knn_accuracy": 1.0,
        },
    ],
    "accuracy": 1.0,
    "outlier_rate": 0.0,
}

DRIFT_TIME = 1767225600.0
"""The Unix time stamped on the example's alarms (2026-01-01)."""
DRIFT_NOISE = {"seed": 0, "samples": 20, "low": 0, "high": 16}
"""The example's stream: SAMPLES, then uniform noise images (numpy's default_rng(seed), values
in [low, high)), scored in one batch and fed to a fresh monitor at DRIFT_TIME."""
DRIFT_RESPONSE: dict[str, Any] = {
    "model": "digits-mlp",
    "version": "1",
    "n_calibration": 270,
    "settings": {
        "ert": 1000000.0,
        "calibration_risk": 0.001,
        "levels": [0.0001, 0.001, 0.01, 0.05, 0.2],
        "shifts": [0.01, 0.05, 0.25],
    },
    "samples": 30,
    "statistic": 2.893229088307011,
    "threshold": 6.0,
    "alarms": 2,
    "last_alarm": {
        "sample": 25,
        "change_point": 18,
        "time": 1767225600.0,
        "statistic": 6.622715798098048,
    },
    "change_point": 26,
    "layers": {
        "fc1": {
            "samples": 30,
            "statistic": 0.10806484207153044,
            "threshold": 6.0,
            "alarms": 1,
            "last_alarm": {
                "sample": 28,
                "change_point": 10,
                "time": 1767225600.0,
                "statistic": 6.46430255078033,
            },
            "change_point": 29,
        },
        "fc2": {
            "samples": 30,
            "statistic": 4.61042315609394,
            "threshold": 6.0,
            "alarms": 0,
            "last_alarm": None,
            "change_point": 11,
        },
        "fc3": {
            "samples": 30,
            "statistic": 2.446181847906554,
            "threshold": 6.0,
            "alarms": 0,
            "last_alarm": None,
            "change_point": 10,
        },
    },
}
