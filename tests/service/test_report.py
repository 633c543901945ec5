"""Job reports: ``GET /v1/jobs/{id}/report``, ``optpilot report`` (server or ``--db``), the SVG
charts, and the Optuna study staying readable by Optuna's own API (what optuna-dashboard uses)."""

from __future__ import annotations

import argparse
import html
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from fastapi.testclient import TestClient
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

import optimizers
from service.app import create_app
from service.cli.report import add_report_parser, cmd_report
from service.core.models import Job, utcnow
from service.jobs.state import JobView, prior_json
from service.report.plots import Series, bar_chart, box_chart, log_ticks, number, xy_chart
from service.report.render import MIN_IMPORTANCE_TRIALS, build_report, create_call
from tests.service.conftest import settings_for
from tests.service.jobrun import OPTIMIZERS, finished_job, launch, live_server
from tuner.task import TaskDescription
from tuner.tuning import prior_for, summarize

NON_FINITE = re.compile(r"\b(nan|inf|infinity)\b", re.IGNORECASE)
CREATE_CALL = re.compile(r"optimizers\.create\(&quot;[^&]+&quot;, model\.parameters\(\)[^)]*\)")


def check_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "no external URL"
    text = re.sub(r"<[^>]+>", " ", page)  # what a reader sees (and tooltips)
    assert not NON_FINITE.search(html.unescape(text)), NON_FINITE.search(html.unescape(text))


def paste(call: str) -> torch.optim.Optimizer:
    """Run a report's code line as a user would paste it."""
    model = torch.nn.Linear(3, 1)
    scope: dict[str, Any] = {"optimizers": optimizers, "model": model}
    exec(f"opt = {call}", scope)
    opt: torch.optim.Optimizer = scope["opt"]
    return opt


# -- the API and Optuna compatibility, on SQLite and PostgreSQL --------------------------------


def test_finished_job_report_and_its_study_loads_with_optuna(
        client: TestClient, migrated_url: str) -> None:
    job = finished_job(client, migrated_url, n_trials=6)
    response = client.get(f"/v1/jobs/{job['id']}/report")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page = response.text
    check_self_contained(page)
    assert page.count("<svg") >= 3
    for heading in ("Optimization history", "per optimizer", "Learning rate vs value",
                    "Hyperparameter importance", "The recommendation vs what the tuning found",
                    "Best configurations"):
        assert heading in page, heading
    for candidate in job["prior"]:
        assert candidate["optimizer"] in page
        assert html.escape(candidate["rationale"][0]) in page
    top, best = job["prior"][0]["optimizer"], job["best"]["optimizer"]
    assert ("<b>Yes</b>" in page) == (top == best)
    assert f"trial {job['best']['trial']}" in page
    # Every "ready to paste" line builds an optimizer, the best one with the best values.
    calls = [html.unescape(c) for c in CREATE_CALL.findall(page)]
    assert calls and all(isinstance(paste(c), torch.optim.Optimizer) for c in calls)
    best_call = create_call(best, job["best"]["hyperparameters"])
    assert best_call in calls
    lr = paste(best_call).param_groups[0]["lr"]
    assert lr == pytest.approx(job["best"]["hyperparameters"]["lr"], rel=1e-3)

    # optuna-dashboard reads the same tables through Optuna's storage API.
    storage = optuna.storages.RDBStorage(migrated_url)
    try:
        summaries = optuna.get_all_study_summaries(storage)
        assert job["study_name"] in {s.study_name for s in summaries}
        study = optuna.load_study(study_name=job["study_name"], storage=storage)
        assert study.user_attrs["optpilot.job_id"] == job["id"]
        assert study.user_attrs["optpilot.workload"] == "rosenbrock"
        assert "optpilot.plan" in study.user_attrs
        trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED,
                                          TrialState.FAIL))
        assert len(trials) == job["n_trials"]
        for t in trials:
            name = t.params["optimizer"]
            assert name in OPTIMIZERS and t.user_attrs["optimizer"] == name
            assert f"{name}.lr" in t.params
            assert t.user_attrs["hyperparameters"]["lr"] == pytest.approx(t.params[f"{name}.lr"])
            assert t.user_attrs["worker"]
        assert study.best_value == pytest.approx(job["best"]["value"])
        assert study.best_trial.number == job["best"]["trial"]
    finally:
        storage.engine.dispose()


