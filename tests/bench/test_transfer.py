"""The history-transfer benchmark: its zoo, leave-one-out history, target logic and report
(nothing here trains a study)."""

from __future__ import annotations

import gzip
import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest

from bench.transfer import (
    GOAL_AT,
    METHODS,
    STORED_RUN,
    HistoryJob,
    Method,
    StudyResult,
    Task,
    ZooTrial,
    best_so_far,
    history_for,
    job_id,
    job_outcome,
    main,
    measure_service_latency,
    parse_args,
    pooled_spread,
    run_history_job,
    summarize,
    synthetic_history,
    targets,
    to_json,
)
from bench.transfer_zoo import FAMILIES, zoo_names, zoo_spec, zoo_specs, zoo_workload
from bench.tuning_efficiency import machine
from tuner.contract import trial_source
from tuner.evidence.history import JobOutcome, OptimizerResult, job_records
from tuner.evidence.records import published_pool
from tuner.evidence.similarity import SIMILARITY_FLOOR, similarity
from tuner.tuning import OptimizerSummary, StudySummary, create_study, evidence_with
from tuner.workloads.training import SupervisedWorkload, count_parameters

# -- the zoo --------------------------------------------------------------------------------


def test_the_zoo_spans_families_sizes_batches_and_data() -> None:
    specs = zoo_specs()
    assert len(specs) >= 12 and len(set(zoo_names())) == len(specs)
    assert {s.family for s in specs} == set(FAMILIES) and len(FAMILIES) >= 4
    for family in FAMILIES:
        mine = [s for s in specs if s.family == family]
        assert {s.size for s in mine} == {1, 4, 16}
        assert len({s.batch_size for s in mine}) == 2
        assert len({s.dataset_size for s in mine}) == 2


@pytest.mark.parametrize("name", zoo_names())
def test_a_zoo_task_is_what_it_says(name: str) -> None:
    spec = zoo_spec(name)
    workload = zoo_workload(name)
    assert isinstance(workload, SupervisedWorkload)
    task = workload.task
    assert task.model_family == spec.family
    assert task.num_parameters == count_parameters(workload.build_model())
    assert (task.batch_size, task.dataset_size) == (spec.batch_size, spec.dataset_size)
    assert workload.batch_size == spec.batch_size and workload.default_epochs == spec.epochs
    assert len(workload.dataset().train) == spec.dataset_size  # the rows it trains on
    assert zoo_workload(name) is workload  # built once


def _task(name: str) -> Any:
    return zoo_workload(name).task


def test_sizes_grow_about_4x_per_step_at_the_same_depth() -> None:
    for family in FAMILIES:
        x1, x4, x16 = (_task(f"{family}-x{s}") for s in (1, 4, 16))
        assert x1.num_layers == x4.num_layers == x16.num_layers
        assert 3.0 <= x4.num_parameters / x1.num_parameters <= 4.5
        assert 3.0 <= x16.num_parameters / x4.num_parameters <= 4.5


def test_related_tasks_count_as_evidence_and_unrelated_ones_do_not() -> None:
    for family in FAMILIES:
        x1, x4, x16 = (f"{family}-x{s}" for s in (1, 4, 16))
        variant = next(s.name for s in zoo_specs() if s.family == family
                       and s.name not in (x1, x4, x16))
        for a, b in ((x1, x4), (x4, x16), (x4, variant)):
            assert similarity(_task(a), _task(b)) > SIMILARITY_FLOOR, (a, b)
        assert similarity(_task(x1), _task(x16)) <= SIMILARITY_FLOOR
    for a, b in itertools.combinations(zoo_names(), 2):
        if zoo_spec(a).family != zoo_spec(b).family:
            assert similarity(_task(a), _task(b)) == 0.0


def test_no_published_training_weighs_for_a_zoo_task() -> None:
    # so that (a) is the rules alone, and (b) differs from it only by the history
    for name in zoo_names():
        assert published_pool().scored(_task(name)) == []


# -- history --------------------------------------------------------------------------------


