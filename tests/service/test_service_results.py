"""GET /v1/results (filters, pagination), /v1/results/summary and /v1/results/{id}."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from service.api.routes.results import similar_range, summarize

AddResult = Callable[..., str]


@pytest.fixture
def seeded(add_result: AddResult) -> dict[str, str]:
    """Six results: three MLPs, two transformers, one without a winner."""
    return {
        "mlp_small": add_result(num_parameters=10_000, best_optimizer="adamw", best_value=0.30),
        "mlp_mid": add_result(num_parameters=200_000, best_optimizer="adamw", best_value=0.20),
        "mlp_big": add_result(
            num_parameters=5_000_000, best_optimizer="sgd_momentum", best_value=0.25,
            prior_top="adamw",
        ),
        "lm_a": add_result(
            model_family="transformer", task_type="language_modeling", workload=None,
            num_parameters=100_000_000, best_optimizer="adamw", best_value=3.1,
            metric="val_perplexity",
        ),
        "lm_b": add_result(
            model_family="transformer", task_type="language_modeling", workload="tiny-lm",
            num_parameters=120_000_000, best_optimizer="lion", best_value=3.0,
            metric="val_perplexity", prior_top=None,
        ),
        "failed": add_result(best_optimizer=None, best_value=None, prior_top="adamw"),
    }


def _ids(client: TestClient, **params: str | int | float) -> set[str]:
    response = client.get("/v1/results", params=params)
    assert response.status_code == 200, response.text
    return {item["id"] for item in response.json()["items"]}


def test_list_shape_and_order(client: TestClient, seeded: dict[str, str]) -> None:
    body = client.get("/v1/results").json()
    assert body["total"] == 6 and body["limit"] == 50 and body["offset"] == 0
    items = body["items"]
    assert [item["id"] for item in items] == list(reversed(seeded.values()))  # newest first
    first = next(item for item in items if item["id"] == seeded["mlp_big"])
    assert first["best_optimizer"] == "sgd_momentum"
    assert first["prior_top"] == "adamw"
    assert first["per_optimizer"]["sgd_momentum"]["trials"] == 10
    assert first["task"]["model_family"] == "mlp"
    assert len(first["job_id"]) == 32
    assert first["created_at"].endswith(("Z", "+00:00"))


def test_filters(client: TestClient, seeded: dict[str, str]) -> None:
    s = seeded
    mlps = {s["mlp_small"], s["mlp_mid"], s["mlp_big"], s["failed"]}
    assert _ids(client, model_family="mlp") == mlps
    assert _ids(client, task_type="language_modeling") == {s["lm_a"], s["lm_b"]}
    assert _ids(client, optimizer="adamw") == {s["mlp_small"], s["mlp_mid"], s["lm_a"]}
    assert _ids(client, workload="tiny-lm") == {s["lm_b"]}
    assert _ids(client, min_parameters=150_000, max_parameters=6_000_000) == {
        s["mlp_mid"], s["mlp_big"]
    }
    assert _ids(client, model_family="mlp", optimizer="adamw", max_parameters=100_000) == {
        s["mlp_small"]
    }
    assert _ids(client, model_family="gnn") == set()


def test_pagination(client: TestClient, seeded: dict[str, str]) -> None:
    pages = [client.get("/v1/results", params={"limit": 4, "offset": o}).json() for o in (0, 4, 8)]
    assert [len(p["items"]) for p in pages] == [4, 2, 0]
    assert all(p["total"] == 6 and p["limit"] == 4 for p in pages)
    seen = [item["id"] for page in pages for item in page["items"]]
    assert sorted(seen) == sorted(seeded.values())


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "query.limit"),
        ({"limit": 501}, "query.limit"),
        ({"offset": -1}, "query.offset"),
        ({"min_parameters": 0}, "query.min_parameters"),
        ({"min_parameters": "nan"}, "query.min_parameters"),
        ({"model_family": "quantum"}, "query.model_family"),
        ({"optimizer": "x" * 65}, "query.optimizer"),
        ({"optimizer": "ad\x00am"}, "query.optimizer"),
        ({"workload": "../etc"}, "query.workload"),
        ({"colour": "red"}, "query.colour"),
    ],
)
def test_invalid_filters_are_422(
    client: TestClient, params: dict[str, str | int | float], field: str
) -> None:
    response = client.get("/v1/results", params=params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert field in [error["field"] for error in response.json()["errors"]]


def test_an_empty_size_range_matches_nothing(client: TestClient,
                                            seeded: dict[str, str]) -> None:
    """min above max is a range with nothing in it, not an error: the OpenAPI document cannot
    state a rule across two query parameters, and says this instead."""
    page = client.get("/v1/results", params={"min_parameters": 10, "max_parameters": 5}).json()
    assert page["items"] == [] and page["total"] == 0
    summary = client.get("/v1/results/summary",
                         params={"min_parameters": 10, "max_parameters": 5}).json()
    assert summary["total"] == 0 and summary["optimizers"] == []
    described = client.get("/openapi.json").json()["paths"]["/v1/results"]["get"]["parameters"]
    assert "nothing matches" in next(p for p in described
                                     if p["name"] == "max_parameters")["description"]


def test_get_one_and_404(client: TestClient, seeded: dict[str, str]) -> None:
    response = client.get(f"/v1/results/{seeded['lm_b']}")
    assert response.status_code == 200
    assert response.json()["best_optimizer"] == "lion"
    missing = client.get("/v1/results/" + "f" * 32)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


def test_summary(client: TestClient, seeded: dict[str, str]) -> None:
    body = client.get("/v1/results/summary").json()
    assert body["total"] == 6 and body["decided"] == 5
    # Wins on val_loss and on val_perplexity are ranked apart, the metric with more results
    # first; each share is of its metric's decided results.
    rows = [(r["metric"], r["optimizer"], r["wins"], r["share"], r["median_best_value"])
            for r in body["optimizers"]]
    assert rows == [
        ("val_loss", "adamw", 2, pytest.approx(2 / 3), pytest.approx(0.25)),
        ("val_loss", "sgd_momentum", 1, pytest.approx(1 / 3), pytest.approx(0.25)),
        ("val_perplexity", "adamw", 1, 0.5, pytest.approx(3.1)),
        ("val_perplexity", "lion", 1, 0.5, pytest.approx(3.0)),
    ]
    assert {r["direction"] for r in body["optimizers"]} == {"minimize"}
    # prior_top given on 4 decided rows (lm_b has none): agreed on mlp_small, mlp_mid, lm_a.
    assert body["prior_agreement"] == pytest.approx(3 / 4)
    assert body["similar_to"] is None


def test_summary_for_similar_tasks(client: TestClient, seeded: dict[str, str]) -> None:
    params: dict[str, str | int | float] = {"model_family": "mlp", "num_parameters": 100_000}
    body = client.get("/v1/results/summary", params=params).json()
    assert body["similar_to"] == {
        "num_parameters": 100_000, "factor": 10.0,
        "min_parameters": 10_000, "max_parameters": 1_000_000,
    }
    assert body["total"] == 3 and body["decided"] == 2  # mlp_small, mlp_mid, failed
    assert body["optimizers"] == [
        {"optimizer": "adamw", "wins": 2, "share": 1.0, "median_best_value": pytest.approx(0.25),
         "metric": "val_loss", "direction": "minimize"}
    ]
    wide = client.get("/v1/results/summary", params={**params, "factor": 100}).json()
    assert wide["decided"] == 3
    assert client.get("/v1/results/summary", params={"factor": 0.5}).status_code == 422
    assert client.get("/v1/results/summary", params={"factor": "inf"}).status_code == 422


def test_non_finite_values_come_back_as_null(
    client: TestClient, add_result: AddResult
) -> None:
    result_id = add_result(
        best_value=math.nan,
        per_optimizer={"adamw": {"trials": 3, "best_value": math.inf, "curve": [1.0, math.nan]}},
        best_hyperparameters={"lr": math.inf},
    )
    response = client.get(f"/v1/results/{result_id}")
    assert response.status_code == 200
    body = json.loads(response.text)  # strict: no NaN/Infinity tokens
    assert body["best_value"] is None
    assert body["per_optimizer"]["adamw"]["best_value"] is None
    assert body["per_optimizer"]["adamw"]["curve"] == [1.0, None]
    assert body["best_hyperparameters"]["lr"] is None
    listing = client.get("/v1/results")
    assert listing.status_code == 200
    summary = client.get("/v1/results/summary")
    assert summary.status_code == 200
    assert summary.json()["optimizers"][0]["median_best_value"] is None


def test_summarize_and_similar_range_units() -> None:
    rows = [("adam", "loss", "minimize", 1.0, "adam"), ("adam", "loss", "minimize", 3.0, "sgd"),
            ("sgd", "loss", "minimize", 2.0, None), ("sgd", "acc", "maximize", 0.9, None)]
    summary = summarize(rows, total=5)
    assert summary.decided == 4
    assert [(w.metric, w.optimizer, w.wins, w.share) for w in summary.optimizers] == [
        ("loss", "adam", 2, 2 / 3), ("loss", "sgd", 1, 1 / 3), ("acc", "sgd", 1, 1.0)]
    assert summary.optimizers[0].median_best_value == 2.0
    assert summary.prior_agreement == 0.5
    assert summarize([], total=0).prior_agreement is None
    similar = similar_range(1, 10.0)
    assert (similar.min_parameters, similar.max_parameters) == (1, 10)
