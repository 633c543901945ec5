"""Finished jobs as evidence: outcomes, their records, how they move a recommendation, and the
warm start of a new job from the nearest past jobs."""

from __future__ import annotations

import json
import math
from typing import Any

import optuna
import pytest

from tuner.contract import SOURCE_RULES, SOURCE_SAMPLER, trial_source
from tuner.evidence.history import (
    MIN_COMPLETED_TRIALS,
    HistoryError,
    JobOutcome,
    OptimizerResult,
    check_namespace,
    job_records,
)
from tuner.evidence.records import published_pool
from tuner.prior import Recommendation, recommend
from tuner.task import TaskDescription
from tuner.tuning import create_study, evidence_with, history_starts, tune
from tuner.workloads import get_workload

MLP = TaskDescription(model_family="mlp", num_parameters=20_000, dataset_size=1_500,
                      batch_size=64)


def outcome(job_id: str = "j1", task: TaskDescription = MLP, *,
            results: dict[str, tuple[int, float | None, dict[str, float]]] | None = None,
            direction: str = "minimize", **fields: Any) -> JobOutcome:
    results = results if results is not None else {
        "nadam": (6, 0.10, {"lr": 2e-3, "beta1": 0.9}),
        "sgd_momentum": (6, 0.20, {"lr": 0.05, "momentum": 0.9}),
        "adamw": (6, 0.15, {"lr": 1e-3}),
    }
    return JobOutcome(
        job_id=job_id, task=task, metric="val_loss", direction=direction,  # type: ignore[arg-type]
        trials_used=sum(c for c, _, _ in results.values()),
        per_optimizer=tuple(OptimizerResult(name, c, v, hps)
                            for name, (c, v, hps) in results.items()),
        **fields)


# -- outcomes and records -------------------------------------------------------------------


def test_an_outcome_round_trips_through_json() -> None:
    o = outcome(namespace="team-a", workload="digits-mlp")
    line = json.dumps(o.to_json())
    assert JobOutcome.from_json(json.loads(line)) == o


@pytest.mark.parametrize(("data", "message"), [
    ([], "expected a JSON object"),
    ({"job_id": "x"}, "missing field 'task'"),
    ({**outcome().to_json(), "direction": "up"}, "direction must be minimize or maximize"),
    ({**outcome().to_json(), "namespace": "Team A"}, "namespace 'Team A'"),
    ({**outcome().to_json(), "per_optimizer": []}, "per_optimizer: expected an object"),
    ({**outcome().to_json(), "per_optimizer": {"adamw": {"completed": 1, "best_value": "x"}}},
     "could not convert"),
])
def test_a_malformed_line_is_a_history_error_naming_what(data: Any, message: str) -> None:
    with pytest.raises(HistoryError, match=message):
        JobOutcome.from_json(data)


def test_namespaces_are_short_lower_case_labels() -> None:
    assert check_namespace("team-a.v2") == "team-a.v2"
    for bad in ("", "Team", "-a", "a" * 65, "a/b"):
        with pytest.raises(HistoryError):
            check_namespace(bad)


def test_standings_run_from_the_winner_to_the_worst_in_either_direction() -> None:
    assert outcome().standings() == pytest.approx({"nadam": 1.0, "adamw": 0.5,
                                                   "sgd_momentum": 0.0})
    maximized = outcome(direction="maximize")
    assert maximized.standings() == pytest.approx({"nadam": 0.0, "adamw": 0.5,
                                                   "sgd_momentum": 1.0})
    assert maximized.winner is not None and maximized.winner.optimizer == "sgd_momentum"
    tie = outcome(results={"adam": (5, 0.3, {}), "lion": (5, 0.3, {})})
    assert tie.standings() == {"adam": 1.0, "lion": 1.0}


