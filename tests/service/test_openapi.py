"""The OpenAPI document passes openapi-spec-validator; /docs and /redoc use only local assets;
CORS is off unless configured. In-process (the app without starting its model loading)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from service.app import create_app
from service.settings import Settings

MODELS = Path(__file__).resolve().parents[2] / "models"


def client(**settings: Any) -> TestClient:
    """A client of the app; the lifespan (model loading) is not started."""
    return TestClient(create_app(Settings(model_repository=MODELS, **settings)))


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    response = client().get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def test_openapi_document_is_valid(openapi: dict[str, Any]) -> None:
    validate(openapi)
    assert openapi["servers"]


def test_operation_ids_are_route_names(openapi: dict[str, Any]) -> None:
    ids = [op["operationId"] for path in openapi["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))
    assert {"score", "evaluate", "models", "v2_infer", "v2_model", "v2_ready"} <= set(ids)
    assert {"drift", "drift_reset"} <= set(ids)
    assert all(re.fullmatch(r"[a-z0-9_]+", op) for op in ids), ids


def test_api_keys_are_security_schemes_of_the_guarded_operations(openapi: dict[str, Any]) -> None:
    schemes = openapi["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "Header 'Authorization: Bearer KEY'."
    }  # fmt: skip
    assert schemes["api_key"]["in"] == "header" and schemes["api_key"]["name"] == "X-API-Key"
    for path, operations in openapi["paths"].items():
        for operation in operations.values():
            guarded = path.startswith(("/v1", "/v2/models", "/v2/repository")) or path == "/v2"
            expected = [{"bearer": []}, {"api_key": []}] if guarded else None
            assert operation.get("security") == expected, path


def test_drift_operations_document_their_answer_with_the_example(openapi: dict[str, Any]) -> None:
    get = openapi["paths"]["/v1/models/{model}/drift"]["get"]
    reset = openapi["paths"]["/v1/models/{model}/drift/reset"]["post"]
    for operation in (get, reset):
        ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        schema = openapi["components"]["schemas"][ref.rsplit("/", 1)[-1]]
        assert schema["examples"][0]["model"] == "digits-mlp"
        assert {"statistic", "threshold", "alarms", "last_alarm", "change_point", "layers"} <= set(
            schema["properties"]
        )
        assert {"401", "404", "503"} <= set(operation["responses"])
    assert "403" in reset["responses"] and "403" not in get["responses"]


def test_v2_infer_body_schema_resolves(openapi: dict[str, Any]) -> None:
    body = openapi["paths"]["/v2/models/{model}/infer"]["post"]["requestBody"]["content"]
    ref = body["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    request = openapi["components"]["schemas"][ref]
    assert {"inputs", "outputs", "parameters"} <= set(request["properties"])
    assert "application/octet-stream" in body


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets(page: str) -> None:
    http = client()
    html = http.get(page)
    assert html.status_code == 200
    assert "http://" not in html.text and "https://" not in html.text
    assets = re.findall(r"""(?:src|href|spec-url)=["']([^"']+)["']""", html.text)
    assets += re.findall(r"""url: ?["']([^"']+)["']""", html.text)
    assert len(assets) >= 3, html.text
    for asset in assets:
        assert asset.startswith("/"), asset
        fetched = http.get(asset)
        assert fetched.status_code == 200 and fetched.content, asset


def test_cors_is_off_by_default_and_answers_configured_origins() -> None:
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    response = client().get("/healthz", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in response.headers
    http = client(cors_origins="https://app.example")
    allowed = http.options("/v1/models/digits-mlp/score", headers=preflight)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    other = http.options(
        "/v1/models/digits-mlp/score", headers={**preflight, "Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in other.headers