def _outcome(name: str, winner: str = "adamw", lr: float = 3e-3) -> JobOutcome:
    return JobOutcome(
        job_id=job_id(name), task=_task(name), metric="val_loss", direction="minimize",
        trials_used=20, workload=zoo_workload(name).name,
        per_optimizer=(OptimizerResult(winner, 10, 0.1, {"lr": lr}),
                       OptimizerResult("sgd_momentum", 10, 0.3, {"lr": 0.1})))


def test_leave_one_out_never_lets_a_task_see_its_own_job() -> None:
    outcomes = [_outcome(n) for n in zoo_names()]
    for name in zoo_names():
        past = history_for(name, outcomes)
        assert len(past) == len(outcomes) - 1
        assert job_id(name) not in {o.job_id for o in past}
        assert all(r.job_id != job_id(name) for r in job_records(past))


def test_a_held_out_task_starts_from_its_neighbours_not_itself() -> None:
    outcomes = [_outcome(n, winner="lion", lr=1e-4) for n in zoo_names()]
    name = "mlp-x4"
    study, _ = create_study(optuna.storages.InMemoryStorage(), study_name="s",
                            workload=zoo_workload(name), n_trials=20, pruner="none",
                            history=history_for(name, outcomes))
    sources = [trial_source(t) for t in study.get_trials(deepcopy=False)]
    firsts = [s for s in sources if s.startswith("history:")]
    assert sources[0].startswith("history:")  # the history goes first
    assert f"history:{job_id(name)}" not in sources
    assert {s.removeprefix("history:") for s in firsts} <= {
        job_id(n) for n in ("mlp-x1", "mlp-x16", "mlp-x4-b64-half")}


def test_a_finished_study_becomes_a_job_outcome() -> None:
    summary = StudySummary(
        direction="minimize", completed=6, pruned=1, failed=0, running=0, waiting=0,
        best_value=0.1, best_optimizer="adamw", best_hyperparameters={"lr": 1e-3},
        best_trial=3, per_optimizer={
            "adamw": OptimizerSummary(4, 4, 0, 0, 0.1, {"lr": 1e-3}),
            "sgd_momentum": OptimizerSummary(3, 2, 1, 0, 0.4, {"lr": 0.1, "momentum": 0.9})},
        best_schedule={"name": "cosine"})
    o = job_outcome("cnn-x1", zoo_workload("cnn-x1"), summary)
    assert o.job_id == "zoo-cnn-x1" and o.task == _task("cnn-x1") and o.trials_used == 7
    assert o.winner is not None and o.winner.optimizer == "adamw"
    assert o.winner.best_schedule == {"name": "cosine"}
    assert {r.optimizer: r.completed for r in o.per_optimizer} == {"adamw": 4,
                                                                   "sgd_momentum": 2}
    assert JobOutcome.from_json(json.loads(json.dumps(o.to_json()))) == o


# -- targets on hand-made curves -------------------------------------------------------------


def _study(method: Method, seed: int, values: list[float | None], task: str = "t",
           source: str | None = None) -> StudyResult:
    trials = [ZooTrial(value=v, state="COMPLETE" if v is not None else "PRUNED",
                       optimizer="adamw", hyperparameters={}, reason=None, seconds=0.1,
                       source=source) for v in values]
    return StudyResult(Task(method, task, seed, len(values)), "minimize", trials)


def test_best_so_far_ignores_failed_trials() -> None:
    assert best_so_far([None, 3.0, None, 2.0, 5.0], "minimize") == [math.inf, 3, 3, 2, 2]
    assert best_so_far([1.0, None, 4.0], "maximize") == [1, 1, 4]


def _run(task: str, tpe: Sequence[Sequence[float]], rules: Sequence[Sequence[float | None]],
         history: Sequence[Sequence[float | None]]) -> list[StudyResult]:
    out = [_study("tpe", s, list(v), task) for s, v in enumerate(tpe)]
    out += [_study("rules", s, list(v), task) for s, v in enumerate(rules)]
    out += [_study("history", s, list(v), task, source="history:zoo-x")
            for s, v in enumerate(history)]
    return out


