"""Evidence: one similarity over task descriptions, and how similar trainings move the prior."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tuner.evidence.records as records_module
from tuner.evidence.records import (
    EMPTY_POOL,
    EvidencePool,
    EvidenceRecord,
    published_pool,
)
from tuner.evidence.similarity import SIMILARITY_FLOOR, similarity, weight
from tuner.prior import recommend, rules_lr
from tuner.task import TaskDescription


def task(**fields: Any) -> TaskDescription:
    return TaskDescription.model_validate(fields)


RESNET = task(model_family="cnn", num_parameters=25_000_000, num_layers=50,
              dataset_size=1_281_167, batch_size=256)
MLP = task(model_family="mlp", num_parameters=5_000_000, dataset_size=1_000_000,
           batch_size=256)


def record(t: TaskDescription, optimizer: str, lr: float | None, source: str = "job",
           record_id: str = "r1") -> EvidenceRecord:
    if source == "job":
        return EvidenceRecord(source="job", record_id=record_id, label="a past job", task=t,
                              optimizer=optimizer, lr=lr, outcome="best val_loss 0.5",
                              job_id=record_id)
    return EvidenceRecord(source="published", record_id=record_id, label="a paper", task=t,
                          optimizer=optimizer, lr=lr, outcome="published",
                          citation="Someone et al. 2020, Table 1")


# ------------------------------------------------------------------------------------------
# The similarity
# ------------------------------------------------------------------------------------------


def test_identical_tasks_are_fully_similar() -> None:
    assert similarity(RESNET, RESNET) == 1.0
    assert similarity(task(model_family="mlp", num_parameters=10),
                      task(model_family="mlp", num_parameters=10)) == 1.0


def test_one_clear_mismatch_makes_tasks_dissimilar() -> None:
    assert similarity(RESNET, RESNET.model_copy(update={"model_family": "transformer"})) == 0.0
    assert similarity(RESNET, RESNET.model_copy(
        update={"task_type": "reinforcement_learning"})) == 0.0
    # training from scratch and fine-tuning sit a decade or more apart in lr
    assert similarity(RESNET, RESNET.model_copy(update={"fine_tuning": True})) == 0.0
    full = RESNET.model_copy(update={"fine_tuning": "full"})
    peft = RESNET.model_copy(update={"fine_tuning": "parameter_efficient"})
    assert 0.0 < similarity(full, peft) < 0.5


def test_similarity_falls_with_the_size_ratio() -> None:
    values = [similarity(RESNET, RESNET.model_copy(update={"num_parameters": 25_000_000 * f}))
              for f in (1, 3, 10, 100, 1000)]
    assert values == sorted(values, reverse=True)
    assert values[0] == 1.0
    assert weight(values[-1]) == 0.0  # a thousand times larger weighs nothing


def test_unknown_sizes_count_as_partly_similar() -> None:
    known = task(model_family="mlp", num_parameters=10_000, batch_size=64)
    unknown = task(model_family="mlp", num_parameters=10_000)
    assert 0.5 < similarity(known, unknown) < 1.0


TASKS = st.builds(
    TaskDescription,
    model_family=st.sampled_from(["linear", "mlp", "cnn", "rnn", "transformer", "gnn", "other"]),
    task_type=st.sampled_from(["classification", "regression", "language_modeling",
                               "generation", "reinforcement_learning", "other"]),
    num_parameters=st.integers(1, 10**12),
    num_layers=st.one_of(st.none(), st.integers(1, 1000)),
    batch_size=st.one_of(st.none(), st.integers(1, 10**6)),
    sparse_features=st.booleans(),
    fine_tuning=st.sampled_from([False, True, "full", "parameter_efficient"]),
)


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(a=TASKS, b=TASKS)
def test_similarity_is_symmetric_and_bounded(a: TaskDescription, b: TaskDescription) -> None:
    s = similarity(a, b)
    assert 0.0 <= s <= 1.0
    assert s == pytest.approx(similarity(b, a))
    assert similarity(a, a) == 1.0
    assert 0.0 <= weight(s) <= 1.0


def test_weight_is_zero_up_to_the_floor_and_one_when_identical() -> None:
    assert weight(SIMILARITY_FLOOR) == 0.0
    assert weight(SIMILARITY_FLOOR / 2) == 0.0
    assert weight(1.0) == 1.0
    assert 0 < weight((1 + SIMILARITY_FLOOR) / 2) < 1


# ------------------------------------------------------------------------------------------
# Records and pools
# ------------------------------------------------------------------------------------------


def test_records_need_the_reference_of_their_source() -> None:
    with pytest.raises(ValueError, match="citation"):
        EvidenceRecord(source="published", record_id="x", label="x", task=MLP, optimizer="adam",
                       lr=1e-3, outcome="published")
    with pytest.raises(ValueError, match="job id"):
        EvidenceRecord(source="job", record_id="x", label="x", task=MLP, optimizer="adam",
                       lr=1e-3, outcome="done", citation="a paper")
    with pytest.raises(ValueError, match="lr"):
        record(MLP, "adam", 0.0)


def test_pool_ids_are_unique_and_without_leaves_one_out() -> None:
    with pytest.raises(ValueError, match="unique"):
        EvidencePool([record(MLP, "adam", 1e-3), record(MLP, "sgd", 0.1)])
    pool = published_pool()
    first = next(iter(pool))
    rest = pool.without(first.record_id)
    assert len(rest) == len(pool) - 1
    assert first.record_id not in {r.record_id for r in rest}


def test_published_pool_covers_the_table() -> None:
    from tuner.evidence import published_trainings

    pool = published_pool()
    assert len(pool) == len(published_trainings())
    assert all(r.source == "published" and r.citation for r in pool)
    lora = [r for r in pool if r.task.fine_tuning == "parameter_efficient"]
    assert lora and all(r.task.fine_tuning_kind == "parameter_efficient" for r in lora)


# ------------------------------------------------------------------------------------------
# How evidence moves a recommendation
# ------------------------------------------------------------------------------------------


def test_an_empty_pool_is_the_rules_alone() -> None:
    rules = recommend(MLP, top_k=13, evidence=())
    assert recommend(MLP, top_k=13, evidence=EMPTY_POOL) == rules
    assert all(c.evidence == [] for c in rules.candidates)
    assert not any("evidence" in line for c in rules.candidates for line in c.rationale)


def test_dissimilar_records_weigh_nothing() -> None:
    far = task(model_family="transformer", task_type="language_modeling",
               num_parameters=10**11)
    pool = [record(far, "lion", 1e-5)]
    assert recommend(MLP, top_k=13, evidence=pool) == recommend(MLP, top_k=13, evidence=())


def test_similar_records_move_score_and_lr_and_say_so_in_numbers() -> None:
    rules = {c.optimizer: c for c in recommend(MLP, top_k=13, evidence=()).candidates}
    pool = [record(MLP.model_copy(update={"num_parameters": 4_000_000}), "nadam", 4e-4,
                   record_id=f"job{i}") for i in range(3)]
    moved = {c.optimizer: c for c in recommend(MLP, top_k=13, evidence=pool).candidates}
    assert moved["nadam"].score > rules["nadam"].score
    assert moved["adam"].score < rules["adam"].score
    lr_rules = rules["nadam"].hyperparameters["lr"].default
    lr_moved = moved["nadam"].hyperparameters["lr"].default
    carried = moved["nadam"].evidence[0].lr_for_task
    assert carried is not None
    assert min(lr_rules, carried) < lr_moved < max(lr_rules, carried)
    lines = moved["nadam"].rationale
    assert any(line.startswith("evidence: 3 similar training(s)") and "score" in line
               for line in lines)
    assert any(line.startswith("closest job: a past job (job job0) used nadam at lr 0.0004")
               for line in lines)
    assert any(line.startswith("lr from evidence:") for line in lines)
    assert len(moved["nadam"].evidence) == 3
    assert all(e.source == "job" and e.job_id for e in moved["nadam"].evidence)


def test_source_does_not_change_the_weight() -> None:
    near = MLP.model_copy(update={"num_parameters": 4_000_000})
    as_job = recommend(MLP, top_k=13, evidence=[record(near, "nadam", 4e-4, "job")])
    as_paper = recommend(MLP, top_k=13, evidence=[record(near, "nadam", 4e-4, "published")])
    assert [(c.optimizer, c.score, c.hyperparameters) for c in as_job.candidates] == [
        (c.optimizer, c.score, c.hyperparameters) for c in as_paper.candidates]


def test_a_published_lr_is_carried_by_the_rules_laws() -> None:
    """An SGD record at batch 256 says 4x its lr at batch 1024 (linear scaling)."""
    small_batch = RESNET
    large_batch = RESNET.model_copy(update={"batch_size": 1024})
    assert rules_lr(large_batch, "sgd_momentum") == pytest.approx(
        4 * (rules_lr(small_batch, "sgd_momentum") or math.nan))
    rec = recommend(large_batch, top_k=13, evidence=[record(small_batch, "sgd_momentum", 0.2)])
    sgd = next(c for c in rec.candidates if c.optimizer == "sgd_momentum")
    assert sgd.evidence[0].lr == 0.2
    assert sgd.evidence[0].lr_for_task == pytest.approx(0.8)


def test_a_row_never_counts_for_itself_in_the_benchmark(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Leave-one-out: every row is scored against the pool less itself; had it stayed, it
    would be its own most similar evidence and the figures would be optimistic."""
    import bench.recommend_accuracy as bench
    from tuner.evidence import published_trainings

    rows = published_trainings()
    pool = published_pool()
    used: list[tuple[str, EvidencePool]] = []
    original = bench.leave_one_out

    def spy(p: EvidencePool, row: Any) -> EvidencePool:
        out = original(p, row)
        used.append((row.id, out))
        return out

    monkeypatch.setattr(bench, "leave_one_out", spy)
    honest = bench.evaluate(rows, use_evidence=True, view="full")
    assert [row_id for row_id, _ in used] == [row.id for row in rows]
    for row_id, evidence in used:
        assert len(evidence) == len(pool) - 1
        assert row_id not in {r.record_id for r in evidence}
    monkeypatch.setattr(bench, "leave_one_out", lambda p, row: p)
    optimistic = bench.evaluate(rows, use_evidence=True, view="full")
    assert sum(r.top1 for r in optimistic) > sum(r.top1 for r in honest)


