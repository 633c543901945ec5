"""In-process tuning: prior-guided studies on real storages, exact budgets, warm start."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from tuner.contract import STUDY_PLAN
from tuner.prior import recommend
from tuner.tuning import (
    create_study,
    load_study,
    make_pruner,
    prior_for,
    study_plan,
    summarize_study,
    tune,
)
from tuner.workloads import get_workload


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def test_tune_runs_exactly_n_trials_on_a_sqlite_storage(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    seen = []
    result = tune("rosenbrock", n_trials=7, storage=storage, study_name="s", seed=3,
                  callback=lambda outcome, summary: seen.append(summary.finished))
    assert seen == [1, 2, 3, 4, 5, 6, 7]
    study = optuna.load_study(study_name="s", storage=storage)
    assert len(study.trials) == 7
    assert all(t.state.is_finished() for t in study.trials)
    summary = result.summary
    assert summary.finished == 7
    assert summary.best_value == pytest.approx(study.best_value)
    assert summary.best_optimizer == study.best_trial.user_attrs["optimizer"]
    assert set(summary.per_optimizer) <= {c.optimizer for c in result.recommendation.candidates}


def test_warm_start_evaluates_the_top_default_then_the_upper_lr_rung() -> None:
    result = tune("digits-mlp", n_trials=12, seed=0, epochs=1)
    ranked = result.recommendation.candidates
    tried = [(t.user_attrs["optimizer"], t.user_attrs["hyperparameters"]["lr"])
             for t in result.study.trials]
    top_default = ranked[0].hyperparameters["lr"].default
    assert tried[0] == (ranked[0].optimizer, pytest.approx(top_default))
    assert tried[1:4] == [(c.optimizer, pytest.approx(3 * c.hyperparameters["lr"].default))
                          for c in ranked[:3]]
    assert tried[4:6] == [(c.optimizer, pytest.approx(c.hyperparameters["lr"].default))
                          for c in ranked[1:3]]


def test_optimizers_restrict_the_search_in_the_prior_order() -> None:
    task = get_workload("digits-mlp").task
    restricted = prior_for(task, ["lion", "adam", "lion"])
    assert sorted(c.optimizer for c in restricted.candidates) == ["adam", "lion"]
    full_order = [c.optimizer for c in recommend(task, top_k=12).candidates]
    got = [c.optimizer for c in restricted.candidates]
    assert got == [n for n in full_order if n in got]
    with pytest.raises(ValueError, match="unknown name 'adamx'"):
        prior_for(task, ["adamx"])


def test_tune_rejects_a_zero_budget_and_unknown_workloads() -> None:
    with pytest.raises(ValueError, match="n_trials"):
        tune("rosenbrock", n_trials=0)
    with pytest.raises(ValueError, match="no-such"):
        tune("no-such", n_trials=1)


def test_a_study_carries_what_another_process_needs(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    wl = get_workload("rosenbrock")
    study, _ = create_study(storage, study_name="shared", workload=wl, n_trials=20, seed=1,
                            pruner="hyperband")
    reopened = load_study(storage, "shared")
    assert isinstance(reopened.pruner, optuna.pruners.HyperbandPruner)
    assert isinstance(reopened.sampler, optuna.samplers.TPESampler)
    assert study_plan(reopened) == study_plan(study)
    assert reopened.user_attrs[STUDY_PLAN] == study.user_attrs[STUDY_PLAN]
    waiting = [t for t in reopened.trials if t.state == TrialState.WAITING]
    assert 1 <= len(waiting) <= 10
    assert summarize_study(reopened).waiting == len(waiting)


def test_pruner_names_are_explicit() -> None:
    assert isinstance(make_pruner("median"), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("none"), optuna.pruners.NopPruner)
    with pytest.raises(ValueError, match="pruner"):
        make_pruner("sometimes")  # type: ignore[arg-type]