def test_trials_to_target_best_at_and_spread() -> None:
    flat = [1.0] * 20
    tpe = [[0.5] * 50, [0.4] * 50, [0.6] * 50]  # target: the median of 0.5, 0.4, 0.6
    rules: list[list[float | None]] = [
        [*flat[:9], 0.5, *flat[10:]],  # reaches 0.5 at trial 10
        [None, *flat[1:11], 0.45, *flat[12:]],  # at 12
        list(flat),  # never
    ]
    history: list[list[float | None]] = [[0.5, *flat[1:]], [0.9, 0.49, *flat[2:]],
                                         [*flat[:4], 0.3, *flat[5:]]]
    s = summarize("t", _run("t", tpe, rules, history))
    assert s.target == 0.5
    assert s.needed["rules"] == [10, 12, math.inf] and s.needed_median["rules"] == 12
    assert s.needed["history"] == [1, 2, 5] and s.needed_median["history"] == 2
    assert s.best_at["history"][5] == 0.49 and s.best_at["rules"][5] == 1.0
    assert s.best_at["rules"][GOAL_AT] == 0.5 and s.best_at["history"][GOAL_AT] == 0.49
    assert s.spread == pytest.approx(pooled_spread([0.5, 0.45, 1.0], [0.5, 0.49, 0.3]))
    assert s.worse_at_goal == pytest.approx(-0.01) and s.not_worse and s.within
    assert s.history_first == ["history:zoo-x"] * 3


def test_the_targets_are_met_or_not() -> None:
    good = summarize("a", _run("a", [[1.0] * 50], [[2.0] * 9 + [1.0] * 11],
                               [[1.0] * 20]))
    assert good.needed_median == {"rules": 10, "history": 1}
    slow = summarize("b", _run("b", [[1.0] * 50], [[1.0] * 20], [[2.0] * 6 + [1.0] * 14]))
    t = targets([good, good, slow], n_trials=20)
    assert t.rules_median == 10 and t.history_median == 1 and t.ratio_met
    assert t.within_share == pytest.approx(2 / 3) and not t.within_met
    assert t.not_worse_met  # both end at 1.0
    # (b) worse than (a) at 15 trials by more than the (zero) spread
    worse = summarize("c", _run("c", [[1.0] * 50], [[1.0] * 20], [[1.5] * 20]))
    assert not worse.not_worse and targets([good, worse], 20).worse_tasks == ["c"]


def test_a_task_rules_never_solve_counts_as_one_past_the_budget() -> None:
    never = summarize("d", _run("d", [[1.0] * 50], [[2.0] * 20], [[2.0] * 4 + [1.0] * 16]))
    t = targets([never], n_trials=20)
    assert t.rules_median == 21 and t.rules_censored == 1 and t.history_median == 5
    assert t.ratio_met  # 5 <= 21 / 2
    hopeless = summarize("e", _run("e", [[1.0] * 50], [[2.0] * 20], [[2.0] * 20]))
    assert not targets([hopeless], 20).ratio_met  # (b) never reaching it is no bound


# -- stored runs -----------------------------------------------------------------------------


def _tiny_run(tmp_path: Path, machine_info: dict[str, str] | None = None) -> tuple[str, str]:
    """A stored run of two tasks and two seeds, written as --output writes it."""
    args = parse_args(["--tasks", "mlp-x1,rnn-x4", "--seeds", "2", "--quick"])
    results = []
    for task, base in (("mlp-x1", 0.3), ("rnn-x4", 0.6)):
        for seed in range(2):
            results += _run(task, [[base] * args.tpe_trials],
                            [[base + 0.1] * 3 + [base] * (args.trials - 3)],
                            [[base] * args.trials])
            for r in results[-3:]:
                r.task = Task(r.task.method, task, seed, r.task.n_trials)
    jobs = [HistoryJob(n, _outcome(n), [], 1.0) for n in zoo_names()]
    summaries = [summarize(t, [r for r in results if r.task.workload == t])
                 for t in args.tasks]
    data = to_json(args, jobs, results, summaries, 12.0)
    if machine_info is not None:
        data["config"]["machine"] = machine_info
    path = tmp_path / "run.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(data, f)
    return str(path), json.dumps(data["targets"])


