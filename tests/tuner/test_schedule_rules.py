"""The schedule a recommendation carries: the schedule table's rows per kind of training, the
evidence that may rename it, schedule-free candidates, and the training horizon field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

import optimizers
from optimizers import Schedule
from tuner.evidence.records import EvidenceRecord
from tuner.prior import Candidate, lr_meaning, recommend
from tuner.rules import DEFAULT_SCHEDULE, SCHEDULE_RULES, schedule_rule
from tuner.task import TaskDescription

ALL = len(optimizers.names())


def task(**fields: Any) -> TaskDescription:
    return TaskDescription(**fields)


def first(t: TaskDescription, evidence: Any = ()) -> Candidate:
    return recommend(t, top_k=1, evidence=evidence).candidates[0]


# Canonical cases, the rules alone: (task, first optimizer, its schedule).
CANONICAL = [
    ("GPT-style LM pretraining",
     task(model_family="transformer", task_type="language_modeling", num_parameters=350_000_000,
          batch_size=512),
     "adamw", Schedule("cosine", warmup_fraction=0.01, final_lr_fraction=0.1)),
    ("open-ended LM training",
     task(model_family="transformer", task_type="language_modeling", num_parameters=350_000_000,
          batch_size=512, training_steps="unknown"),
     "adamw", Schedule("wsd", warmup_steps=2000, decay_fraction=0.2, decay_shape="1-sqrt")),
    ("ResNet-50",
     task(model_family="cnn", num_parameters=25_557_032, num_layers=50, batch_size=256),
     "sgd_momentum", Schedule("cosine", warmup_fraction=0.05)),
    ("BERT fine-tuning",
     task(model_family="transformer", num_parameters=110_000_000, fine_tuning="full"),
     "adamw", Schedule("linear", warmup_fraction=0.06)),
    ("LoRA",
     task(model_family="transformer", num_parameters=4_000_000, frozen_parameters=7_000_000_000,
          fine_tuning=True),
     "adamw", Schedule("linear", warmup_fraction=0.06)),
    ("Transformer translation",
     task(model_family="transformer", task_type="other", num_parameters=65_000_000),
     "adamw", Schedule("inverse_sqrt", warmup_steps=4000)),
    ("PPO on MuJoCo",
     task(model_family="mlp", task_type="reinforcement_learning", num_parameters=11_085),
     "adam", Schedule("constant")),
    ("DCGAN",
     task(model_family="cnn", task_type="generation", num_parameters=3_500_000, batch_size=128),
     "adam", Schedule("constant")),
    ("a 5M-parameter MLP", task(model_family="mlp", num_parameters=5_000_000), "adam",
     DEFAULT_SCHEDULE),
]


@pytest.mark.parametrize(("label", "t", "optimizer", "schedule"), CANONICAL,
                         ids=[c[0] for c in CANONICAL])
def test_the_rules_pick_the_schedule_per_kind_of_training(
        label: str, t: TaskDescription, optimizer: str, schedule: Schedule) -> None:
    c = first(t)
    assert c.optimizer == optimizer
    assert c.schedule == schedule
    # what the lr means is said, and the row that chose the schedule is cited
    assert c.rationale[1] == lr_meaning(schedule)
    rule = schedule_rule(t, optimizers.get(optimizer))
    assert rule.reference in c.references
    assert any(line.startswith("schedule: ") and schedule.describe() in line
               for line in c.rationale)


def test_lr_meaning_names_the_peak() -> None:
    assert lr_meaning(Schedule("cosine", warmup_fraction=0.05, final_lr_fraction=0.1)) == (
        "lr is the peak of its schedule: 5% warm-up, then cosine decay to 10% of the peak")
    assert "reached at the end of the warm-up" in lr_meaning(Schedule("inverse_sqrt",
                                                                      warmup_steps=10))
    assert lr_meaning(Schedule("constant")).startswith("lr is the constant lr")
    assert "no lr schedule" in lr_meaning(Schedule("none"))


def test_every_candidate_carries_a_valid_schedule() -> None:
    for t in [c[1] for c in CANONICAL]:
        for c in recommend(t, top_k=ALL).candidates:
            assert isinstance(c.schedule, Schedule)
            assert c.schedule == Schedule.from_dict(c.schedule.to_dict())
            assert (c.schedule.name == "none") == optimizers.get(c.optimizer).schedule_free
            assert c.rationale[1] == lr_meaning(c.schedule)


def test_the_schedule_table_is_well_formed() -> None:
    names = [rule.name for rule in SCHEDULE_RULES]
    assert len(names) == len(set(names))
    for rule in SCHEDULE_RULES:
        assert rule.rationale and rule.reference, rule.name
    default = SCHEDULE_RULES[-1]
    assert default.only_for is None and default.applies(task(model_family="other",
                                                             num_parameters=1))
    assert default.schedule(task(model_family="other", num_parameters=1)) == DEFAULT_SCHEDULE
    assert Schedule("cosine", warmup_fraction=0.05, final_lr_fraction=0.0) == DEFAULT_SCHEDULE


# -- schedule-free optimizers and the horizon --------------------------------------------------


def candidates(t: TaskDescription) -> dict[str, Candidate]:
    return {c.optimizer: c for c in recommend(t, top_k=ALL, evidence=()).candidates}


def test_schedule_free_candidates_carry_no_schedule_and_their_own_warm_up() -> None:
    known = candidates(task(model_family="mlp", num_parameters=5_000_000, training_steps=10_000))
    free = known["schedulefree_adamw"]
    assert free.schedule == Schedule("none")
    assert free.hyperparameters["warmup_steps"].default == 500  # 5% of 10000
    assert any(line.startswith("warmup_steps 500: 5% of the 10000 training steps")
               for line in free.rationale)
    assert known["schedulefree_sgd"].schedule.name == "none"
    # the lr comes from the scheduled optimizer's: AdamW's x2.5, SGD momentum's x10
    assert free.hyperparameters["lr"].default == pytest.approx(
        2.5 * known["adamw"].hyperparameters["lr"].default)
    assert known["schedulefree_sgd"].hyperparameters["lr"].default == pytest.approx(
        10 * known["sgd_momentum"].hyperparameters["lr"].default)
    unknown = candidates(task(model_family="mlp", num_parameters=5_000_000,
                              training_steps="unknown", dataset_size=10_000, batch_size=100))
    assert unknown["schedulefree_adamw"].hyperparameters["warmup_steps"].default == 500  # 5 epochs
    unstated = candidates(task(model_family="mlp", num_parameters=5_000_000))
    assert "warmup_steps" not in unstated["schedulefree_adamw"].hyperparameters


@pytest.mark.parametrize("fields", [
    {"model_family": "mlp", "num_parameters": 5_000_000},
    {"model_family": "transformer", "task_type": "language_modeling",
     "num_parameters": 124_000_000},
    {"model_family": "cnn", "num_parameters": 11_000_000, "num_layers": 18},
])
def test_an_unknown_horizon_makes_schedule_free_adamw_strong_and_prefers_wsd(
        fields: dict[str, Any]) -> None:
    fixed = recommend(task(**fields), top_k=ALL).candidates
    open_ended = recommend(task(**fields, training_steps="unknown"), top_k=ALL).candidates
    rank = {c.optimizer: i for i, c in enumerate(open_ended)}
    assert rank["schedulefree_adamw"] < 3, [c.optimizer for c in open_ended[:3]]
    assert rank["schedulefree_adamw"] < [c.optimizer for c in fixed].index("schedulefree_adamw")
    for c in open_ended:
        assert c.schedule.name in ("wsd", "none"), (c.optimizer, c.schedule)
        if c.schedule.name == "wsd":
            assert c.schedule.warmup_steps and c.schedule.warmup_fraction is None
    assert all(c.schedule.name != "wsd" for c in fixed)
    line = next(line for line in open_ended[rank["schedulefree_adamw"]].rationale
                if line.startswith("training horizon unknown"))
    assert "score x20" in line
    # a general task: schedule-free AdamW first
    if fields["model_family"] == "mlp":
        assert open_ended[0].optimizer == "schedulefree_adamw"


def test_a_known_horizon_changes_no_ranking() -> None:
    base = {"model_family": "transformer", "num_parameters": 124_000_000}
    plain = recommend(task(**base), top_k=ALL)
    known = recommend(task(**base, training_steps=50_000), top_k=ALL)
    assert [(c.optimizer, c.score, c.schedule) for c in plain.candidates] == [
        (c.optimizer, c.score, c.schedule) for c in known.candidates]


@pytest.mark.parametrize("value", ["forever", "", 0, -1, 1.5, True, 10**14, [5]])
def test_training_steps_accepts_a_count_unknown_or_null(value: object) -> None:
    with pytest.raises(ValidationError) as info:
        task(model_family="mlp", num_parameters=10, training_steps=value)
    assert [e["loc"] for e in info.value.errors()] == [("training_steps",)]


def test_training_steps_valid_values_round_trip() -> None:
    for value in (1, 10_000, 2.0, "unknown", None):
        t = task(model_family="mlp", num_parameters=10, training_steps=value)
        assert TaskDescription.model_validate_json(t.model_dump_json()) == t
    assert task(model_family="mlp", num_parameters=10, training_steps=2.0).training_steps == 2
    assert task(model_family="mlp", num_parameters=10, training_steps="unknown").horizon_unknown
    assert not task(model_family="mlp", num_parameters=10).horizon_unknown


# -- evidence --------------------------------------------------------------------------------


def record(i: int, t: TaskDescription, schedule: str | None, final: float | None = None
           ) -> EvidenceRecord:
    return EvidenceRecord(source="job", record_id=f"r{i}", label=f"run {i}", task=t,
                          optimizer="adam", lr=1e-3, outcome="completed", job_id=f"j{i}",
                          schedule=schedule, final_lr_fraction=final)


def test_similar_trainings_may_rename_the_schedule() -> None:
    t = task(model_family="mlp", num_parameters=5_000_000, batch_size=256)
    assert first(t).schedule == DEFAULT_SCHEDULE
    pool = [record(i, t, "linear", 0.1) for i in range(2)] + [record(9, t, "step")]
    c = first(t, pool)
    assert c.schedule == Schedule("linear", warmup_fraction=0.05, final_lr_fraction=0.1)
    line = next(line for line in c.rationale if line.startswith("schedule from evidence"))
    assert "2 similar training(s) used linear (weight 2.00)" in line
    assert c.rationale[1] == lr_meaning(c.schedule)
    assert [e.schedule for e in c.evidence][:1] in (["linear"], ["step"])
    # trainings that agree with the rules keep them; unbuildable schedules do not vote
    assert first(t, [record(0, t, "linear"), record(1, t, "cosine"),
                     record(2, t, "cosine")]).schedule == DEFAULT_SCHEDULE
    assert first(t, [record(0, t, "step"), record(1, t, "plateau")]).schedule == DEFAULT_SCHEDULE


def test_evidence_never_renames_open_ended_or_schedule_free_schedules() -> None:
    t = task(model_family="mlp", num_parameters=5_000_000, training_steps="unknown")
    pool = [record(i, t, "linear") for i in range(3)]
    by_name = {c.optimizer: c for c in recommend(t, top_k=ALL, evidence=pool).candidates}
    assert by_name["adam"].schedule.name == "wsd"
    assert by_name["schedulefree_adamw"].schedule.name == "none"
