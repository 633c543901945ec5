"""Where the rules were wrong (``tuner.evidence.insights``) on hand-made outcomes, and the
history's file format (``tuner.evidence.export``): strict reading, every bit kept."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tuner.evidence.export import MAX_REPORTED, ExportFileError, dump_line, load_lines
from tuner.evidence.history import MIN_COMPLETED_TRIALS, JobOutcome, OptimizerResult
from tuner.evidence.insights import PRIOR_ROW, lr_targets, rule_insights, top_pick
from tuner.prior import recommend, rules_lr
from tuner.rules import ADAPTIVE, RULES
from tuner.task import TaskDescription

SMALL = TaskDescription(model_family="mlp", num_parameters=20_000, dataset_size=1_500,
                        batch_size=64)  # small_problem fires: SGD with momentum first
CNN = TaskDescription(model_family="cnn", num_parameters=11_000_000, batch_size=256)
RULE = {rule.name: rule for rule in RULES}


def job(job_id: str, task: TaskDescription, winner: str, lr_factor: float,
        loser: str = "sgd_momentum", completed: int = 6, **fields: Any) -> JobOutcome:
    """A job ``winner`` won at ``lr_factor`` x the rules' lr for it, ``loser`` second."""
    lr = rules_lr(task, winner)
    assert lr is not None
    if loser == winner:
        loser = "nesterov"
    return JobOutcome(
        job_id=job_id, task=task, metric="val_loss", direction="minimize",
        trials_used=completed,
        per_optimizer=(OptimizerResult(winner, completed // 2, 0.1, {"lr": lr * lr_factor}),
                       OptimizerResult(loser, completed - completed // 2, 0.5, {"lr": 0.01})),
        **fields)


HISTORY = [
    job("s1", SMALL, "adam", 2.0),
    job("s2", SMALL, "adam", 8.0),
    job("s3", SMALL, "sgd_momentum", 0.5),
    job("c1", CNN, "sgd_momentum", 1.0, loser="adam"),
    job("c2", CNN, "sgd_momentum", 1.0, loser="adam"),
    job("few", SMALL, "adam", 100.0, completed=MIN_COMPLETED_TRIALS - 1),  # does not count
]


def test_top_picks_and_lr_laws_of_the_table() -> None:
    assert top_pick(RULE["small_problem"]) == "sgd_momentum"
    assert top_pick(RULE["convolutional"]) == "sgd_momentum"
    # the rule's factors times the base weights: Adam (3 x 3) above RMSProp (0.5 x 4)
    assert top_pick(RULE["reinforcement_learning"]) == "adam"
    assert top_pick(RULE["transformer"]) == "adamw"
    for name in ("lr_vs_batch_size", "small_model_lr", "lion_from_adamw", "does_not_fit_memory"):
        assert top_pick(RULE[name]) is None, name
    assert lr_targets(RULE["small_model_lr"]) == ADAPTIVE
    assert lr_targets(RULE["lion_from_adamw"]) == frozenset({"lion"})
    assert lr_targets(RULE["small_problem"]) is None


def test_a_rule_whose_pick_lost_comes_first_with_its_numbers() -> None:
    insights = rule_insights(HISTORY)
    assert (insights.jobs, insights.ignored) == (5, 1)
    first = insights.rules[0]
    assert first.rule == "small_problem" and first.top_pick == "sgd_momentum"
    assert (first.jobs, first.decided, first.top_pick_tried) == (3, 3, 3)
    assert first.top_pick_won == pytest.approx(1 / 3)
    assert first.median_lr_ratio == pytest.approx(2.0) and first.lr_jobs == 3  # of 2, 8, 0.5
    assert first.examples == ("s2", "s1", "s3")  # where it was most wrong first
    # an lr law: only the jobs won by an optimizer whose lr it sets count (adam's 2 and 8),
    # and an even count's median is the geometric mean of the middle two
    law = insights.rules[1]
    assert law.rule == "small_model_lr" and law.top_pick is None and law.top_pick_won is None
    assert (law.jobs, law.lr_jobs) == (5, 2) and law.median_lr_ratio == pytest.approx(4.0)
    cnn = next(r for r in insights.rules if r.rule == "convolutional")
    assert (cnn.jobs, cnn.top_pick_won) == (2, 1.0)
    assert cnn.median_lr_ratio == pytest.approx(1.0)
    fired = [r.jobs > 0 for r in insights.rules]
    assert fired == sorted(fired, reverse=True), "rules that never fired come last"
    assert {r.rule for r in insights.rules} == set(RULE)


def test_the_prior_row_is_the_rules_alone_top_1() -> None:
    for task in (SMALL, CNN):
        assert recommend(task, top_k=1, evidence=()).candidates[0].optimizer == "sgd_momentum"
    prior = rule_insights(HISTORY).prior
    assert prior.rule == PRIOR_ROW and prior.top_pick is None
    assert (prior.jobs, prior.decided, prior.top_pick_tried) == (5, 5, 5)
    assert prior.top_pick_won == pytest.approx(3 / 5)
    assert prior.median_lr_ratio == pytest.approx(1.0)  # of 2, 8, 0.5, 1, 1
    assert prior.examples[:2] == ("s2", "s1")


def test_an_empty_history_and_a_winner_this_server_lacks() -> None:
    empty = rule_insights([])
    assert empty.jobs == 0 and all(r.jobs == 0 for r in empty.rules)
    assert [r.rule for r in empty.rules] == [rule.name for rule in RULES]  # table order
    assert empty.prior.top_pick_won is None and empty.prior.median_lr_ratio is None
    foreign = JobOutcome(
        job_id="x", task=SMALL, metric="val_loss", direction="minimize", trials_used=6,
        per_optimizer=(OptimizerResult("someone_elses_opt", 6, 0.1, {"lr": 1e-3}),))
    row = rule_insights([foreign]).prior
    assert (row.jobs, row.top_pick_won, row.lr_jobs, row.median_lr_ratio) == (1, 0.0, 0, None)


# -- the file format ------------------------------------------------------------------------


def test_lines_round_trip_with_every_bit() -> None:
    outcomes = [job("a", SMALL, "adam", 1 / 3, namespace="team-a", workload="digits-mlp"),
                job("b", CNN, "sgd_momentum", math.pi)]
    partial = JobOutcome(  # a schedule with some fields only comes back as it was written
        job_id="c", task=SMALL, metric="val_loss", direction="maximize", trials_used=6,
        per_optimizer=(OptimizerResult("adam", 6, 0.9, {"lr": 1e-3}, {"name": "constant"}),),
        best_schedule={"name": "wsd", "warmup_steps": None, "decay_shape": "1-sqrt"})
    outcomes.append(partial)
    lines = [dump_line(o) for o in outcomes]
    assert load_lines(lines) == outcomes
    assert [dump_line(o) for o in load_lines(["", *lines, "  "])] == lines
    assert load_lines(line.encode() + b"\r" for line in lines) == outcomes


def _line(**changes: Any) -> str:
    data = job("j", SMALL, "adam", 1.0).to_json()
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return json.dumps(data)


@pytest.mark.parametrize(("bad", "field", "kind"), [
    ('{"job_id": "j", ', (), "json_invalid"),
    ("[" * 5000, (), "json_invalid"),
    (b"\xff\xfe{}", (), "json_invalid"),
    (_line(task=None), ("task",), "missing"),
    (_line(namespace="Team A"), ("namespace",), "value_error"),
    (_line(job_id="x" * 65), ("job_id",), "string_pattern_mismatch"),
    (_line(trials_used=1.5), ("trials_used",), "int_type"),
    (_line(extra=1), ("extra",), "extra_forbidden"),
    (_line(per_optimizer={"adam": {"completed": 6, "best_value": 1e999}}),
     ("per_optimizer", "adam", "best_value"), "finite_number"),
    (_line(per_optimizer={"adam": {"completed": 6, "best_value": 0.1,
                                   "best_schedule": {"name": "cosine", "warmup_steps": 5,
                                                     "warmup_fraction": 0.1}}}),
     ("per_optimizer", "adam", "best_schedule"), "value_error"),
    (_line(per_optimizer={"adam": {"completed": 6, "best_value": 0.1,
                                   "best_schedule": {"name": "cosine", "decay_shape": "x" * 999}}}),
     ("per_optimizer", "adam", "best_schedule", "decay_shape"), "literal_error"),
    (_line(best_schedule={"name": "cosine", "bogus": 1}), ("best_schedule", "bogus"),
     "extra_forbidden"),
    (_line(task={"model_family": "mlp", "num_parameters": 0}), ("task", "num_parameters"),
     "greater_than_equal"),
])
def test_a_bad_line_is_named_and_nothing_is_returned(bad: str | bytes,
                                                     field: tuple[str, ...], kind: str) -> None:
    good = dump_line(job("g", SMALL, "adam", 1.0))
    with pytest.raises(ExportFileError) as caught:
        load_lines([good, "", bad])
    problem = caught.value.problems[0]
    assert (problem.line, problem.field, problem.kind) == (3, field, kind)
    assert str(caught.value).startswith("line 3: ")
    for echo in ("Team A", "x" * 999):
        assert echo not in str(caught.value.problems), "problems never echo the input"


def test_a_job_id_twice_and_many_bad_lines() -> None:
    line = dump_line(job("dup", SMALL, "adam", 1.0))
    with pytest.raises(ExportFileError, match=r"^line 2: job_id: the same job_id as line 1$"):
        load_lines([line, line])
    with pytest.raises(ExportFileError) as caught:
        load_lines(["nope"] * (MAX_REPORTED + 10))
    assert len(caught.value.problems) == MAX_REPORTED and caught.value.total == MAX_REPORTED + 10
    assert str(caught.value).endswith(f"(and {MAX_REPORTED + 9} more)")


def test_optimizers_this_server_lacks_are_kept() -> None:
    (outcome,) = load_lines([_line(per_optimizer={"plugin-opt": {"completed": 6,
                                                                 "best_value": 0.1}})])
    assert [r.optimizer for r in outcome.per_optimizer] == ["plugin-opt"]
