"""Schedules through the service, on SQLite and PostgreSQL: recommendations carry one (and the
task's ``training_steps`` is validated), ask/tell trials hand one out that the Python client
builds, the trials view and the report show each trial's, and jobs created before schedules
(their stored plan has none) still load, hand out trials and report."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from typing import Any

import optuna
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

import optimizers
from service.client import ClientTrial, OptpilotClient
from service.core.models import Recommendation
from tests.service.jobrun import launch, live_server, work
from tuner.contract import STUDY_PLAN
from tuner.rules import DEFAULT_SCHEDULE

LM_TASK = {"model_family": "transformer", "task_type": "language_modeling",
           "num_parameters": 124_000_000}
MLP_TASK = {"model_family": "mlp", "num_parameters": 20_000, "training_steps": 200}


def lrs_over(opt: torch.optim.Optimizer, scheduler: Any, steps: int) -> list[float]:
    """The lr of each of ``steps`` optimizer steps of a real loop."""
    seen = []
    for _ in range(steps):
        seen.append(float(opt.param_groups[0]["lr"]))
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.ones_like(p)
        opt.step()
        scheduler.step()
    return seen


def strip_schedules(database_url: str, study_name: str) -> None:
    """Rewrite a job's stored plan as the code before schedules wrote it (no schedule keys)."""
    storage = optuna.storages.RDBStorage(database_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
        plan = json.loads(study.user_attrs[STUDY_PLAN])
        for candidate in plan:
            for key in ("schedule", "schedule_tuned", "decay_shapes"):
                candidate.pop(key)
        study.set_user_attr(STUDY_PLAN, json.dumps(plan))
    finally:
        storage.engine.dispose()


def test_recommendations_carry_a_buildable_schedule_whose_peak_is_the_lr(
        client: TestClient, sessions: sessionmaker[Session]) -> None:
    r = client.post("/v1/recommendations", json={"task": LM_TASK, "top_k": 3})
    assert r.status_code == 201, r.text
    first = r.json()["candidates"][0]
    assert first["schedule"] == {"name": "cosine", "warmup_steps": None, "warmup_fraction": 0.01,
                                 "final_lr_fraction": 0.1, "decay_fraction": None,
                                 "decay_shape": None}
    assert ("lr is the peak of its schedule: 1% warm-up, then cosine decay to 10% of the peak"
            in first["rationale"])
    # The JSON builds the schedule as it is: the lr reaches the default at the warm-up's end.
    peak = first["hyperparameters"]["lr"]["default"]
    opt = optimizers.create(first["optimizer"], torch.nn.Linear(2, 1).parameters(), lr=peak)
    lrs = lrs_over(opt, optimizers.build_scheduler(opt, first["schedule"], 200), 200)
    assert max(lrs) == pytest.approx(peak) and lrs[1] == pytest.approx(peak)
    assert lrs[-1] == pytest.approx(peak * (0.1 + 0.9 * (1 - 0.9997) / 2), rel=0.05)
    stored = client.get(f"/v1/recommendations/{r.json()['id']}").json()
    assert stored["candidates"][0]["schedule"] == first["schedule"]

    # Open-ended training: schedule-free AdamW among the first, with no schedule; WSD for AdamW.
    r = client.post("/v1/recommendations",
                    json={"task": {**LM_TASK, "training_steps": "unknown"}, "top_k": 3})
    by_name = {c["optimizer"]: c for c in r.json()["candidates"]}
    assert by_name["schedulefree_adamw"]["schedule"]["name"] == "none"
    assert by_name["adamw"]["schedule"]["name"] == "wsd"

    # A recommendation stored before schedules still reads, with schedule null.
    with sessions() as session:
        old = Recommendation(task={"model_family": "mlp", "num_parameters": 10}, top_k=1,
                             candidates=[{k: v for k, v in first.items() if k != "schedule"}])
        session.add(old)
        session.commit()
        old_id = old.id
    got = client.get(f"/v1/recommendations/{old_id}")
    assert got.status_code == 200 and got.json()["candidates"][0]["schedule"] is None


@pytest.mark.parametrize("bad", ["forever", 0, -3, 1.5, True, [100]])
def test_training_steps_is_validated_naming_the_field(
        client: TestClient, count_recommendations: Callable[[], int], bad: object) -> None:
    before = count_recommendations()
    r = client.post("/v1/recommendations",
                    json={"task": {**MLP_TASK, "training_steps": bad}})
    assert r.status_code == 422, r.text
    assert "training_steps" in r.json()["detail"]
    assert count_recommendations() == before
    r = client.post("/v1/jobs", json={"workload": None, "n_trials": 2,
                                      "task": {**MLP_TASK, "training_steps": bad}})
    assert r.status_code == 422 and "training_steps" in r.json()["detail"]


def test_ask_tell_hands_out_the_schedule_and_the_client_builds_it(
        app: FastAPI, client: TestClient) -> None:
    # 6 trials: the warm start (3 points) reaches schedule-free AdamW's first lr rung
    r = client.post("/v1/jobs", json={"workload": None, "task": MLP_TASK, "n_trials": 6,
                                      "seed": 0, "optimizers": ["adamw", "schedulefree_adamw"]})
    assert r.status_code == 202, r.text
    job = r.json()
    planned = {c["optimizer"]: c["schedule"] for c in job["prior"]}
    assert planned["schedulefree_adamw"] == {**DEFAULT_SCHEDULE.to_dict(), "name": "none",
                                             "warmup_fraction": None, "warmup_steps": 0,
                                             "final_lr_fraction": None}
    # plain fields over REST
    raw = client.post(f"/v1/jobs/{job['id']}/trials", json={"client_id": "rest"}).json()
    assert raw["schedule"] == planned[raw["optimizer"]]
    client.post(f"/v1/jobs/{job['id']}/trials/{raw['number']}/result", json={"value": 1.0})

    handed: dict[int, dict[str, Any]] = {}
    with live_server(app) as base, OptpilotClient(base) as remote:
        for trial in remote.trials(job["id"], poll_s=0.1):
            with trial:
                assert trial.schedule is not None and trial.schedule == planned[trial.optimizer]
                handed[trial.number] = trial.schedule
                model = torch.nn.Linear(3, 1)
                opt = optimizers.create(trial.optimizer, model.parameters(),
                                        **trial.hyperparameters)
                lrs = lrs_over(opt, trial.scheduler(opt, total_steps=200), 200)
                peak = trial.hyperparameters["lr"]
                record = optimizers.Schedule.from_dict(trial.schedule)
                assert lrs == pytest.approx([peak * record.factor(s, 200) for s in range(200)])
                if trial.optimizer == "schedulefree_adamw":
                    assert set(lrs) == {peak}  # 'none': the optimizer warms up on its own
                    assert trial.hyperparameters["warmup_steps"] == 10  # 5% of 200 steps
                trial.complete(float(trial.number) + 1.0)  # worse than the REST one
    assert len(handed) == 5
    assert {"none", "cosine"} <= {h["name"] for h in handed.values()}
    trials = client.get(f"/v1/jobs/{job['id']}/trials").json()
    assert {t["number"]: t["schedule"] for t in trials} == {raw["number"]: raw["schedule"],
                                                           **handed}
    best = client.get(f"/v1/jobs/{job['id']}").json()["best"]
    assert best["trial"] == raw["number"] and best["schedule"] == raw["schedule"]
    page = client.get(f"/v1/jobs/{job['id']}/report").text
    assert html.escape("cosine: 5% warm-up, then cosine decay to 0") in page
    assert "none: no schedule: the lr stays as set" in page


def test_a_job_created_before_schedules_still_loads_hands_out_trials_and_reports(
        client: TestClient, migrated_url: str) -> None:
    job = client.post("/v1/jobs", json={"workload": None, "task": MLP_TASK, "n_trials": 2,
                                        "seed": 0}).json()
    strip_schedules(migrated_url, job["study_name"])
    data = client.post(f"/v1/jobs/{job['id']}/trials", json={"client_id": "old"}).json()
    assert data["schedule"] is None
    trial = ClientTrial(OptpilotClient("http://unused.test"), data, heartbeats=False)
    opt = optimizers.create(trial.optimizer, torch.nn.Linear(3, 1).parameters(),
                            **trial.hyperparameters)
    scheduler = trial.scheduler(opt, total_steps=100)  # the schedule its lr was meant for
    assert scheduler.schedule == DEFAULT_SCHEDULE
    r = client.post(f"/v1/jobs/{job['id']}/trials/{data['number']}/result", json={"value": 0.5})
    assert r.status_code == 200 and r.json()["schedule"] is None
    assert client.get(f"/v1/jobs/{job['id']}/trials").json()[0]["schedule"] is None
    got = client.get(f"/v1/jobs/{job['id']}").json()
    assert got["best"]["value"] == 0.5 and got["best"]["schedule"] is None
    page = client.get(f"/v1/jobs/{job['id']}/report").text
    assert "not recorded (a trial from before schedules)" in page


def test_server_side_trials_train_with_their_schedule_and_old_plans_with_the_workloads(
        client: TestClient, migrated_url: str) -> None:
    new, old = launch(client, n_trials=2), launch(client, n_trials=2)
    old_study = client.get(f"/v1/jobs/{old}").json()["study_name"]
    strip_schedules(migrated_url, old_study)
    work(migrated_url, 4)
    constant = optimizers.Schedule("constant").to_dict()  # Rosenbrock's schedule_override
    for job_id, expected in ((new, constant), (old, None)):
        trials = client.get(f"/v1/jobs/{job_id}/trials").json()
        assert [t["state"] for t in trials] == ["complete", "complete"]
        assert all(t["schedule"] == expected for t in trials)
    page = client.get(f"/v1/jobs/{new}/report").text
    call = ("scheduler = optimizers.build_scheduler(opt, {'name': 'constant', 'warmup_steps': 0}, "
            "total_steps)")
    assert html.escape(call) in page
    scope: dict[str, Any] = {"optimizers": optimizers, "total_steps": 10,
                             "opt": optimizers.create("adam", torch.nn.Linear(2, 1).parameters())}
    exec(call, scope)  # pastes as it reads
    assert isinstance(scope["scheduler"], optimizers.ScheduledLR)
    assert "not recorded (a trial from before schedules)" in client.get(
        f"/v1/jobs/{old}/report").text