def test_records_come_from_jobs_with_enough_completed_trials_only() -> None:
    few = outcome("few", results={"adamw": (MIN_COMPLETED_TRIALS - 1, 0.1, {"lr": 1e-3})})
    none_finite = outcome("nan", results={"adamw": (9, None, {})})
    records = job_records([outcome(), few, none_finite])
    assert {r.record_id for r in records} == {"j1/nadam", "j1/adamw", "j1/sgd_momentum"}
    nadam = next(r for r in records if r.optimizer == "nadam")
    assert nadam.source == "job" and nadam.job_id == "j1" and nadam.standing == 1.0
    assert nadam.lr == 2e-3 and nadam.hyperparameters == {"lr": 2e-3, "beta1": 0.9}
    assert nadam.outcome.startswith("won: best val_loss 0.1")


# -- recommendations ------------------------------------------------------------------------


def test_a_similar_jobs_winner_moves_up_and_is_cited() -> None:
    before = recommend(MLP, top_k=13)
    after = recommend(MLP, top_k=13, evidence=evidence_with([outcome()]))
    rank = {c.optimizer: i for i, c in enumerate(after.candidates)}
    old = {c.optimizer: i for i, c in enumerate(before.candidates)}
    assert rank["nadam"] < old["nadam"] and rank["nadam"] == 0
    top = after.candidates[0]
    job_evidence = [e for e in top.evidence if e.source == "job"]
    assert job_evidence and job_evidence[0].job_id == "j1" and job_evidence[0].standing == 1.0
    assert any("(job j1) used nadam" in line and "won" in line for line in top.rationale)


def test_a_loser_moves_less_than_the_winner() -> None:
    after = {c.optimizer: c.score for c in
             recommend(MLP, top_k=13, evidence=evidence_with([outcome()])).candidates}
    before = {c.optimizer: c.score for c in recommend(MLP, top_k=13).candidates}
    gain = {n: after[n] / before[n] for n in ("nadam", "adamw", "sgd_momentum")}
    assert gain["nadam"] > gain["adamw"] > gain["sgd_momentum"]


def test_a_dissimilar_job_weighs_nothing() -> None:
    far = outcome(task=TaskDescription(model_family="transformer", num_parameters=10**9))
    assert recommend(MLP, top_k=13, evidence=evidence_with([far])) == recommend(MLP, top_k=13)


def _lr(recommendation: Any, name: str) -> Any:
    return next(c for c in recommendation.candidates if c.optimizer == name
                ).hyperparameters["lr"]


def test_agreeing_jobs_narrow_the_lr_range_and_an_outlier_widens_it() -> None:
    rules = _lr(recommend(MLP, top_k=13), "nadam")
    same = [outcome(f"j{i}", results={"nadam": (8, 0.1, {"lr": 2e-3})}) for i in range(3)]
    narrowed = _lr(recommend(MLP, top_k=13, evidence=evidence_with(same)), "nadam")
    assert math.log(narrowed.high / narrowed.low) < math.log(rules.high / rules.low)
    assert narrowed.low <= 2e-3 <= narrowed.high
    outlier = [outcome("far", results={"nadam": (8, 0.1, {"lr": rules.high * 20})})]
    widened = _lr(recommend(MLP, top_k=13, evidence=evidence_with(outlier)), "nadam")
    assert widened.high >= rules.high * 20


def test_a_recommendation_with_history_is_what_validation_would_build() -> None:
    # recommend() builds its models without validating them again (latency): they must be
    # exactly what validating their fields makes.
    rec = recommend(MLP, evidence=evidence_with([outcome("near")]))
    assert any(e.source == "job" for c in rec.candidates for e in c.evidence)
    again = Recommendation.model_validate(rec.model_dump())
    assert again == rec
    assert again.model_dump_json() == rec.model_dump_json()
    for built, validated in zip(rec.candidates, again.candidates, strict=True):
        assert built.model_fields_set == validated.model_fields_set
        assert built.memory == validated.memory and hash(built.memory) == hash(validated.memory)


# -- warm starts ----------------------------------------------------------------------------