# -- the pool's index: the same records as scoring every one ----------------------------------

_FAMILIES = ("mlp", "cnn", "linear", "other")
_TYPES = ("classification", "regression", "other")
# Sizes on a coarse grid of log10 steps (exact ties and records right at the window's edge)
# and anywhere between; any of them unknown.
_LOG = st.one_of(st.integers(0, 24).map(lambda k: k / 4), st.floats(0.0, 6.0))


def _size(low: int) -> st.SearchStrategy[int | None]:
    return st.one_of(st.none(), _LOG.map(lambda x: max(low, round(10 ** x))))


_TASKS = st.builds(
    lambda family, task_type, params, batch, layers, data, sparse, fine: TaskDescription(
        model_family=family, task_type=task_type, num_parameters=params, batch_size=batch,
        num_layers=None if layers is None else min(layers, 100_000), dataset_size=data,
        sparse_features=sparse, fine_tuning=fine),
    st.sampled_from(_FAMILIES), st.sampled_from(_TYPES),
    _LOG.map(lambda x: max(1, round(10 ** (x + 2)))), _size(1), _size(1), _size(1),
    st.booleans(), st.sampled_from([False, False, False, "full", "parameter_efficient"]),
)


def _near(t: TaskDescription, draw: Any) -> TaskDescription:
    """A task a little away from ``t`` (so that many records sit near the similarity floor)."""
    factor = 10 ** draw(st.floats(-0.8, 0.8))
    return t.model_copy(update={"num_parameters": max(1, round(t.num_parameters * factor))})


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_the_pools_index_scores_exactly_what_scoring_every_record_does(data: Any) -> None:
    tasks = data.draw(st.lists(_TASKS, min_size=1, max_size=12))
    tasks += [_near(t, data.draw) for t in tasks for _ in range(data.draw(st.integers(0, 3)))]
    pool = EvidencePool([*published_pool(), *(
        record(t, "adamw", 1e-3, record_id=f"j{i}") for i, t in enumerate(tasks)), *(
        # a job's other optimizers: records of the same task
        record(t, "sgd_momentum", 0.1, record_id=f"k{i}") for i, t in enumerate(tasks[::2]))])
    queries = [data.draw(st.sampled_from(tasks)), _near(data.draw(st.sampled_from(tasks)),
                                                         data.draw), data.draw(_TASKS)]
    for query in [*queries, *queries]:  # asked again: the kept plans of the first asks
        assert pool.scored(query) == pool.scored_plainly(query)
        left = pool.without("j0")
        assert left.scored(query) == left.scored_plainly(query)


