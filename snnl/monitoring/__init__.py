"""Monitoring the served stream: the drift monitor over conformal p-values (docs/method.md, §6).

    from snnl.monitoring import DriftMonitor, DriftSettings, ModelDriftMonitor

    monitor = DriftMonitor(n_calibration=5000)           # or ModelDriftMonitor(5000, layers)
    state = monitor.update(result.p_value)               # per batch, O(1) state
    state.new_alarms, state.statistic, state.change_point

Plain numpy, no web code: the service keeps one ``ModelDriftMonitor`` per loaded model.
"""

from __future__ import annotations

from snnl.monitoring.drift import (
    COMBINED,
    MIN_ERT,
    Alarm,
    DriftMonitor,
    DriftSettings,
    DriftState,
    ModelDriftMonitor,
    ModelDriftState,
)

__all__ = [
    "COMBINED",
    "MIN_ERT",
    "Alarm",
    "DriftMonitor",
    "DriftSettings",
    "DriftState",
    "ModelDriftMonitor",
    "ModelDriftState",
]