def test_history_starts_are_the_nearest_winners_with_the_lr_carried() -> None:
    near = outcome("near")
    bigger = outcome("bigger", task=MLP.model_copy(update={"num_parameters": 60_000}))
    starts = history_starts(MLP, evidence_with([bigger, near]))
    assert [s.job_id for s in starts] == ["near", "bigger"]
    assert starts[0].optimizer == "nadam" and starts[0].hyperparameters["lr"] == 2e-3
    assert starts[1].hyperparameters["beta1"] == 0.9


def _enqueued(study: optuna.Study) -> list[tuple[str | None, str]]:
    return [(t.system_attrs["fixed_params"]["optimizer"], trial_source(t))
            for t in study.get_trials(deepcopy=False)]


def test_a_new_job_tries_the_history_first_then_the_rules_top_default() -> None:
    rules_top = recommend(MLP).candidates[0].optimizer
    history = [outcome("near", results={"lion": (8, 0.1, {"lr": 3e-4}),
                                        rules_top: (8, 0.3, {})})]
    study, recommendation = create_study(optuna.storages.InMemoryStorage(), study_name="s",
                                         workload=None, task=MLP, n_trials=20,
                                         history=history)
    points = _enqueued(study)
    assert points[0] == ("lion", "history:near")
    assert points[1] == (rules_top, SOURCE_RULES)
    # then the nearest job's configuration with its carried lr x3 and /3, then the rules
    assert points[2:4] == [("lion", "history:near")] * 2
    trials = study.get_trials()
    lrs = [trials[i].system_attrs["fixed_params"]["lion.lr"] for i in (0, 2, 3)]
    assert lrs[1:] == pytest.approx([lrs[0] * 3, lrs[0] / 3])
    assert all(source == SOURCE_RULES for _, source in points[4:])
    assert rules_top in [c.optimizer for c in recommendation.candidates]


def test_a_past_winner_the_prior_leaves_out_joins_the_plan_and_runs_first() -> None:
    far = MLP.model_copy(update={"num_parameters": 80_000})  # similar, but weighs little
    history = [outcome("far", task=far, results={"adagrad": (8, 0.1, {"lr": 0.05}),
                                                 "adamw": (8, 0.3, {"lr": 1e-3})})]
    pool = evidence_with(history)
    assert "adagrad" not in [c.optimizer for c in recommend(MLP, evidence=pool).candidates]
    study, recommendation = create_study(optuna.storages.InMemoryStorage(), study_name="s",
                                         workload=None, task=MLP, n_trials=20, history=history)
    assert _enqueued(study)[0] == ("adagrad", "history:far")
    assert "adagrad" in [c.optimizer for c in recommendation.candidates]
    # A user's own choice of optimizers wins over the history's.
    study, recommendation = create_study(optuna.storages.InMemoryStorage(), study_name="t",
                                         workload=None, task=MLP, n_trials=20, history=history,
                                         optimizer_names=["adamw", "adam"])
    assert {name for name, _ in _enqueued(study)} <= {"adamw", "adam"}
    assert {c.optimizer for c in recommendation.candidates} == {"adamw", "adam"}


def test_without_history_the_warm_start_is_the_rules_alone() -> None:
    study, _ = create_study(optuna.storages.InMemoryStorage(), study_name="s", workload=None,
                            task=MLP, n_trials=10)
    assert {source for _, source in _enqueued(study)} == {SOURCE_RULES}
    assert len(published_pool()) == len(evidence_with([]))


def test_tuning_records_where_each_trial_came_from() -> None:
    workload = get_workload("rosenbrock")
    past = outcome("past", task=workload.task,
                   results={"adam": (6, 1e-4, {"lr": 0.05}), "sgd_momentum": (6, 1.0, {})})
    result = tune(workload, n_trials=8, history=[past], epochs=2)
    sources = [trial_source(t) for t in result.study.trials]
    assert sources[0] == "history:past"
    assert SOURCE_RULES in sources and sources[-1] == SOURCE_SAMPLER
