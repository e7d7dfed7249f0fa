"""Plain float64 formulas the log-space code is tested against."""

from __future__ import annotations

import itertools
import math

import numpy as np


def slow_segment_log_sums(z: np.ndarray, cuts: list[int]) -> np.ndarray:
    bounds = [*cuts, z.shape[1]]
    out = np.empty((z.shape[0], len(cuts)))
    for s, (a, b) in enumerate(itertools.pairwise(bounds)):
        for i, row in enumerate(z[:, a:b].astype(np.float64)):
            top = row.max()
            out[i, s] = top + math.log(sum(math.exp(v - top) for v in row))
    return out