def test_the_pool_keeps_a_bounded_number_of_query_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records_module, "_PLANS_KEPT", 2)
    tasks = [MLP.model_copy(update={"batch_size": b}) for b in (16, 32, 64, 128, 256)]
    pool = EvidencePool([*published_pool(), *(
        record(t, "adamw", 1e-3, record_id=f"j{i}") for i, t in enumerate(tasks))])
    for query in [*tasks, *reversed(tasks)]:
        assert pool.scored(query) == pool.scored_plainly(query)
        assert len(pool._plans) <= 2


def test_the_index_keeps_a_record_right_above_the_floor_and_drops_one_at_it() -> None:
    base = task(model_family="mlp", num_parameters=10_000, batch_size=32, num_layers=2,
                dataset_size=1_000)
    # Parameters alone: similarity exp(-d^2 / 2) for d decades apart.
    edge = math.sqrt(-2 * math.log(SIMILARITY_FLOOR))
    inside = base.model_copy(update={"num_parameters": round(10 ** (4 + edge - 1e-4))})
    outside = base.model_copy(update={"num_parameters": round(10 ** (4 + edge + 1e-4))})
    pool = EvidencePool([record(inside, "adam", 1e-3, record_id="in"),
                         record(outside, "adam", 1e-3, record_id="out")])
    assert [s.record.record_id for s in pool.scored(base)] == ["in"]
    assert pool.scored(base) == pool.scored_plainly(base)


def test_a_records_rules_lr_is_computed_once_and_carries_the_same_lr() -> None:
    from tuner.prior import carried_lr

    r = record(MLP, "adamw", 2e-3)
    assert r.memo == {}
    carried = carried_lr(RESNET, r)
    here, there = rules_lr(RESNET, "adamw"), rules_lr(MLP, "adamw")
    assert here is not None and there is not None
    assert r.memo == {"rules_lr": there}
    assert carried == pytest.approx(2e-3 * here / there)
    assert carried_lr(RESNET, r) == carried
    assert r == record(MLP, "adamw", 2e-3)  # the memo is not part of the record
