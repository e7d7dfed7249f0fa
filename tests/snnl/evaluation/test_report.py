"""Report formatting: a T* at the end of the searched interval is shown as a bound."""

from __future__ import annotations

import pytest

from snnl.core.temperature import TEMPERATURE_BOUNDS
from snnl.evaluation.report import format_temperature


@pytest.mark.parametrize(
    ("t", "shown"),
    [
        (TEMPERATURE_BOUNDS[0], "<= 0.0001 (search bound)"),
        (0.00010000000000000009, "<= 0.0001 (search bound)"),  # the bound after float rounding
        (TEMPERATURE_BOUNDS[1], ">= 10000 (search bound)"),
        (0.0731, "0.0731"),
        (0.00011, "0.00011"),
        (1.23456, "1.23"),
    ],
)
def test_format_temperature(t: float, shown: str) -> None:
    assert format_temperature(t) == shown