def test_report_of_a_job_without_trials_and_of_an_unknown_job(client: TestClient) -> None:
    job_id = launch(client, n_trials=3)
    page = client.get(f"/v1/jobs/{job_id}/report").text
    check_self_contained(page)
    assert "No trial has completed yet" in page
    assert "no trial has completed yet" in page  # the verdict waits too
    assert "needs at least" in page
    missing = client.get("/v1/jobs/0123456789abcdef/report")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


def test_report_needs_the_api_key(migrated_url: str) -> None:
    with TestClient(create_app(settings_for(migrated_url, api_keys=["k-report"]))) as c:
        assert c.post("/v1/jobs", json={"workload": "rosenbrock", "n_trials": 2}).status_code \
            == 401
        headers = {"Authorization": "Bearer k-report"}
        created = c.post("/v1/jobs", json={"workload": "rosenbrock", "n_trials": 2},
                         headers=headers).json()
        assert c.get(f"/v1/jobs/{created['id']}/report").status_code == 401
        ok = c.get(f"/v1/jobs/{created['id']}/report", headers=headers)
        assert ok.status_code == 200 and "<svg" in ok.text


# -- optpilot report --------------------------------------------------------------------------


def run_report(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="optpilot")
    add_report_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", *argv])
    code: int = args.handler(args)
    assert args.handler is cmd_report
    return code


def test_cli_report_from_a_server_and_from_the_database(
        client: TestClient, migrated_url: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPTPILOT_API_KEY", raising=False)
    job = finished_job(client, migrated_url, n_trials=4)
    direct, served = tmp_path / "direct.html", tmp_path / "served.html"
    assert run_report(job["id"], "--db", migrated_url, "-o", str(direct)) == 0
    with live_server(create_app(settings_for(migrated_url))) as base:
        assert run_report(job["id"], "--url", base, "-o", str(served)) == 0
        assert run_report("0123456789abcdef", "--url", base, "-o", str(tmp_path / "x")) == 2
        assert "404 Not Found: job '0123456789abcdef' was not found" in capsys.readouterr().err
    for path in (direct, served):
        page = path.read_text(encoding="utf-8")
        check_self_contained(page)
        assert job["id"] in page and page.count("<svg") >= 3
    # The two differ only in the "generated at" time.
    strip = re.compile(r"Generated [^<]* by optpilot")
    assert strip.sub("", direct.read_text()) == strip.sub("", served.read_text())
    assert run_report("0123456789abcdef", "--db", migrated_url) == 2
    assert "was not found" in capsys.readouterr().err


def test_cli_report_errors_are_one_line(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from tests.service.processes import free_port

    assert run_report("abc", "--url", f"http://127.0.0.1:{free_port()}") == 2
    err = capsys.readouterr().err
    assert err.startswith("optpilot report: error: cannot reach the API") and err.count("\n") == 1
    missing = tmp_path / "missing.db"
    assert run_report("abc", "--db", str(missing)) == 2
    assert capsys.readouterr().err.startswith("optpilot report: error: no database at")
    assert not missing.exists()
    unmigrated = tmp_path / "other.db"
    sqlite3.connect(unmigrated).close()
    assert run_report("abc", "--db", str(unmigrated)) == 2
    assert capsys.readouterr().err.startswith("optpilot report: error: cannot read")


# -- the builder on hand-made trials (no database) --------------------------------------------


def hand_made_view(values: Sequence[tuple[str, float | None, float]],
                   optimizer_names: list[str] | None = None) -> JobView:
    """A job whose trials are ``(optimizer, value or None for failed, lr)``."""
    task = TaskDescription(model_family="mlp", num_parameters=5_000)
    names = optimizer_names or sorted({name for name, _, _ in values})
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    for name, value, lr in values:
        state = TrialState.FAIL if value is None else TrialState.COMPLETE
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value,
            params={"optimizer": name, f"{name}.lr": lr},
            distributions={"optimizer": CategoricalDistribution(names),
                           f"{name}.lr": FloatDistribution(1e-6, 10.0, log=True)},
            user_attrs={"optimizer": name, "hyperparameters": {"lr": lr, "weight_decay": 0.01},
                        **({"reason": "diverged"} if value is None else {})}))
    trials = study.get_trials()
    job = Job(id="f" * 32, status="completed", workload=None, task=task.model_dump(mode="json"),
              n_trials=len(values), pruner="median", study_name="hand-made", seed=None,
              prior=prior_json(prior_for(task, names)), created_at=utcnow(),
              started_at=utcnow(), finished_at=utcnow())
    summary = summarize(trials, "minimize")
    return JobView(job, summary, len(trials), 0, trials)


