"""Tuning efficiency (issue #3): does the prior find good settings in fewer trials?

On every built-in workload, three methods tune with the same trial runner
(:func:`tuner.trial.run_trial`), the same workload budget (its ``default_epochs``), the same
training seed for every trial of a study (``run_trial``'s common random numbers) and no pruner,
so every trial trains to the end and the only difference is *which* configuration each trial
evaluates:

(a) ``prior``  -- the prior-guided study, exactly what :func:`tuner.tuning.tune` builds:
    :func:`tuner.tuning.create_study` (top-3 recommendation, budget policy, warm-start points
    enqueued, optpilot's TPE settings) with ``pruner="none"``;
(b) ``tpe``    -- Optuna's default ``TPESampler(seed=seed)`` over a wide generic space;
(c) ``random`` -- ``RandomSampler(seed=seed)`` over the same wide space.

The wide space (no prior knowledge, identical for every optimizer): a categorical choice among
*every* registered optimizer (``optimizers.names()``); then ``lr`` (and Muon's ``aux_lr``) log
1e-5..10, ``weight_decay`` log 1e-6..1, and ``momentum``/``beta1`` searched as ``1 - x`` log
1e-3..0.5, for the optimizers that have them; anything else stays at the registry default.

Each (method, workload, seed) is an independent task in a spawn-context process pool (one torch
thread per worker, Optuna logging silenced); nothing is cached across tasks. Diverged trials end
pruned/failed in the trial runner and never count as a best value.

Reported per workload: the median over seeds of the best value after 5, 10, 20 and 50 trials.
Summary: (b)'s median 50-trial best (the *target*), the trials (a) needs to reach it (median over
seeds of the first trial whose best-so-far is at least as good; ">N" when that median is never
within the budget), (a)'s median 5-trial best and its relative gap to the target, and whether
both goals hold: target reached within 15 trials, 5-trial gap within 2%.

    python -m bench.tuning_efficiency --quick
    python -m bench.tuning_efficiency --output tuning_efficiency.json  # full: ~55 min, 2 procs
    python -m bench.tuning_efficiency --workloads digits-mlp,rosenbrock --seeds 3 --trials 20
    python -m bench.tuning_efficiency --methods prior --reuse \
        bench/results/tuning_efficiency.json.gz
    python -m bench.tuning_efficiency --report bench/results/tuning_efficiency.json.gz

Values depend on the CPU, not only on the code: the same trial gives different values on AVX2 and
AVX-512 machines wherever torch picks a different kernel (conv, LSTM, attention, Muon's
matrices; measured: a digits-cnn winner 0.0216 on one, 0.0268 on the other), so every output
records its machine and ``--reuse`` refuses a run measured on another one.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import optuna
import torch
from optuna.trial import TrialState

import optimizers
from optimizers import HyperparameterPrior
from tuner.space import PlannedOptimizer, SearchPlan
from tuner.trial import run_trial
from tuner.tuning import create_study, study_plan
from tuner.workloads import get_workload, workload_names

Method = Literal["prior", "tpe", "random"]
METHODS: tuple[Method, ...] = ("prior", "tpe", "random")
LABELS: dict[Method, str] = {
    "prior": "(a) prior-guided",
    "tpe": "(b) TPE, wide",
    "random": "(c) random, wide",
}
CHECKPOINTS = (5, 10, 20, 50)
QUICK_WORKLOADS = ("diabetes-mlp", "sparse-logistic")

# The wide generic space of (b) and (c).
WIDE_LR = (1e-5, 10.0)
WIDE_WEIGHT_DECAY = (1e-6, 1.0)
WIDE_ONE_MINUS_MOMENTUM = (1e-3, 0.5)
LR_NAMES = ("lr", "aux_lr")
MOMENTUM_NAMES = ("momentum", "beta1")

# The last full run (all methods, workloads and seeds; torch 2.13.0 on CPU), for --reuse.
STORED_RUN = "bench/results/tuning_efficiency.json.gz"

# Goals (issue #3).
GOAL_TRIALS = 15
GOAL_GAP = 0.02
GOAL_AT = 5


@dataclass(frozen=True)
class Task:
    method: Method
    workload: str
    seed: int
    n_trials: int


@dataclass
class TrialRecord:
    value: float | None  # None unless the trial completed with a finite value
    state: str
    optimizer: str | None
    hyperparameters: dict[str, float]
    reason: str | None
    seconds: float


@dataclass
class TaskResult:
    task: Task
    direction: str
    trials: list[TrialRecord] = field(default_factory=list)
    seconds: float = 0.0

    def best_trial(self) -> TrialRecord | None:
        sign = 1.0 if self.direction == "minimize" else -1.0
        done = [t for t in self.trials if t.value is not None and math.isfinite(t.value)]
        return min(done, key=lambda t: sign * (t.value or 0.0)) if done else None

    def best_so_far(self) -> list[float]:
        """Best finite value after each trial (inf / -inf before the first one)."""
        sign = 1.0 if self.direction == "minimize" else -1.0
        best = math.inf
        out: list[float] = []
        for t in self.trials:
            if t.value is not None and math.isfinite(t.value):
                best = min(best, sign * t.value)
            out.append(sign * best)
        return out


# --------------------------------------------------------------------------------------------
# Worker side


def init_worker() -> None:
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("tuner.trial").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")


def wide_plan() -> SearchPlan:
    """The generic space over every registered optimizer, as a search plan for ``run_trial``."""
    names = optimizers.names()
    planned = []
    for name in names:
        spec = optimizers.get(name)
        tuned: dict[str, HyperparameterPrior] = {}
        for hp, default in spec.defaults.items():
            if hp in LR_NAMES:
                tuned[hp] = HyperparameterPrior(*WIDE_LR, default=_clamp(default, *WIDE_LR))
            elif hp == "weight_decay":
                tuned[hp] = HyperparameterPrior(
                    *WIDE_WEIGHT_DECAY, default=_clamp(default, *WIDE_WEIGHT_DECAY))
            elif hp in MOMENTUM_NAMES:
                low, high = 1.0 - WIDE_ONE_MINUS_MOMENTUM[1], 1.0 - WIDE_ONE_MINUS_MOMENTUM[0]
                tuned[hp] = HyperparameterPrior(low, high, complement=True,
                                                default=_clamp(default, low, high))
        planned.append(PlannedOptimizer(name, 1.0 / len(names), dict(spec.defaults), tuned))
    return SearchPlan(tuple(planned))


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def run_task(task: Task) -> TaskResult:
    """One study of ``task.n_trials`` trials, run to the end in this process."""
    init_worker()
    workload = get_workload(task.workload)
    started = time.monotonic()
    storage = optuna.storages.InMemoryStorage()
    name = f"{task.method}-{task.workload}-{task.seed}"
    if task.method == "prior":
        study, _ = create_study(storage, study_name=name, workload=workload,
                                n_trials=task.n_trials, seed=task.seed, pruner="none")
        plan = study_plan(study)
    else:
        sampler: optuna.samplers.BaseSampler = (
            optuna.samplers.TPESampler(seed=task.seed) if task.method == "tpe"
            else optuna.samplers.RandomSampler(seed=task.seed))
        study = optuna.create_study(storage=storage, study_name=name, sampler=sampler,
                                    pruner=optuna.pruners.NopPruner(),
                                    direction=workload.direction)
        plan = wide_plan()
    result = TaskResult(task, workload.direction)
    for _ in range(task.n_trials):
        outcome = run_trial(study, plan, workload, seed=task.seed, device="cpu")
        ok = outcome.state == TrialState.COMPLETE and outcome.value is not None
        result.trials.append(TrialRecord(
            value=float(outcome.value) if ok and outcome.value is not None else None,
            state=outcome.state.name, optimizer=outcome.optimizer,
            hyperparameters=dict(outcome.hyperparameters), reason=outcome.reason,
            seconds=round(outcome.seconds, 4),
        ))
    result.seconds = time.monotonic() - started
    return result


# --------------------------------------------------------------------------------------------
# Analysis


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def checkpoints(n_trials: int) -> list[int]:
    points = [c for c in CHECKPOINTS if c <= n_trials]
    if not points or points[-1] != n_trials:
        points.append(n_trials)
    return points


def trials_to_reach(curve: Sequence[float], target: float, direction: str) -> float:
    """1-based index of the first trial whose best-so-far is at least as good as ``target``."""
    for i, best in enumerate(curve, start=1):
        if (best <= target) if direction == "minimize" else (best >= target):
            return float(i)
    return math.inf


def relative_gap(value: float, target: float, direction: str) -> float:
    """How much worse ``value`` is than ``target``, relative to ``|target|`` (<= 0: as good)."""
    diff = value - target if direction == "minimize" else target - value
    if diff <= 0:
        return min(0.0, diff / abs(target)) if target else 0.0
    return diff / abs(target) if target else math.inf


@dataclass
class WorkloadSummary:
    workload: str
    direction: str
    n_seeds: int
    medians: dict[Method, dict[int, float]]  # method -> checkpoint -> median best
    target: float  # (b)'s median best after the full budget
    trials_needed: list[float]  # (a), per seed (inf: never)
    trials_needed_median: float
    prior_at_goal: float  # (a)'s median best after GOAL_AT trials
    gap: float
    reached: bool
    close: bool
    winners: dict[Method, list[str]]  # method -> optimizer of each seed's best trial

    @property
    def met(self) -> bool:
        return self.reached and self.close


def summarize(workload: str, results: Sequence[TaskResult], n_trials: int) -> WorkloadSummary:
    direction = results[0].direction
    curves: dict[Method, list[list[float]]] = {m: [] for m in METHODS}
    winners: dict[Method, list[str]] = {m: [] for m in METHODS}
    for r in sorted(results, key=lambda r: r.task.seed):
        curves[r.task.method].append(r.best_so_far())
        best = r.best_trial()
        winners[r.task.method].append(best.optimizer or "?" if best else "-")
    medians = {m: {c: _median([cv[c - 1] for cv in curves[m]]) for c in checkpoints(n_trials)}
               for m in METHODS if curves[m]}
    target = medians["tpe"][n_trials]
    needed = [trials_to_reach(cv, target, direction) for cv in curves["prior"]]
    needed_median = _median(needed)
    at = min(GOAL_AT, n_trials)
    prior_at = _median([cv[at - 1] for cv in curves["prior"]])
    gap = relative_gap(prior_at, target, direction)
    return WorkloadSummary(
        workload, direction, len(curves["prior"]), medians, target, needed, needed_median,
        prior_at, gap, reached=needed_median <= GOAL_TRIALS, close=gap <= GOAL_GAP,
        winners=winners,
    )


# --------------------------------------------------------------------------------------------
# Output


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4f}"
    return f"{value:.3e}"


def _trials(value: float, n_trials: int) -> str:
    return f">{n_trials}" if not math.isfinite(value) else f"{value:g}"


def workload_table(s: WorkloadSummary, n_trials: int) -> str:
    cols = checkpoints(n_trials)
    lines = [f"{s.workload}  (median best over {s.n_seeds} seeds; {s.direction})",
             f"  {'method':<20}" + "".join(f"{'@' + str(c):>12}" for c in cols)]
    for m in METHODS:
        if m in s.medians:
            lines.append(f"  {LABELS[m]:<20}"
                         + "".join(f"{_fmt(s.medians[m][c]):>12}" for c in cols)
                         + f"   best by: {_counts(s.winners[m])}")
    return "\n".join(lines)


def _counts(names: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return ", ".join(f"{n} x{c}" for n, c in sorted(counts.items(), key=lambda kv: -kv[1]))


def summary_table(summaries: Sequence[WorkloadSummary], n_trials: int) -> str:
    at = min(GOAL_AT, n_trials)
    head = (f"{'workload':<18}{'(b) best@' + str(n_trials):>14}{'(a) needs':>11}"
            f"  {'per seed':<24}{'(a) best@' + str(at):>12}{'gap':>9}"
            f"  {'<=' + str(GOAL_TRIALS):>5}{'<=' + format(GOAL_GAP, '.0%'):>6}{'met':>5}")
    lines = [head, "-" * len(head)]
    for s in summaries:
        per_seed = ",".join("-" if not math.isfinite(n) else f"{n:g}" for n in s.trials_needed)
        gap = f"{s.gap:+.1%}" if math.isfinite(s.gap) else "inf"
        lines.append(
            f"{s.workload:<18}{_fmt(s.target):>14}{_trials(s.trials_needed_median, n_trials):>11}"
            f"  {'[' + per_seed + ']':<24}{_fmt(s.prior_at_goal):>12}{gap:>9}"
            f"  {'yes' if s.reached else 'no':>5}{'yes' if s.close else 'no':>6}"
            f"{'yes' if s.met else 'no':>5}")
    met = sum(s.met for s in summaries)
    lines.append(f"targets met on {met}/{len(summaries)} workloads "
                 f"(reach (b)'s {n_trials}-trial median best within {GOAL_TRIALS} trials, and "
                 f"{at}-trial best within {GOAL_GAP:.0%} of it; '-' per seed = never)")
    return "\n".join(lines)


def machine() -> dict[str, str]:
    """What a trial's value depends on besides the code and the seed."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__}


