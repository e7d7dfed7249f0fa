"""Each model's drift monitor (docs/drift.md) on this replica.

    GET  /v1/models/{model}/drift         its state: statistic per layer, threshold, alarms, the
                                          last alarm, the estimated change point, samples seen
    POST /v1/models/{model}/drift/reset   start it from zero (API key; as repository control,
                                          403 when no API keys are configured)

The monitor is fed by the model's scoring thread after each batch of score requests (v1 and v2;
not evaluate calls, not refused requests); a reload of the model starts a new one.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends

from service.api.admin import require_admin
from service.api.routing import ERROR_TEXTS, GuardedRouter, State, error_examples
from service.api.schemas import DriftResponse
from service.http.errors import UnknownModel
from service.runtime.models import ServedModel, ServiceState
from snnl.monitoring import ModelDriftMonitor

OFF = "drift monitor off (SNNL_DRIFT_ENABLED=false)"
RESPONSES = error_examples(
    "detail",
    [
        ERROR_TEXTS[0],
        (404, f"model 'digits-mlp': {OFF}"),
        (503, "not ready: model 'digits-mlp' is loading"),
    ],
)
RESET_RESPONSES = RESPONSES | error_examples(
    "detail", [(403, "repository control needs API keys: set SNNL_API_KEYS or SNNL_API_KEYS_FILE")]
)

drift = GuardedRouter(prefix="/v1/models", tags=["drift"])


def drift_response(model: str, version: str, monitor: ModelDriftMonitor) -> dict[str, Any]:
    """The answer of ``GET /v1/models/{model}/drift`` for ``monitor``'s current state."""
    settings = monitor.settings
    return {
        "model": model,
        "version": version,
        "n_calibration": monitor.combined.n_calibration,
        "settings": {
            "ert": settings.ert,
            "calibration_risk": settings.calibration_risk,
            "levels": list(settings.levels),
            "shifts": list(settings.shifts),
        },
        **monitor.state.to_dict(),
    }


def _monitored(state: ServiceState, model: str) -> tuple[ServedModel, ModelDriftMonitor]:
    """The model that serves now and its monitor; 404 when the monitor is off."""
    served = state.served(model)
    if served.drift is None:
        raise UnknownModel(f"model {model!r}: {OFF}")
    return served, served.drift


@drift.get("/{model}/drift", name="drift", response_model=DriftResponse, responses=RESPONSES)
async def get_drift(model: str, state: State) -> dict[str, Any]:
    """The model's drift monitor on this replica: statistic (log10 of the evidence; alarm at
    ``threshold``), alarms, the last alarm and the estimated change point, per served layer too.
    Sample indices count from the last reset (admin reset or reload)."""
    served, monitor = _monitored(state, model)
    await served.batcher.flush()  # every request answered so far is in the state
    return drift_response(model, served.version, monitor)


@drift.post(
    "/{model}/drift/reset",
    name="drift_reset",
    response_model=DriftResponse,
    responses=RESET_RESPONSES,
    dependencies=[Depends(require_admin)],
)
async def reset_drift(model: str, state: State) -> dict[str, Any]:
    """Start the model's drift monitor from zero (after an accepted change); its state after.
    Needs an API key, and API keys configured (403 without). ``snnl_drift_alarms_total`` keeps
    counting (a counter never goes down); the statistic gauges return to 0."""
    served, monitor = _monitored(state, model)
    await served.batcher.flush()  # the samples answered before the reset stay before it
    monitor.reset()
    state.metrics.register_drift(model, monitor.state)
    return drift_response(model, served.version, monitor)
