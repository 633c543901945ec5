"""The schedule-free benchmark: what it trains, and its stored run's report."""

from __future__ import annotations

import pytest

from bench.schedule_free import STORED_RUN, main, schedule_free_plan, training_steps
from optimizers import Schedule
from tuner.workloads import get_workload


def test_schedule_free_runs_at_its_recommended_default_with_its_own_warm_up() -> None:
    workload = get_workload("digits-mlp")
    assert training_steps(workload) == 15 * 45
    (planned,) = schedule_free_plan(workload).candidates
    assert planned.name == "schedulefree_adamw" and not planned.tuned
    assert planned.schedule == Schedule("none")
    assert planned.defaults["warmup_steps"] == round(0.05 * 15 * 45)
    assert training_steps(get_workload("rosenbrock")) == 20 * 100


def test_report_prints_the_stored_runs_table(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--report", STORED_RUN])
    out = capsys.readouterr().out
    assert out.startswith(f"{STORED_RUN}: 3 seeds, measured on ")
    for name in ("digits-mlp", "tiny-transformer", "rosenbrock"):
        assert name in out
    assert "schedule-free AdamW at its default is at least as good" in out