def machine_text(info: dict[str, str] | None) -> str:
    if not info:
        return "an unrecorded machine"
    return f"{info['cpu']} ({info['cpu_capability']}, torch {info['torch']})"


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def to_json(args: argparse.Namespace, results: Sequence[TaskResult],
            summaries: Sequence[WorkloadSummary], seconds: float) -> dict[str, Any]:
    return {
        "config": {"workloads": args.workloads, "seeds": args.seeds, "trials": args.trials,
                   "jobs": args.jobs, "pruner": "none", "wide_space": {
                       "lr": WIDE_LR, "weight_decay": WIDE_WEIGHT_DECAY,
                       "one_minus_momentum": WIDE_ONE_MINUS_MOMENTUM},
                   "machine": machine()},
        "seconds": round(seconds, 1),
        "summary": [
            {"workload": s.workload, "target_tpe_median_best": s.target,
             "prior_trials_needed": [_json_float(n) for n in s.trials_needed],
             "prior_trials_needed_median": _json_float(s.trials_needed_median),
             "prior_best_at_5": s.prior_at_goal, "gap_at_5": _json_float(s.gap),
             "reached_within_15": s.reached, "within_2pct_at_5": s.close, "met": s.met,
             "best_optimizer_per_seed": s.winners,
             "median_best": {m: {str(c): _json_float(v) for c, v in cs.items()}
                             for m, cs in s.medians.items()}}
            for s in summaries
        ],
        "runs": [
            {**asdict(r.task), "direction": r.direction, "seconds": round(r.seconds, 2),
             "best_so_far": [_json_float(v) for v in r.best_so_far()],
             "trials": [asdict(t) for t in r.trials]}
            for r in results
        ],
    }


