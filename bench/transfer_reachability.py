"""Can any 5 configurations a history holds reach the transfer target? An oracle bound for
``bench/transfer.py``.

``bench/transfer.py`` asks a job tuned with the history of its neighbours, (b), to reach generic
TPE's median 50-trial best within 5 trials on at least 75% of the zoo's tasks. When it misses,
is it the order in which (b) tries the history's configurations, or do those configurations not
reach the target at all? For each held-out task this trains, on the stored run's seeds (the
seed is the training seed of every trial, as in (b)'s studies), a grid of what the history of
the other tasks offers:

* every job whose records weigh for the task (``EvidencePool.scored``), nearest first, at most
  ``NEAREST_JOBS``; of each its ``OPTIMIZERS_PER_JOB`` best optimizers (by standing), each with
  its best configuration and its lr carried to the task (``tuner.prior.carried_lr``) times each
  of ``LR_FACTORS``;
* for comparison only (no job can use it): the task's *own* past job's winner, on the same lr
  factors; its own tuned best on another training seed.

It prints per task the best single configuration (median over seeds), the oracle best-of-5 (the
5 history configurations that, chosen after seeing every value, make the median of the per-seed
bests best: an upper bound on any 5-trial warm start drawn from the grid) and whether it reaches
the target, and its own winner's best rung. Then, over all tasks and seeds, how often each lr
factor and each rank (nearest job, second; best optimizer, second) reaches the target: what
the order of a warm start should follow.

    python -m bench.transfer_reachability --stored bench/results/transfer_tpe_history.json.gz

Measured on a fresh TPE-history run on a 2-core Intel Xeon (AVX-512, torch 2.13.0 CPU;
``python -m bench.transfer --history-method tpe --history-trials 50 --output RUN``, where (b)
read 14 trials to the target, 6/16 tasks within 5, 16/16 not worse at 15), 5 seeds, 2 processes:
the oracle's 5 history configurations reach the target on 9/16 tasks (56%): the 75% of
``bench/transfer.py``'s second target is out of reach of any 5-trial warm start drawn from
what these past jobs hold. The misses: every LSTM task (its values sit on a floor a 50-trial
search reaches by chance on some seeds), cnn-x1, cnn-x16 and mlp-x4. Per rung, the winner of a
job reaches the target at its carried lr x1 on 16% of task-seeds, x1/3 15%, x1/9 3%, x3 2%;
a job's second optimizer 2%: the x3 rung of the warm start's lr ladder rarely pays.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

import optimizers
from bench.target_reachability import oracle
from bench.transfer import history_for, init_zoo_worker, job_id, load_run, parse_args, summarize
from bench.transfer_zoo import zoo_workload
from tuner.contract import TRIAL_SOURCE
from tuner.evidence.history import JobOutcome
from tuner.evidence.records import EvidenceRecord
from tuner.prior import carried_lr
from tuner.trial import run_trial
from tuner.tuning import evidence_with, plan_from_recommendation, prior_for

NEAREST_JOBS = 3
OPTIMIZERS_PER_JOB = 2
LR_FACTORS = (1 / 9, 1 / 3, 1.0, 3.0)
WITHIN = 5  # the trials (b) has to reach the target (bench/transfer.GOAL_WITHIN)


@dataclass(frozen=True)
class GridPoint:
    """One configuration of the grid: where it comes from and what it trains."""

    job_rank: int  # 0: the nearest job; -1: the task's own job (comparison only)
    optimizer_rank: int  # 0: the job's winner
    factor: float  # times the carried lr
    job: str
    optimizer: str
    hyperparameters: tuple[tuple[str, float], ...]

    @property
    def own(self) -> bool:
        return self.job_rank < 0

    def label(self) -> str:
        where = "own job" if self.own else f"job {self.job_rank + 1} ({self.job})"
        lr = dict(self.hyperparameters).get("lr", math.nan)
        return (f"{where}, optimizer {self.optimizer_rank + 1} {self.optimizer} "
                f"lr x{self.factor:.3g} = {lr:.3g}")


def _point(task: str, record: EvidenceRecord, job_rank: int, optimizer_rank: int,
           factor: float) -> GridPoint:
    values = dict(record.hyperparameters or {})
    lr = carried_lr(zoo_workload(task).task, record) if job_rank >= 0 else record.lr
    if lr is not None:
        values["lr"] = lr * factor
    return GridPoint(job_rank, optimizer_rank, factor, str(record.job_id), record.optimizer,
                     tuple(sorted(values.items())))


def _ranked(records: Sequence[EvidenceRecord]) -> list[EvidenceRecord]:
    usable = [r for r in records if r.hyperparameters]
    return sorted(usable, key=lambda r: -r.standing)[:OPTIMIZERS_PER_JOB]


def grid(task: str, outcomes: Sequence[JobOutcome]) -> list[GridPoint]:
    """The history's configurations for held-out ``task``, then its own job's winner."""
    pool = evidence_with(history_for(task, outcomes))
    by_job: dict[str, list[EvidenceRecord]] = {}
    for scored in pool.scored(zoo_workload(task).task):
        record = scored.record
        if record.source == "job" and record.job_id is not None:
            by_job.setdefault(record.job_id, []).append(record)
    points = [_point(task, record, j, o, f)
              for j, records in enumerate(list(by_job.values())[:NEAREST_JOBS])
              for o, record in enumerate(_ranked(records)) for f in LR_FACTORS]
    own = [o for o in outcomes if o.job_id == job_id(task)]
    if own:
        own_records = [r for r in evidence_with(own) if r.source == "job"]
        points += [_point(task, r, -1, 0, f) for r in _ranked(own_records)[:1]
                   for f in LR_FACTORS]
    return points


def evaluate(job: tuple[str, int, Sequence[GridPoint], Sequence[JobOutcome]]) -> list[float]:
    """Every grid point's value on ``task`` with training seed ``seed`` (inf when it fails):
    trials of one study with the plan (b) would have, every optimizer in it."""
    task, seed, points, outcomes = job
    workload = zoo_workload(task)
    pool = evidence_with(history_for(task, outcomes))
    everything = prior_for(workload.task, top_k=len(optimizers.names()), evidence=pool)
    plan = plan_from_recommendation(everything, len(points))
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(),
                                direction=workload.direction)
    for p in points:
        study.enqueue_trial(plan.params_for(p.optimizer, dict(p.hyperparameters)),
                            user_attrs={TRIAL_SOURCE: "grid"})
    sign = 1.0 if workload.direction == "minimize" else -1.0
    values: list[float] = []
    for _ in points:
        outcome = run_trial(study, plan, workload, seed=seed, device="cpu")
        ok = outcome.state == TrialState.COMPLETE and outcome.value is not None
        values.append(sign * float(outcome.value) if ok and outcome.value is not None
                      else math.inf)
    return values


@dataclass
class TaskBound:
    task: str
    target: float  # signed: smaller is better
    points: list[GridPoint]
    values: list[list[float]]  # per point, per seed (signed)

    def history(self) -> list[int]:
        return [i for i, p in enumerate(self.points) if not p.own]

    def hits(self, i: int) -> int:
        return sum(v <= self.target for v in self.values[i])


def bound(t: TaskBound) -> tuple[str, bool]:
    """One task's lines and whether the oracle's 5 history configurations reach the target."""
    task, target, points, values = t.task, t.target, t.points, t.values
    lines = [f"{task}: target {target:.4f}, {len(t.history())} history configurations"]
    if not t.history():
        return "\n".join([*lines, "  no job weighs"]), False
    single = min(t.history(), key=lambda i: statistics.median(values[i]))
    lines.append(f"  best single   {statistics.median(values[single]):.4f}  "
                 f"({t.hits(single)}/{len(values[single])} seeds)  {points[single].label()}")
    history_values = [values[i] for i in t.history()]
    value, chosen, _ = oracle(history_values, WITHIN)
    reached = value <= target
    lines.append(f"  oracle best-of-{WITHIN} {value:.4f}  {'reaches' if reached else 'misses'}")
    lines += [f"      {points[t.history()[i]].label()}" for i in chosen]
    own = [i for i, p in enumerate(points) if p.own]
    if own:
        best_own = min(own, key=lambda i: statistics.median(values[i]))
        lines.append(f"  own winner    {statistics.median(values[best_own]):.4f}  "
                     f"({t.hits(best_own)}/{len(values[best_own])} seeds)  "
                     f"{points[best_own].label()}")
    return "\n".join(lines), reached


def rank_table(bounds: Sequence[TaskBound]) -> str:
    """How often each lr factor and each job / optimizer rank reaches the target (seeds)."""
    hits: Counter[str] = Counter()
    tried: Counter[str] = Counter()
    for t in bounds:
        for i in t.history():
            p = t.points[i]
            for key in (f"lr x{p.factor:.3g}", f"job {p.job_rank + 1}",
                        f"optimizer {p.optimizer_rank + 1}",
                        f"job {p.job_rank + 1} optimizer {p.optimizer_rank + 1} "
                        f"lr x{p.factor:.3g}"):
                hits[key] += t.hits(i)
                tried[key] += len(t.values[i])
    return "\n".join(f"  {key:<34} {hits[key]:>4} / {tried[key]:<4} "
                     f"({hits[key] / tried[key]:.0%})" for key in sorted(tried))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--stored", required=True, help="a bench/transfer.py run (its history, targets)")
    p.add_argument("--tasks", default=None, help="comma-separated zoo tasks (default: the run's)")
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)
    run_args = parse_args(["--report", args.stored])
    jobs, results = load_run(args.stored, run_args, skip=set(), same_machine=True)
    outcomes = [j.outcome for j in jobs]
    tasks = args.tasks.split(",") if args.tasks else run_args.tasks
    targets: dict[str, float] = {}
    for task in tasks:
        summary = summarize(task, [r for r in results if r.task.workload == task])
        sign = 1.0 if summary.direction == "minimize" else -1.0
        targets[task] = sign * summary.target
    grids = {task: grid(task, outcomes) for task in tasks}
    work: list[tuple[str, int, Sequence[GridPoint], Sequence[JobOutcome]]] = [
        (task, seed, grids[task], outcomes) for task in tasks for seed in range(run_args.seeds)]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=init_zoo_worker, initargs=({},)) as pool:
        flat = list(pool.map(evaluate, work))
    per_seed: dict[str, list[list[float]]] = {}
    for (task, _, _, _), seed_values in zip(work, flat, strict=True):
        per_seed.setdefault(task, []).append(seed_values)
    bounds: list[TaskBound] = []
    reachable = 0
    for task in tasks:
        values = [list(v) for v in zip(*per_seed[task], strict=True)]  # per point, per seed
        bounds.append(TaskBound(task, targets[task], grids[task], values))
        text, reached = bound(bounds[-1])
        reachable += reached
        print(text)
    print(f"\noracle: {WITHIN} history configurations reach the target on {reachable}/"
          f"{len(tasks)} tasks ({reachable / len(tasks):.0%})")
    print("\nhow often a history configuration reaches the target (task x seed):")
    print(rank_table(bounds))


if __name__ == "__main__":
    main()
