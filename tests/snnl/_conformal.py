"""The exact flag rate the conformal tests compare with."""

from __future__ import annotations

import math


def expected_flag_rate(n: int, alpha: float) -> float:
    """(ceil(alpha (n+1)) - 1) / (n+1) <= alpha: the flag rate of exchangeable, tie-free data
    against n calibration points."""
    return (math.ceil(alpha * (n + 1)) - 1) / (n + 1)
