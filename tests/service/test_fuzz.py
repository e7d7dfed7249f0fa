"""schemathesis against the running server's own OpenAPI schema (real process, real HTTP).

The path parameter ``model`` is supplied (once each model of the repository: the ONNX model and
the embedding-only one), so every operation, score and evaluate included, gets generated requests
that reach the model, JSON and ``application/x-npy`` bodies alike. No 5xx, every response
conforms to the schema (status code, content type, body). Bounded: a fixed number of examples per
operation, no Hypothesis deadline, nothing stored between runs. Repository control that changes
what is served (load/unload) is left out here and exercised in test_reload.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
import schemathesis
from _server import API_KEY, HEADERS, Server, start_server
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi import checks

EXAMPLES = 60  # per operation and model (fewer where the schema allows fewer)
# A schema-valid body may still not fit the model (its input shape, its layers, its classes are
# not in the schema), so a 422 for "positive" data is right; every other check stays on.
NOT_CHECKED = [checks.positive_data_acceptance]


@pytest.fixture(scope="module")
def fuzz_server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    with start_server(
        repository, log, api_keys=API_KEY, max_request_bytes="1000000", warmup_iterations="1"
    ) as running:
        yield running


@pytest.mark.parametrize("model", ["digits-mlp", "blobs"])
def test_generated_requests_get_no_5xx_and_conforming_answers(
    fuzz_server: Server, model: str
) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    operations = [
        result.ok()
        for result in schema.exclude(path_regex=r"^/v2/repository/models/").get_all_operations()
    ]
    reached = set()
    for operation in operations:
        fixed = {"model": model} if "{model}" in operation.path else None
        cases = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed),
            operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=fixed),
        )

        @hypothesis.given(case=cases)
        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call_and_validate(headers=HEADERS, excluded_checks=NOT_CHECKED)
            assert response.status_code < 500, response.text
            assert API_KEY not in response.text
            if response.status_code not in (401, 404, 405):  # past auth and the model lookup
                reached.add(case.operation.label)

        check()
    assert {op.label for op in operations if "{model}" in op.path} <= reached
