"""GET /v1/optimizers and /v1/workloads list every registered entry."""

from __future__ import annotations

from fastapi.testclient import TestClient

import optimizers
from tuner.workloads import workload_names


def test_optimizers_catalog(client: TestClient) -> None:
    response = client.get("/v1/optimizers")
    assert response.status_code == 200
    body = response.json()
    names = [item["name"] for item in body["items"]]
    assert names == list(optimizers.names())
    assert body["total"] == len(names)
    adamw = next(item for item in body["items"] if item["name"] == "adamw")
    spec = optimizers.get("adamw")
    assert adamw["defaults"] == dict(spec.defaults)
    assert adamw["family"] == spec.family
    assert adamw["search_space"]["lr"]["log"] is True
    assert adamw["references"]
    assert client.get("/v1/optimizers/adamw").json() == adamw
    assert client.get("/v1/optimizers/nope").status_code == 404


def test_workloads_catalog(client: TestClient) -> None:
    response = client.get("/v1/workloads")
    assert response.status_code == 200
    body = response.json()
    names = [item["name"] for item in body["items"]]
    assert names == list(workload_names()) and names
    for item in body["items"]:
        assert set(item) == {"name", "summary", "task", "metric", "direction", "default_epochs"}
        assert item["direction"] in ("minimize", "maximize")
        assert item["task"]["num_parameters"] >= 1
    first = names[0]
    assert client.get(f"/v1/workloads/{first}").json() == body["items"][0]
    assert client.get("/v1/workloads/nope").status_code == 404