# --------------------------------------------------------------------------------------------
# Entry point


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {', '.join(QUICK_WORKLOADS)}, 2 seeds, 10 trials")
    p.add_argument("--workloads", type=str, default=None,
                   help="comma-separated workload names (default: every built-in)")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 5)")
    p.add_argument("--trials", type=int, default=None, help="trials per study (default 50)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--methods", type=str, default=",".join(METHODS),
                   help="comma-separated subset of prior,tpe,random (tpe is needed for the "
                        "summary)")
    p.add_argument("--output", type=str, default=None, help="write raw curves as JSON here")
    p.add_argument("--reuse", type=str, default=None,
                   help="JSON (or .json.gz) written by an earlier --output run: its studies "
                        "of the methods not in --methods join the summary (e.g. rerun only "
                        "'prior' after a change to the prior, against the same (b) and (c); "
                        f"the last full run is kept in {STORED_RUN})")
    p.add_argument("--report", type=str, default=None,
                   help="print the tables of an earlier --output file (or .json.gz); run nothing")
    args = p.parse_args(argv)
    known = workload_names()
    if args.workloads:
        args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    else:
        args.workloads = list(QUICK_WORKLOADS if args.quick else known)
    unknown = [w for w in args.workloads if w not in known]
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)} (known: {', '.join(known)})")
    args.seeds = args.seeds if args.seeds is not None else (2 if args.quick else 5)
    args.trials = args.trials if args.trials is not None else (10 if args.quick else 50)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or any(m not in METHODS for m in methods):
        p.error(f"--methods: choose from {', '.join(METHODS)}")
    args.methods = methods
    if args.seeds < 1 or args.trials < 1 or args.jobs < 1:
        p.error("--seeds, --trials and --jobs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Checked before anything trains: a mismatch should not cost a whole run.
    reused = (load_results(args.reuse, args, skip=set(args.methods), same_machine=True)
              if args.reuse else [])
    tasks = [] if args.report else [Task(m, w, s, args.trials) for w in args.workloads
                                     for s in range(args.seeds) for m in args.methods]
    if tasks:
        print(f"{len(tasks)} studies ({len(args.workloads)} workloads x {len(args.methods)} "
              f"methods x {args.seeds} seeds) of {args.trials} trials on {args.jobs} processes; "
              "pruner none, each workload's default epochs", file=sys.stderr, flush=True)
    started = time.monotonic()
    results: list[TaskResult] = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context,
                             initializer=init_worker) as pool:
        futures: dict[Future[TaskResult], Task] = {pool.submit(run_task, t): t for t in tasks}
        for done, future in enumerate(as_completed(futures), start=1):
            r = future.result()
            results.append(r)
            if args.output:  # partial results survive an interrupted run
                _write(args.output, to_json(args, results, [], time.monotonic() - started))
            best = r.best_so_far()[-1]
            print(f"[{done}/{len(tasks)} {time.monotonic() - started:6.0f}s] {r.task.workload} "
                  f"{r.task.method} seed {r.task.seed}: best {_fmt(best)} ({r.seconds:.0f}s)",
                  file=sys.stderr, flush=True)
    seconds = time.monotonic() - started
    results += reused
    if args.report:
        results = load_results(args.report, args, skip=set())
        print(f"{args.report}: measured on "
              f"{machine_text(read_run(args.report)['config'].get('machine'))}")

    summaries: list[WorkloadSummary] = []
    for w in args.workloads:
        mine = [r for r in results if r.task.workload == w]
        if {"tpe", "prior"} <= {r.task.method for r in mine}:
            summaries.append(summarize(w, mine, args.trials))
        print()
        if summaries and summaries[-1].workload == w:
            print(workload_table(summaries[-1], args.trials))
        else:
            print(_partial_table(w, mine, args.trials))
    if summaries:
        print()
        print(summary_table(summaries, args.trials))
    if tasks:
        print(f"\ntotal {seconds:.0f}s wall for {len(tasks) * args.trials} trials "
              f"on {args.jobs} processes")
    if args.output:
        _write(args.output, to_json(args, results, summaries, seconds))
        print(f"raw curves written to {args.output}")


