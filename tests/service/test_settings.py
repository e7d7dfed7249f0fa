"""Settings: SNNL_* environment variables, validators that refuse unsafe values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.cli import FLAGS
from service.settings import Settings, setting_env, setting_flag


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(setting_env(name), raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()


def test_defaults() -> None:
    s = Settings()
    assert s.model_repository == Path("models")
    assert (s.device, s.max_batch_size, s.max_batch_wait_ms, s.max_queue) == (
        "auto",
        128,
        2.0,
        4096,
    )
    assert (s.host, s.port, s.log_level, s.api_keys) == ("127.0.0.1", 8000, "INFO", ())
    assert s.max_batch_wait_s == 0.002


def test_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {
        "SNNL_MODEL_REPOSITORY": str(tmp_path),
        "SNNL_DEVICE": "cpu",
        "SNNL_MAX_BATCH_SIZE": "64",
        "SNNL_MAX_BATCH_WAIT_MS": "0",
        "SNNL_MAX_QUEUE": "64",
        "SNNL_MAX_REQUEST_BYTES": "2048",
        "SNNL_REQUEST_TIMEOUT_S": "1.5",
        "SNNL_API_KEYS": " key-aaaaaaaaaaaaaaaa , key-bbbbbbbbbbbbbbbb,",
        "SNNL_LOG_LEVEL": "debug",
    }
    for key, val in env.items():
        monkeypatch.setenv(key, val)
    s = Settings()
    assert s.model_repository == tmp_path
    assert (s.device, s.max_batch_size, s.max_batch_wait_ms, s.max_queue) == ("cpu", 64, 0.0, 64)
    assert (s.max_request_bytes, s.request_timeout_s, s.log_level) == (2048, 1.5, "DEBUG")
    assert s.api_key_bytes() == (b"key-aaaaaaaaaaaaaaaa", b"key-bbbbbbbbbbbbbbbb")
    assert "key-aaaa" not in repr(s)  # secrets never print


def test_keyword_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNNL_PORT", "9000")
    assert Settings(port=9100).port == 9100


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_batch_size": 0}, "greater than or equal to 1"),
        ({"max_batch_wait_ms": -1}, "greater than or equal to 0"),
        ({"max_batch_wait_ms": 5000}, "less than or equal to 1000"),
        (
            {"max_queue": 10, "max_batch_size": 20},
            "max_queue (10) must be at least max_batch_size (20)",
        ),
        ({"max_request_bytes": 10}, "greater than or equal to 1024"),
        ({"request_timeout_s": 0}, "greater than 0"),
        ({"api_keys": "short"}, "at least 16 characters"),
        ({"api_keys": "0123456789abcdef 0123"}, "may not contain whitespace"),
        ({"device": "tpu"}, "'auto', 'cpu' or 'cuda'"),
        ({"port": -1}, "greater than or equal to 0"),
        ({"port": 65536}, "less than or equal to 65535"),
        ({"api_keys": "0123456789abcdef\u00e9"}, "non-ASCII"),
        ({"log_level": "chatty"}, "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        ({"model_repository": "does-not-exist"}, "'does-not-exist' is not a directory"),
        ({"threads": 4}, "Extra inputs are not permitted"),
        ({"workers": 0}, "greater than or equal to 1"),
        ({"workers": 2, "shards": 2}, "workers > 1 with shards"),
        ({"compute_dtype": "int8"}, "'float32', 'bfloat16' or 'float16'"),
    ],
)
def test_unsafe_values_are_refused(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        Settings(**values)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "SNNL_DRIFT_ERT",
            "5000",
            "SNNL_DRIFT_ERT: expected >= 10000 samples between false alarms",
        ),
        ("SNNL_DRIFT_ERT", "inf", "SNNL_DRIFT_ERT: expected a finite number"),
        ("SNNL_DRIFT_ERT", "many", "valid number"),
        ("SNNL_DRIFT_CALIBRATION_RISK", "0", "SNNL_DRIFT_CALIBRATION_RISK: expected a probability"),
        ("SNNL_DRIFT_CALIBRATION_RISK", "0.5", "in (0, 0.1], got 0.5"),
        ("SNNL_DRIFT_LEVELS", "0.05,0.01", "SNNL_DRIFT_LEVELS: expected strictly increasing"),
        ("SNNL_DRIFT_LEVELS", "0.01,0.7", "SNNL_DRIFT_LEVELS: expected values in (0, 0.5]"),
        ("SNNL_DRIFT_LEVELS", "", "SNNL_DRIFT_LEVELS: expected a non-empty list"),
        ("SNNL_DRIFT_SHIFTS", "0.1,1", "SNNL_DRIFT_SHIFTS: expected values in (0, 1)"),
        ("SNNL_DRIFT_ENABLED", "maybe", "valid boolean"),
    ],
)
def test_unsafe_drift_settings_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=re.escape(message)) as refused:
        Settings()
    assert refused.value.errors()[0]["loc"][0] == variable.removeprefix("SNNL_").lower()


def test_drift_settings_defaults_are_the_library_defaults_and_lists_parse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from snnl.monitoring import DriftSettings

    assert Settings().drift == DriftSettings() and Settings().drift_enabled
    monkeypatch.setenv("SNNL_DRIFT_ENABLED", "false")
    monkeypatch.setenv("SNNL_DRIFT_ERT", "1e5")
    monkeypatch.setenv("SNNL_DRIFT_LEVELS", " 0.001, 0.05 ")
    monkeypatch.setenv("SNNL_DRIFT_SHIFTS", "0.1")
    s = Settings()
    assert not s.drift_enabled
    assert s.drift == DriftSettings(ert=1e5, levels=(0.001, 0.05), shifts=(0.1,))


def test_every_setting_has_its_flag_and_variable() -> None:
    assert sorted(setting for setting, *_ in FLAGS) == sorted(Settings.model_fields)
    for setting, flag, *_ in FLAGS:
        assert flag == setting_flag(setting)
    assert setting_flag("model_repository") == "--repository"
    assert setting_env("max_queue") == "SNNL_MAX_QUEUE"


def test_compute_dtype_reaches_the_served_detector() -> None:
    """SNNL_COMPUTE_DTYPE is what the served model multiplies in, and it still scores."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    models = Path(__file__).resolve().parents[2] / "models"
    settings = Settings(
        model_repository=models, device="cpu", warmup_iterations=1, compute_dtype="bfloat16"
    )
    with TestClient(create_app(settings)) as client:
        while client.get("/readyz").status_code != 200:
            pass
        response = client.post("/v1/models/digits-mlp/score", json={"inputs": [[0.0] * 64]})
        assert response.status_code == 200, response.text
        served = client.app.state.service.served("digits-mlp")  # type: ignore[attr-defined]
        assert served.detector.compute_dtype == "bfloat16"