def test_builder_hides_non_finite_values_escapes_text_and_says_too_few_trials() -> None:
    view = hand_made_view([("adam", 0.5, 1e-3), ("adam", float("inf"), 3e-1),
                           ("adamw", None, 5.0), ("adamw", 0.25, 3e-3)])
    page = build_report(view)
    check_self_contained(page)
    assert f"needs at least {MIN_IMPORTANCE_TRIALS} completed trials (has 2)" in page
    assert "diverged" in page
    # adamw (not the prior's top pick for this task, or it is: either way the verdict says so)
    top = view.job.prior[0]["optimizer"] if view.job.prior else None
    assert ("<b>Yes</b>" in page) == (top == "adamw")


def test_builder_importances_once_enough_trials_vary() -> None:
    rows = [("adam", 1.0 + abs(i - 4) * 0.3, 10 ** (-4 + i / 3)) for i in range(8)]
    rows += [("adamw", 0.7 + abs(i - 3) * 0.2, 10 ** (-4 + i / 3)) for i in range(8)]
    page = build_report(hand_made_view(rows))
    check_self_contained(page)
    assert "Importance: all trials" in page and "Importance: adam" not in page
    assert "only lr varied" in page  # within one optimizer only lr moved
    assert page.count('class="bar"') >= 2  # lr and the optimizer choice


# -- charts ------------------------------------------------------------------------------------


def test_charts_escape_text_and_drop_what_they_cannot_draw() -> None:
    svg = xy_chart([Series("<b>&", [(1, 2.0), (2, float("nan")), (3, float("inf")), (4, -1.0)],
                           labels=["a<", "b", "c", "d"])],
                   title="t <script>", x_label="x", y_label="y", y_log=True)
    assert "<script>" not in svg and "t &lt;script&gt;" in svg and "&lt;b&gt;&amp;" in svg
    assert svg.count("<circle") == 1 + 1  # the one drawable point + its legend marker
    assert "a&lt;" in svg
    empty = xy_chart([], title="e", x_label="x", y_label="y", empty_message="nothing yet")
    assert "nothing yet" in empty
    box = box_chart({"adam": [(1.0, "t1"), (2.0, "t2"), (float("nan"), "t3")], "sgd": []},
                    title="b", y_label="v")
    assert box.count("<circle") == 2 and "no values" in box
    bars = bar_chart({"lr": 0.75, "wd": float("nan"), "beta1": 0.25}, title="i", x_label="x")
    assert bars.count('class="bar"') == 2


def test_axis_ticks_and_numbers() -> None:
    assert log_ticks(1e-5, 1e-1) == [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    assert log_ticks(2e-3, 9e-3) == pytest.approx([2e-3, 3e-3, 4e-3, 5e-3, 6e-3, 7e-3, 8e-3,
                                                   9e-3])
    assert len(log_ticks(1e-12, 1e12)) <= 8
    assert number(float("nan")) == number(float("inf")) == number(None) == "—"
    assert number(3e-5) == "3e-5" and number(0.000123456) == "0.0001235"
    assert create_call("adamw", {"lr": 3e-4, "weight_decay": float("nan")}) == \
        'optimizers.create("adamw", model.parameters(), lr=0.0003)'