def read_run(path: str) -> dict[str, Any]:
    """An ``--output`` file (or its .json.gz)."""
    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
        data: dict[str, Any] = json.load(f)
    return data


def load_results(path: str, args: argparse.Namespace, skip: set[str],
                 same_machine: bool = False) -> list[TaskResult]:
    """The studies of an earlier ``--output`` file for this run's workloads and seeds, except
    those of the methods in ``skip``; its trial budget must be this run's, and with
    ``same_machine`` its machine this one."""
    data = read_run(path)
    if data["config"]["trials"] != args.trials:
        raise SystemExit(f"--reuse: {path} ran {data['config']['trials']} trials per study, "
                         f"this run {args.trials}")
    stored = data["config"].get("machine")
    if same_machine and stored != machine():
        raise SystemExit(f"{path} was measured on {machine_text(stored)}, this is "
                         f"{machine_text(machine())}: trial values differ between CPUs, so "
                         "compare only runs measured here (without --reuse, every method runs)")
    out: list[TaskResult] = []
    for run in data["runs"]:
        if (run["method"] in skip or run["workload"] not in args.workloads
                or run["seed"] >= args.seeds):
            continue
        task = Task(run["method"], run["workload"], run["seed"], run["n_trials"])
        out.append(TaskResult(task, run["direction"],
                              [TrialRecord(**t) for t in run["trials"]], run["seconds"]))
    return out


def _write(path: str, data: dict[str, Any]) -> None:
    """Write a run as JSON (gzipped when ``path`` ends in .gz, as ``read_run`` reads it)."""
    tmp = f"{path}.tmp"
    with (gzip.open(tmp, "wt") if path.endswith(".gz") else open(tmp, "w")) as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _partial_table(workload: str, results: Sequence[TaskResult], n_trials: int) -> str:
    cols = checkpoints(n_trials)
    lines = [f"{workload}  (median best)",
             f"  {'method':<20}" + "".join(f"{'@' + str(c):>12}" for c in cols)]
    for m in METHODS:
        curves = [r.best_so_far() for r in results if r.task.method == m]
        if curves:
            lines.append(f"  {LABELS[m]:<20}"
                         + "".join(f"{_fmt(_median([cv[c - 1] for cv in curves])):>12}"
                                   for c in cols))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
