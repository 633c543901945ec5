"""The OpenAPI document states what the server enforces, and the documentation pages work offline.

The last test runs schemathesis (``st run --checks all``: every check it has, the response-time
check with a limit for a loaded CI machine) against a live server, with API keys on (PostgreSQL)
and off (SQLite).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import optimizers
from service.app import create_app
from service.core.settings import Settings
from tests.service.jobrun import live_server
from tuner.workloads import workload_names

KEY = "openapi-test-key-0123456789"
PUBLIC = {"/healthz"}  # documented operations that never ask for a key


@pytest.fixture(params=["auth off", "auth on"])
def auth_client(request: pytest.FixtureRequest, migrated_url: str,
                make_settings: Callable[..., Settings]) -> Iterator[tuple[TestClient, bool]]:
    keys = [KEY] if request.param == "auth on" else []
    with TestClient(create_app(make_settings(migrated_url, api_keys=keys))) as client:
        yield client, bool(keys)


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield path, method, operation


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_security_is_declared_exactly_when_keys_are_set(
        auth_client: tuple[TestClient, bool]) -> None:
    client, auth = auth_client
    document = client.get("/openapi.json").json()  # public, with keys or without
    assert ("securitySchemes" in document.get("components", {})) == auth
    for path, method, operation in _operations(document):
        protected = auth and path not in PUBLIC
        assert bool(operation.get("security")) == protected, (method, path)
        assert ("401" in operation["responses"]) == protected, (method, path)
    if auth:
        assert client.get("/metrics").status_code == 401
        assert client.get("/v1/optimizers").status_code == 401


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_document_states_the_rules_the_server_enforces(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    # Only JSON Schema's own keywords (pydantic writes "ge"/"le" for some annotated types).
    assert not [s for s in _walk(schemas) if {"ge", "le", "gt", "lt"} & s.keys()
                and s.get("type") in ("integer", "number")]
    job = schemas["JobCreate"]["properties"]
    workload = next(b for b in job["workload"]["anyOf"] if b.get("type") == "string")
    assert workload["enum"] == list(workload_names())
    assert workload["pattern"].startswith("^[A-Za-z0-9]")
    names = next(b for b in job["optimizers"]["anyOf"] if b.get("type") == "array")
    assert names["uniqueItems"] and names["items"]["enum"] == list(optimizers.names())
    assert schemas["RecommendationRequest"]["properties"]["top_k"]["maximum"] == len(
        optimizers.names())
    assert schemas["TrialAsk"]["properties"]["client_id"]["pattern"] == "^[^\\u0000]*$"
    jobs = document["paths"]["/v1/jobs/{job_id}/trials"]["post"]["responses"]
    assert {"200", "201"} <= jobs.keys()  # asked again: the open trial, 200
    result = document["paths"]["/v1/jobs/{job_id}/trials/{number}/result"]["post"]
    shapes = result["requestBody"]["content"]["application/json"]["schema"]["anyOf"]
    assert {s["$ref"].rsplit("/", 1)[1] for s in shapes} == {"TrialValue", "TrialEnd"}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("path", "body"), [
    ("/v1/recommendations", {"task": {"model_family": "mlp", "num_parameters": 1000,
                                      "fine_tuning": 0}}),
    ("/v1/recommendations", {"task": {"model_family": "mlp", "num_parameters": "1000"}}),
    ("/v1/recommendations", {"task": {"model_family": "mlp", "num_parameters": True}}),
    ("/v1/recommendations", {"task": {"model_family": "mlp", "num_parameters": 1000.5}}),
    ("/v1/recommendations", {"task": {"model_family": "mlp", "num_parameters": 1000,
                                      "memory_budget_gb": "24"}}),
    ("/v1/recommendations", {"task": {"model_family": "mlp", "num_parameters": 1000},
                             "top_k": len(optimizers.names()) + 1}),
    ("/v1/jobs", {"workload": "rosenbrock", "n_trials": "3"}),
    ("/v1/jobs", {"workload": None, "n_trials": 3}),
    ("/v1/jobs", {"workload": "rosenbrock", "n_trials": 3, "optimizers": ["adam", "adam"]}),
])
def test_bodies_are_as_strict_as_their_schema(client: TestClient, path: str,
                                              body: dict[str, Any]) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_whole_numbers_and_the_two_result_shapes(client: TestClient) -> None:
    made = client.post("/v1/recommendations", json={
        "task": {"model_family": "mlp", "num_parameters": 1000.0}, "top_k": 2.0})
    assert made.status_code == 201 and len(made.json()["candidates"]) == 2  # 2.0 is 2
    job = client.post("/v1/jobs", json={"workload": None, "n_trials": 2, "task": {
        "model_family": "mlp", "num_parameters": 1000}}).json()
    base = f"/v1/jobs/{job['id']}/trials"
    number = client.post(base, json={"client_id": "c"}).json()["number"]
    for bad in ({"value": False}, {"value": "0.5"}, {"value": 0.5, "state": "failed"},
                {"value": 0.5, "reason": "x"}, {}, {"state": "failed", "value": None}):
        assert client.post(f"{base}/{number}/result", json=bad).status_code == 422, bad
    assert client.post(f"{base}/{number}/reports", json={"step": True, "value": 1}
                       ).status_code == 422
    assert client.post(f"{base}/{number}/reports", json={"step": 0.0, "value": 1}
                       ).status_code == 200
    assert client.post(f"{base}/{number}/result", json={"value": 1}).status_code == 200


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_405_allows_every_method_of_the_path(client: TestClient) -> None:
    response = client.request("DELETE", "/v1/jobs")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_docs_pages_are_public_and_load_nothing_from_elsewhere(
        migrated_url: str, make_settings: Callable[..., Settings]) -> None:
    with TestClient(create_app(make_settings(migrated_url, api_keys=[KEY]))) as client:
        for page in ("/docs", "/redoc"):
            response = client.get(page)
            assert response.status_code == 200
            html = response.text
            urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
            urls += re.findall(r"""url:\s*['"]([^'"]+)['"]""", html)
            assert urls and "http" not in html.replace("http-equiv", ""), html
            for url in urls:
                asset = client.get(url)
                assert asset.status_code == 200, url
        bundle = client.get("/docs/assets/swagger-ui-bundle.js")
        assert "javascript" in bundle.headers["content-type"]
        assert len(bundle.content) > 500_000
        assert client.get("/openapi.json").status_code == 200


# -- schemathesis -------------------------------------------------------------------------------

EXAMPLES_PER_OPERATION = 5
# The coverage phase (boundary and type-mismatch values for every field; what found the
# disagreements) is not bounded by --max-examples and takes most of a run: it runs once, on
# SQLite. Request validation happens before the database, so the PostgreSQL run (keys on, where
# the auth checks matter) runs the other phases. Measured on a busy 2-core machine: about 60 s
# and 40 s.
PHASES = {"sqlite": "examples,coverage,fuzzing,stateful", "postgresql": "examples,fuzzing,stateful"}
# POST /v1/history takes JSON lines: JSON Schema cannot say what a line holds, so every body
# schemathesis could make from the document is text the route rightly refuses (and it has no
# serializer for application/x-ndjson). tests/service/test_insights.py checks that route.
UNDESCRIBABLE = ("import_history",)


@pytest.mark.slow
@pytest.mark.parametrize(("database_url", "keys"), [("sqlite", []), ("postgresql", [KEY])],
                         indirect=["database_url"], ids=["sqlite-auth-off", "postgresql-auth-on"])
def test_schemathesis_finds_no_disagreement(migrated_url: str, keys: list[str],
                                           make_settings: Callable[..., Settings],
                                           tmp_path: Path) -> None:
    st = shutil.which("st", path=os.path.dirname(sys.executable))
    assert st is not None, "schemathesis is in the dev extra"
    app = create_app(make_settings(migrated_url, api_keys=keys))
    backend = "sqlite" if migrated_url.startswith("sqlite") else "postgresql"
    with live_server(app) as base:
        command = [st, "run", f"{base}/openapi.json", "--checks", "all",
                   "--max-response-time", "30", "--max-examples", str(EXAMPLES_PER_OPERATION),
                   "--phases", PHASES[backend], "--seed", "1", "--workers", "1",
                   "--generation-database", "none", "--no-color"]
        for operation_id in UNDESCRIBABLE:
            command += ["--exclude-operation-id", operation_id]
        if keys:
            command += ["--header", f"Authorization: Bearer {keys[0]}"]
        run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    report = run.stdout + run.stderr
    print(report)  # the phases, checks and counts, for the test log
    assert run.returncode == 0, report[-6000:]
    assert "Tested: 24" in report