def test_the_report_reproduces_a_stored_run(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path, stored_targets = _tiny_run(tmp_path)
    main(["--report", path, "--tasks", "mlp-x1,rnn-x4"])
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: measured on ")
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.startswith(("mlp-x1 ", "rnn-x4 ")) and "[" in line}
    assert rows["mlp-x1"][1:3] == ["0.3000", "4"] and rows["rnn-x4"][1:3] == ["0.6000", "4"]
    assert rows["mlp-x1"][4] == "1"  # (b) reaches it at once
    assert "1. (b) needs at most 50% of (a)'s trials" in out and "-> met" in out
    assert "wall for" not in out  # nothing ran
    assert json.loads(stored_targets)["ratio_met"] is True


def test_reuse_refuses_a_run_from_another_machine_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = _tiny_run(tmp_path, {"cpu": "elsewhere", "cpu_capability": "AVX512",
                                   "torch": "0.0"})
    with pytest.raises(SystemExit, match="trial values differ between CPUs"):
        main(["--quick", "--tasks", "mlp-x1", "--seeds", "2", "--methods", "history",
              "--reuse", path])
    assert "studies" not in capsys.readouterr().err


def test_output_records_the_machine_and_settings() -> None:
    args = parse_args(["--quick", "--override", "HISTORY_STARTS=3"])
    config = to_json(args, [], [], [], 0.0)["config"]
    assert config["machine"] == machine() and config["overrides"] == {"HISTORY_STARTS": 3.0}
    with pytest.raises(SystemExit):
        parse_args(["--override", "SIMILARITY_FLOOR=0.5"])  # not a sweep setting


@pytest.mark.skipif(not Path(STORED_RUN).exists(), reason="no stored run yet")
def test_the_stored_run_reports_every_task_and_the_three_targets(
    capsys: pytest.CaptureFixture[str]
) -> None:
    main(["--report", STORED_RUN])
    out = capsys.readouterr().out
    for name in zoo_names():
        assert any(line.startswith(f"{name} ") and "[" in line for line in out.splitlines())
    for n in ("1.", "2.", "3."):
        assert any(line.startswith(n) and "met" in line for line in out.splitlines())
    assert "latency: recommend() with 10,000 past jobs" in out
    assert set(METHODS) == {"rules", "history", "tpe"}


def test_synthetic_history_spreads_over_families_and_optimizers() -> None:
    jobs = synthetic_history(300, seed=1)
    assert len({o.task.model_family for o in jobs}) >= 5
    assert len({r.optimizer for o in jobs for r in o.per_optimizer}) >= 12
    assert len({o.task.batch_size for o in jobs}) >= 6
    assert len(evidence_with(jobs)) > len(published_pool()) + 300


def test_the_service_arm_times_real_recommendation_requests() -> None:
    plain, with_history = measure_service_latency(synthetic_history(40, seed=2), queries=6)
    assert len(plain) == len(with_history) == 6
    assert all(ms > 0 for ms in [*plain, *with_history])


def test_a_tpe_history_job_is_a_broad_study_of_the_wide_space() -> None:
    job = run_history_job("mlp-x1", 4, "tpe")
    assert job.outcome.job_id == "zoo-mlp-x1" and len(job.trials) == 4
    assert all(t.source is None for t in job.trials)  # plain TPE: no warm start, no sources
    assert job.outcome.trials_used == 4


def test_reuse_reruns_the_history_phase_only_with_the_history_arm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = _tiny_run(tmp_path)  # past jobs of the rules
    with pytest.raises(SystemExit, match="rerun 'history'"):
        main(["--quick", "--tasks", "mlp-x1", "--seeds", "2", "--methods", "tpe",
              "--history-method", "tpe", "--reuse", path])
    assert "studies" not in capsys.readouterr().err
