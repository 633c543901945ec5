"""POST/GET /v1/recommendations: the response shape, stored rows, and every way input is refused."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tuner.task import TaskDescription

PROBLEM = "application/problem+json"
TASK: dict[str, Any] = {
    "model_family": "transformer",
    "task_type": "language_modeling",
    "num_parameters": 124_000_000,
    "num_layers": 12,
    "batch_size": 512,
    "memory_budget_gb": 24,
    "precision": "bf16",
}


def _body(**task_changes: Any) -> dict[str, Any]:
    return {"task": {**TASK, **task_changes}, "top_k": 3}


def test_post_then_get_roundtrip(
    client: TestClient, count_recommendations: Callable[[], int]
) -> None:
    response = client.post("/v1/recommendations", json={"task": TASK, "top_k": 2})
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) >= {"id", "task", "created_at", "candidates"}
    assert len(body["id"]) == 32 and int(body["id"], 16) >= 0
    assert response.headers["location"] == f"/v1/recommendations/{body['id']}"
    assert body["task"] == TaskDescription.model_validate(TASK).model_dump(mode="json")
    assert body["created_at"].endswith(("Z", "+00:00"))
    assert count_recommendations() == 1

    candidates = body["candidates"]
    assert 1 <= len(candidates) <= 2
    scores = [c["score"] for c in candidates]
    assert scores == sorted(scores, reverse=True) and sum(scores) <= 1 + 1e-9
    for candidate in candidates:
        assert set(candidate) >= {
            "optimizer", "score", "hyperparameters", "memory", "rationale", "references"
        }
        assert "lr" in candidate["hyperparameters"]
        for prior in candidate["hyperparameters"].values():
            assert set(prior) >= {"default", "low", "high", "log"}
            assert prior["low"] <= prior["default"] <= prior["high"]
        assert isinstance(candidate["memory"]["state_bytes"], int)
        assert candidate["memory"]["fits"] in (True, False)  # a budget was given
        assert candidate["rationale"] and all(isinstance(r, str) for r in candidate["rationale"])

    again = client.get(response.headers["location"])
    assert again.status_code == 200
    assert again.json() == body


def test_fits_is_null_without_budget(client: TestClient) -> None:
    task = {k: v for k, v in TASK.items() if k != "memory_budget_gb"}
    response = client.post("/v1/recommendations", json={"task": task})
    assert response.status_code == 201, response.text
    body = response.json()
    assert len(body["candidates"]) == 3  # default top_k
    assert all(c["memory"]["fits"] is None for c in body["candidates"])


def test_unknown_id_is_404_problem(client: TestClient) -> None:
    response = client.get("/v1/recommendations/" + "0" * 32)
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == 404 and problem["title"] == "Not Found"
    assert "0" * 32 in problem["detail"]


def test_unknown_route_is_404_problem(client: TestClient) -> None:
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM


def test_wrong_method_is_405_problem(client: TestClient) -> None:
    response = client.delete("/v1/recommendations")
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM
    assert "POST" in response.headers["allow"]


INVALID_BODIES: list[tuple[str, Any, str]] = [
    ("unknown field", {**_body(), "colour": "red"}, "body.colour"),
    ("unknown task field", _body(optimizer="adam"), "body.task.optimizer"),
    ("zero parameters", _body(num_parameters=0), "body.task.num_parameters"),
    ("negative parameters", _body(num_parameters=-5), "body.task.num_parameters"),
    ("huge parameters", _body(num_parameters=10**30), "body.task.num_parameters"),
    ("string parameters", _body(num_parameters="many"), "body.task.num_parameters"),
    ("fractional parameters", _body(num_parameters=1.5), "body.task.num_parameters"),
    ("task not an object", {"task": [1, 2], "top_k": 3}, "body.task"),
    ("missing family", {"task": {"num_parameters": 10}}, "body.task.model_family"),
    ("unknown family", _body(model_family="quantum"), "body.task.model_family"),
    ("bool as string", _body(sparse_features="maybe"), "body.task.sparse_features"),
    ("unknown fine-tuning kind", _body(fine_tuning="lora"), "body.task.fine_tuning"),
    ("fine-tuning as number", _body(fine_tuning=1), "body.task.fine_tuning"),
    ("negative frozen", _body(fine_tuning=True, frozen_parameters=-1),
     "body.task.frozen_parameters"),
    ("zero budget", _body(memory_budget_gb=0), "body.task.memory_budget_gb"),
    ("over-long string", _body(model_family="x" * 100_000), "body.task.model_family"),
    ("NUL byte", _body(model_family="mlp\u0000"), "body.task.model_family"),
    ("top_k zero", {**_body(), "top_k": 0}, "body.top_k"),
    ("top_k 1000", {**_body(), "top_k": 1000}, "body.top_k"),
    ("top_k string", {**_body(), "top_k": "three"}, "body.top_k"),
    ("missing task", {"top_k": 3}, "body.task"),
    ("body not an object", [TASK], "body"),
]


@pytest.fixture
def unchanged(
    client: TestClient, count_recommendations: Callable[[], int]
) -> Iterator[None]:
    """Asserts after the test that no recommendation row was written."""
    client.post("/v1/recommendations", json=_body())
    before = count_recommendations()
    yield
    assert count_recommendations() == before


def _assert_422(response: Any, field: str) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == 422
    fields = [error["field"] for error in problem["errors"]]
    assert field in fields, fields
    error = problem["errors"][fields.index(field)]
    assert error["loc"] == field.split(".") and error["msg"]
    assert "input" not in error
    assert field in problem["detail"]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("body", "field"), [(b, f) for _, b, f in INVALID_BODIES], ids=[i for i, _, _ in INVALID_BODIES]
)
def test_invalid_bodies_are_422_naming_the_field(
    client: TestClient, body: Any, field: str
) -> None:
    _assert_422(client.post("/v1/recommendations", json=body), field)


RAW_BODIES: list[tuple[str, bytes, str]] = [
    ("NaN parameters", b'{"task": {"model_family": "mlp", "num_parameters": NaN}}',
     "body.task.num_parameters"),
    ("Infinity budget",
     b'{"task": {"model_family": "mlp", "num_parameters": 10, "memory_budget_gb": Infinity}}',
     "body.task.memory_budget_gb"),
    ("-Infinity top_k",
     b'{"task": {"model_family": "mlp", "num_parameters": 10}, "top_k": -Infinity}',
     "body.top_k"),
    ("NaN budget",
     b'{"task": {"model_family": "mlp", "num_parameters": 10, "memory_budget_gb": NaN}}',
     "body.task.memory_budget_gb"),
    ("1e999 parameters", b'{"task": {"model_family": "mlp", "num_parameters": 1e999}}',
     "body.task.num_parameters"),
    ("invalid JSON", b'{"task": {"model_family": "mlp",', "body"),
    ("not JSON at all", b"\xff\xfe\x00garbage", "body"),
    ("empty object", b"{}", "body.task"),
]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("raw", "field"), [(r, f) for _, r, f in RAW_BODIES], ids=[i for i, _, _ in RAW_BODIES]
)
def test_raw_bodies_are_422_naming_the_field(client: TestClient, raw: bytes, field: str) -> None:
    response = client.post(
        "/v1/recommendations", content=raw, headers={"content-type": "application/json"}
    )
    _assert_422(response, field)
    json.loads(response.text)  # strict JSON: no NaN token came back


@pytest.mark.usefixtures("unchanged")
def test_missing_content_type_is_422(client: TestClient) -> None:
    response = client.post("/v1/recommendations", content=json.dumps(_body()).encode())
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM


@pytest.mark.usefixtures("unchanged")
def test_oversized_body_is_413(client: TestClient) -> None:
    padding = "x" * (1024 * 1024)
    response = client.post("/v1/recommendations", json={**_body(), "padding": padding})
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["status"] == 413


@pytest.mark.usefixtures("unchanged")
def test_oversized_streamed_body_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"task": {"model_family": "mlp", "num_parameters": 10}, "pad": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    response = client.post(
        "/v1/recommendations", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("path", ["a" * 65, "abc%00def"])
def test_bad_ids_are_422(client: TestClient, path: str) -> None:
    response = client.get(f"/v1/recommendations/{path}")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "path.recommendation_id"


def test_candidates_carry_published_evidence(client: TestClient) -> None:
    resnet = {"model_family": "cnn", "num_parameters": 25_000_000, "num_layers": 50,
              "dataset_size": 1_281_167, "batch_size": 256}
    response = client.post("/v1/recommendations", json={"task": resnet, "top_k": 3})
    assert response.status_code == 201, response.text
    first = response.json()["candidates"][0]
    assert first["optimizer"] == "sgd_momentum"
    assert 1 <= len(first["evidence"]) <= 3
    for entry in first["evidence"]:
        assert entry["source"] == "published" and entry["citation"] and entry["job_id"] is None
        assert 0 < entry["weight"] <= entry["similarity"] <= 1
        assert entry["optimizer"] in ("sgd_momentum", "nesterov")
        assert entry["lr"] > 0 and entry["lr_for_task"] > 0
    similarities = [e["similarity"] for e in first["evidence"]]
    assert similarities == sorted(similarities, reverse=True)
    assert any(line.startswith("closest published: ") for line in first["rationale"])
    assert client.get(response.headers["location"]).json() == response.json()


def test_fine_tuning_kinds_are_accepted_and_echoed(client: TestClient) -> None:
    task = {"model_family": "transformer", "num_parameters": 4_000_000,
            "frozen_parameters": 7_000_000_000, "fine_tuning": "parameter_efficient"}
    response = client.post("/v1/recommendations", json={"task": task})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["task"]["fine_tuning"] == "parameter_efficient"
    assert body["task"]["frozen_parameters"] == 7_000_000_000
    adamw = body["candidates"][0]
    assert adamw["optimizer"] == "adamw"
    assert 1e-4 <= adamw["hyperparameters"]["lr"]["default"] <= 1e-3


def test_sharded_70b_fine_tuning_finds_fitting_optimizers(client: TestClient) -> None:
    task = {"model_family": "transformer", "num_parameters": 70_000_000_000,
            "fine_tuning": True, "num_devices": 8, "memory_budget_gb": 80, "precision": "bf16"}
    response = client.post("/v1/recommendations", json={"task": task, "top_k": 13})
    assert response.status_code == 201, response.text
    candidates = response.json()["candidates"]
    fits = [c["memory"]["fits"] for c in candidates]
    assert fits[0] is True and candidates[0]["optimizer"] != "adamw"
    assert fits == sorted(fits, reverse=True)  # every fitting one first
    adamw = next(c for c in candidates if c["optimizer"] == "adamw")
    assert adamw["memory"]["fits"] is False
    assert any("sharded over 8 devices" in line for line in candidates[0]["rationale"])


def test_recommendations_stored_before_evidence_still_load(
    client: TestClient, sessions: Any
) -> None:
    """Rows written before candidates had ``evidence`` (and before fine-tuning kinds)."""
    from service.core.models import Recommendation, new_id, utcnow

    old_candidate = {
        "optimizer": "adamw", "score": 0.5,
        "hyperparameters": {"lr": {"default": 6e-4, "low": 6e-5, "high": 3e-3, "log": True,
                                   "complement": False}},
        "memory": {"state_bytes": 1, "total_bytes": 2, "fits": None},
        "rationale": ["transformer family"], "references": ["Loshchilov & Hutter 2019"],
    }
    row_id = new_id()
    with sessions() as session:
        session.add(Recommendation(id=row_id, task={**TASK, "fine_tuning": False}, top_k=1,
                                   candidates=[old_candidate], created_at=utcnow()))
        session.commit()
    response = client.get(f"/v1/recommendations/{row_id}")
    assert response.status_code == 200, response.text
    candidate = response.json()["candidates"][0]
    assert candidate["evidence"] == []
    assert candidate["hyperparameters"]["lr"]["default"] == 6e-4


def test_openapi_has_one_range_type_and_the_evidence_entry(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert {"SearchRange", "HyperparameterPrior", "Evidence"} <= set(schemas)
    assert not [name for name in schemas if name.endswith(("PriorOut", "RangeOut"))]
    candidate = schemas["CandidateOut"]["properties"]
    ref = candidate["hyperparameters"]["additionalProperties"]["$ref"]
    assert ref.endswith("/HyperparameterPrior")
    optimizer = schemas["OptimizerOut"]["properties"]
    assert optimizer["search_space"]["additionalProperties"]["$ref"].endswith("/SearchRange")
    assert candidate["evidence"]["items"]["$ref"].endswith("/Evidence")
