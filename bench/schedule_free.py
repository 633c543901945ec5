"""Schedule-free AdamW at its recommended default against tuned AdamW + cosine (issue #18).

On every built-in workload, per seed:

(a) ``schedule-free``: one trial of ``schedulefree_adamw`` at the default the prior recommends
    for the workload's task with its horizon stated (``training_steps`` = the workload's steps at
    its default epochs): the lr derived from AdamW's (x2.5), ``warmup_steps`` 5% of the steps,
    schedule ``none``;
(b) ``adamw``: a prior-guided study of AdamW alone (``tuner.tuning.create_study`` with
    ``optimizers=["adamw"]``: warm start, then TPE) with the schedule the prior recommends,
    which on every built-in workload is 5% warm-up + cosine to 0; its best after 5 and after 15
    trials.

Both use the trial runner of ``bench/tuning_efficiency.py`` (``tuner.trial.run_trial``), the same
training seed for every trial of a seed, the workload's default epochs and no pruner, in a
spawn-context process pool with one torch thread per worker. Printed per workload: the medians
over seeds and the relative gap of (a) to (b) at 5 and 15 trials (negative: schedule-free is
better). One trial of (a) costs what one trial of (b) does.

    python -m bench.schedule_free                       # every workload, 3 seeds
    python -m bench.schedule_free --workloads digits-mlp --seeds 2
    python -m bench.schedule_free --output bench/results/schedule_free.json.gz
    python -m bench.schedule_free --report bench/results/schedule_free.json.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

import optimizers
from bench.tuning_efficiency import _fmt, _median, init_worker, machine, relative_gap
from tuner.space import PlannedOptimizer, SearchPlan
from tuner.trial import run_trial
from tuner.tuning import create_study, prior_for, study_plan
from tuner.workloads import Workload, get_workload, workload_names
from tuner.workloads.training import SupervisedWorkload

STORED_RUN = "bench/results/schedule_free.json.gz"
SCHEDULE_FREE = "schedulefree_adamw"
TUNED = "adamw"
CHECKPOINTS = (5, 15)


@dataclass(frozen=True)
class Task:
    method: str  # "schedule-free" or "adamw"
    workload: str
    seed: int


@dataclass
class Result:
    task: Task
    direction: str
    values: list[float | None]  # per trial (None: not completed or not finite)
    config: dict[str, Any]  # the schedule-free trial's (or the best AdamW trial's) settings
    seconds: float


def training_steps(workload: Workload) -> int:
    """Optimizer steps of one trial at the default epochs."""
    if isinstance(workload, SupervisedWorkload):
        per_epoch = math.ceil(workload.train_size / workload.batch_size)
    else:
        per_epoch = int(getattr(workload, "steps_per_epoch", 1))
    return workload.default_epochs * per_epoch


def schedule_free_plan(workload: Workload) -> SearchPlan:
    """The recommended default of schedule-free AdamW for the workload's task, horizon stated,
    as a one-point plan (nothing tuned)."""
    task = workload.task.model_copy(update={"training_steps": training_steps(workload)})
    (candidate,) = prior_for(task, [SCHEDULE_FREE]).candidates
    defaults = {hp: p.default for hp, p in candidate.hyperparameters.items()}
    values = {**optimizers.get(SCHEDULE_FREE).defaults, **defaults}
    return SearchPlan((PlannedOptimizer(SCHEDULE_FREE, 1.0, values, {}, candidate.schedule),))


def run_task(task: Task) -> Result:
    init_worker()
    workload = get_workload(task.workload)
    started = time.monotonic()
    storage = optuna.storages.InMemoryStorage()
    name = f"{task.method}-{task.workload}-{task.seed}"
    if task.method == "schedule-free":
        plan = schedule_free_plan(workload)
        study = optuna.create_study(storage=storage, study_name=name,
                                    direction=workload.direction)
        n_trials = 1
    else:
        study, _ = create_study(storage, study_name=name, workload=workload,
                                n_trials=CHECKPOINTS[-1], optimizer_names=[TUNED],
                                seed=task.seed, pruner="none")
        plan = study_plan(study)
        n_trials = CHECKPOINTS[-1]
    values: list[float | None] = []
    outcomes = []
    for _ in range(n_trials):
        outcome = run_trial(study, plan, workload, seed=task.seed, device="cpu")
        ok = (outcome.state == TrialState.COMPLETE and outcome.value is not None
              and math.isfinite(outcome.value))
        values.append(float(outcome.value) if ok and outcome.value is not None else None)
        outcomes.append(outcome)
    sign = 1.0 if workload.direction == "minimize" else -1.0
    done = [o for o, v in zip(outcomes, values, strict=True) if v is not None]
    shown = min(done, key=lambda o: sign * (o.value or 0.0)) if done else outcomes[0]
    config = {"optimizer": shown.optimizer, "hyperparameters": shown.hyperparameters,
              "schedule": None if shown.schedule is None else shown.schedule.to_dict()}
    return Result(task, workload.direction, values, config, time.monotonic() - started)


def best_after(values: list[float | None], n: int, direction: str) -> float:
    sign = 1.0 if direction == "minimize" else -1.0
    done = [sign * v for v in values[:n] if v is not None]
    return sign * min(done) if done else math.nan


def table(results: list[Result], workloads: list[str]) -> str:
    head = (f"{'workload':<18}{'seeds':>6}{'(a) SF-AdamW':>14}{'(b) AdamW@5':>13}"
            f"{'(b) AdamW@15':>14}{'gap@5':>9}{'gap@15':>9}  schedule-free default (seed 0); "
            "AdamW's schedule")
    lines = [head, "-" * len(head)]
    wins = {5: 0, 15: 0}
    for w in workloads:
        mine = [r for r in results if r.task.workload == w]
        free = [r for r in mine if r.task.method == "schedule-free"]
        tuned = [r for r in mine if r.task.method == "adamw"]
        if not free or not tuned:
            continue
        direction = free[0].direction
        a = _median([best_after(r.values, 1, direction) for r in free])
        b = {n: _median([best_after(r.values, n, direction) for r in tuned]) for n in CHECKPOINTS}
        gaps = {n: relative_gap(a, b[n], direction) for n in CHECKPOINTS}
        for n in CHECKPOINTS:
            wins[n] += gaps[n] <= 0
        seed0 = min(free, key=lambda r: r.task.seed).config["hyperparameters"]
        schedules = {(r.config["schedule"] or {}).get("name", "-") for r in tuned}
        default = (f"lr {seed0['lr']:.3g}, warmup_steps {seed0.get('warmup_steps', 0):g}; "
                   f"{', '.join(sorted(schedules))}")
        lines.append(f"{w:<18}{len(free):>6}{_fmt(a):>14}{_fmt(b[5]):>13}{_fmt(b[15]):>14}"
                     f"{gaps[5]:>+9.1%}{gaps[15]:>+9.1%}  {default}")
    lines.append(f"schedule-free AdamW at its default is at least as good as tuned AdamW + cosine "
                 f"on {wins[5]} workloads at 5 trials and {wins[15]} at 15 (gap: (a) relative "
                 "to (b), medians over seeds; negative is better)")
    return "\n".join(lines)


def to_json(args: argparse.Namespace, results: list[Result], seconds: float) -> dict[str, Any]:
    return {"config": {"workloads": args.workloads, "seeds": args.seeds, "jobs": args.jobs,
                       "checkpoints": list(CHECKPOINTS), "machine": machine()},
            "seconds": round(seconds, 1),
            "runs": [{**asdict(r.task), "direction": r.direction, "values": r.values,
                      "config": r.config, "seconds": round(r.seconds, 2)} for r in results]}


def load(path: str) -> tuple[dict[str, Any], list[Result]]:
    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
        data: dict[str, Any] = json.load(f)
    results = [Result(Task(r["method"], r["workload"], r["seed"]), r["direction"], r["values"],
                      r["config"], r["seconds"]) for r in data["runs"]]
    return data, results


def write(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with (gzip.open(tmp, "wt") if path.endswith(".gz") else open(tmp, "w")) as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--workloads", default=None, help="comma-separated (default: every built-in)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--output", default=None, help="write the runs here (.json or .json.gz)")
    p.add_argument("--report", default=None, help="print the table of an earlier --output")
    args = p.parse_args(argv)
    known = workload_names()
    args.workloads = ([w.strip() for w in args.workloads.split(",") if w.strip()]
                      if args.workloads else list(known))
    unknown = [w for w in args.workloads if w not in known]
    if unknown or args.seeds < 1 or args.jobs < 1:
        p.error(f"unknown workload(s) {unknown}" if unknown else "--seeds, --jobs must be >= 1")
    if args.report:
        data, stored = load(args.report)
        info = data["config"]["machine"]
        print(f"{args.report}: {data['config']['seeds']} seeds, measured on {info['cpu']} "
              f"({info['cpu_capability']}, torch {info['torch']})\n")
        print(table(stored, [w for w in args.workloads if w in data["config"]["workloads"]]))
        return
    tasks = [Task(m, w, s) for w in args.workloads for s in range(args.seeds)
             for m in ("schedule-free", "adamw")]
    print(f"{len(tasks)} studies on {args.jobs} processes", file=sys.stderr, flush=True)
    started = time.monotonic()
    results: list[Result] = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context,
                             initializer=init_worker) as pool:
        futures = [pool.submit(run_task, t) for t in tasks]
        for done, future in enumerate(as_completed(futures), start=1):
            r = future.result()
            results.append(r)
            print(f"[{done}/{len(tasks)} {time.monotonic() - started:5.0f}s] {r.task.workload} "
                  f"{r.task.method} seed {r.task.seed}: best "
                  f"{_fmt(best_after(r.values, len(r.values), r.direction))}",
                  file=sys.stderr, flush=True)
    seconds = time.monotonic() - started
    results.sort(key=lambda r: (r.task.workload, r.task.method, r.task.seed))
    print(table(results, args.workloads))
    print(f"\ntotal {seconds:.0f}s wall on {args.jobs} processes")
    if args.output:
        write(args.output, to_json(args, results, seconds))
        print(f"runs written to {args.output}")


if __name__ == "__main__":
    main()
