"""Prior-guided studies: create one from a task (and workload), run it in-process, summarise it.

A study carries everything a worker needs to run its trials as Optuna user attributes (the search
plan, the workload name, the task), so any process that opens the same storage can take part.

History: given the outcomes of past jobs (``tuner.evidence.history.JobOutcome``), a study's
prior is recommended with them as evidence beside the published trainings, and its first trials
are the best configurations of the most similar past jobs, lr carried to this task by the rules'
laws (``SearchPlan.start_points``), before the rules' own warm start. Their optimizers join the
plan when the prior left them out (a past job may have won with an optimizer the rules rank
low: that is what history can teach), as does the rules' own top candidate. Every enqueued point
records where it came from (``tuner.contract.TRIAL_SOURCE``).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

import optimizers
from optimizers.schedules import Schedule
from tuner.contract import (
    STUDY_EPOCHS,
    STUDY_N_TRIALS,
    STUDY_PLAN,
    STUDY_PRUNER,
    STUDY_SEED,
    STUDY_TASK,
    STUDY_WORKLOAD,
    TRIAL_SOURCE,
    better,
    trial_hyperparameters,
    trial_optimizer,
    trial_schedule,
    trial_source,
)
from tuner.evidence.history import JobOutcome, job_records
from tuner.evidence.records import EvidencePool, published_pool
from tuner.prior import Candidate, Recommendation, carried_lr, recommend
from tuner.space import HISTORY_STARTS, LR_HEADROOM, HistoryStart, SearchPlan
from tuner.task import TaskDescription
from tuner.trial import TrialOutcome, run_trial
from tuner.workloads import Workload, get_workload

PrunerName = Literal["median", "hyperband", "none"]
PRUNERS: tuple[PrunerName, ...] = ("median", "hyperband", "none")

DEFAULT_TOP_K = 3


def make_pruner(name: PrunerName, max_epochs: int | None = None) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max_epochs if max_epochs else "auto", reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner: unknown {name!r} (choose from {', '.join(PRUNERS)})")


def make_sampler(n_trials: int, seed: int | None) -> optuna.samplers.BaseSampler:
    """TPE, seeded; multivariate and grouped so the conditional per-optimizer spaces are modelled
    jointly; constant liar so parallel workers do not sample the same point. The warm-start
    points (``SearchPlan.warm_start``) come first and count as startup trials; random startup
    trials only top them up. Diverged trials are pruned with a ``nan`` value
    (``tuner.trial``), which TPE ranks below every other outcome."""
    with warnings.catch_warnings():  # multivariate/group are "experimental" but long stable
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True,
            n_startup_trials=min(10, max(3, n_trials // 5)),
        )


def evidence_with(history: Sequence[JobOutcome]) -> EvidencePool:
    """The published trainings plus the past jobs of ``history`` that count, as one pool."""
    if not history:
        return published_pool()
    return EvidencePool([*published_pool(), *job_records(history)])


def history_starts(task: TaskDescription, pool: EvidencePool) -> list[HistoryStart]:
    """The winners of the past jobs in ``pool`` similar to ``task``, nearest first, one per job,
    each with its best configuration and its lr carried to ``task``."""
    starts: list[HistoryStart] = []
    seen: set[str] = set()
    for scored in pool.scored(task):
        record = scored.record
        if (record.source != "job" or record.standing < 1.0 or not record.hyperparameters
                or record.job_id is None or record.job_id in seen):
            continue
        seen.add(record.job_id)
        values = dict(record.hyperparameters)
        lr = carried_lr(task, record)
        if lr is not None:
            values["lr"] = lr
        starts.append(HistoryStart(record.job_id, record.optimizer, values))
    return starts


def prior_for(task: TaskDescription, restrict_to: Sequence[str] | None = None,
              top_k: int = DEFAULT_TOP_K,
              evidence: EvidencePool | None = None) -> Recommendation:
    """The recommendation used as a job's prior: the top ``top_k``, or exactly the optimizers
    named by the user in the prior's order (unknown names raise ValueError naming them).
    ``evidence``: the pool to recommend with (default: the published trainings)."""
    if not restrict_to:
        return recommend(task, top_k=min(top_k, len(optimizers.names())), evidence=evidence)
    wanted = list(dict.fromkeys(restrict_to))
    for name in wanted:
        optimizers.get(name)  # raises "optimizer: unknown name ..."
    full = recommend(task, top_k=len(optimizers.names()), evidence=evidence)
    return Recommendation(task=task,
                          candidates=[c for c in full.candidates if c.optimizer in wanted])


def _with_history_candidates(recommendation: Recommendation, rules_top: Candidate,
                             starts: Sequence[HistoryStart], pool: EvidencePool,
                             restrict_to: Sequence[str] | None) -> Recommendation:
    """The prior's candidates, then the rules' own top one and the optimizers of the history's
    first starts where the prior left them out (an optimizer outside the user's
    ``restrict_to`` never), so that every start point can run and the rules keep theirs."""
    names = {c.optimizer for c in recommendation.candidates}
    extra: list[Candidate] = []
    if rules_top.optimizer not in names:
        extra.append(rules_top)
        names.add(rules_top.optimizer)
    allowed = set(restrict_to) if restrict_to else set(optimizers.names())
    missing = [h.optimizer for h in starts if h.optimizer not in names and h.optimizer in allowed]
    if missing:
        everything = recommend(recommendation.task, top_k=len(optimizers.names()), evidence=pool)
        extra += [c for c in everything.candidates if c.optimizer in missing]
    if not extra:
        return recommendation
    return Recommendation(task=recommendation.task,
                          candidates=[*recommendation.candidates, *extra])


def plan_from_recommendation(recommendation: Recommendation, n_trials: int,
                             schedule: Schedule | None = None) -> SearchPlan:
    """The search plan of a recommendation, each candidate with its schedule (or ``schedule``
    for all, when given); the lr range gets ``LR_HEADROOM`` above the prior's range except when
    fine-tuning (``tuner.space`` says why)."""
    return SearchPlan.build(
        [(c.optimizer, c.score, c.hyperparameters, schedule or c.schedule)
         for c in recommendation.candidates],
        n_trials,
        lr_headroom=1.0 if recommendation.task.fine_tuning else LR_HEADROOM,
    )


def create_study(
    storage: str | optuna.storages.BaseStorage,
    *,
    study_name: str,
    workload: Workload | None,
    task: TaskDescription | None = None,
    n_trials: int,
    optimizer_names: Sequence[str] | None = None,
    seed: int | None = None,
    pruner: PrunerName = "median",
    epochs: int | None = None,
    direction: Literal["minimize", "maximize"] | None = None,
    history: Sequence[JobOutcome] = (),
    evidence: EvidencePool | None = None,
) -> tuple[optuna.Study, Recommendation]:
    """Create a prior-guided study: plan stored on it and warm-start points enqueued. Its trials
    train with each candidate's recommended schedule, or the workload's ``schedule_override``.

    ``history``: past jobs to learn from (see the module docstring); the rules' top candidate
    without them always stays in the plan and keeps an early trial. ``evidence``: instead, the
    pool of published trainings and past jobs itself (``evidence_with(history)``, e.g. a
    server's cached one)."""
    if task is None:
        if workload is None:
            raise ValueError("task: required when no workload is given")
        task = workload.task
    if history and evidence is not None:
        raise ValueError("history and evidence: give one of them")
    pool = evidence if evidence is not None else evidence_with(history)
    recommendation = prior_for(task, optimizer_names, evidence=pool)
    starts: list[HistoryStart] = []
    rules_top: str | None = None
    if any(record.source == "job" for record in pool):
        starts = history_starts(task, pool)[:HISTORY_STARTS]
        without = prior_for(task, optimizer_names).candidates[0]
        rules_top = without.optimizer
        recommendation = _with_history_candidates(recommendation, without, starts, pool,
                                                  optimizer_names)
    plan = plan_from_recommendation(recommendation, n_trials,
                                    workload.schedule_override if workload else None)
    study = optuna.create_study(
        storage=storage, study_name=study_name,
        sampler=make_sampler(n_trials, seed),
        pruner=make_pruner(pruner, epochs or (workload.default_epochs if workload else None)),
        direction=direction or (workload.direction if workload else "minimize"),
    )
    study.set_user_attr(STUDY_PLAN, plan.to_json())
    study.set_user_attr(STUDY_WORKLOAD, workload.name if workload else None)
    study.set_user_attr(STUDY_TASK, task.model_dump(mode="json"))
    study.set_user_attr(STUDY_N_TRIALS, n_trials)
    study.set_user_attr(STUDY_SEED, seed)
    study.set_user_attr(STUDY_PRUNER, pruner)
    study.set_user_attr(STUDY_EPOCHS, epochs)
    for point in plan.start_points(n_trials, starts, rules_top):
        study.enqueue_trial(point.params, user_attrs={TRIAL_SOURCE: point.source},
                            skip_if_exists=True)
    return study, recommendation


def load_study(storage: str | optuna.storages.BaseStorage, study_name: str) -> optuna.Study:
    """Open a study made by :func:`create_study` with its sampler and pruner rebuilt."""
    probe = optuna.load_study(study_name=study_name, storage=storage)
    attrs = probe.user_attrs
    n_trials = int(attrs.get(STUDY_N_TRIALS, 50))
    seed = attrs.get(STUDY_SEED)
    workload_name = attrs.get(STUDY_WORKLOAD)
    epochs = attrs.get(STUDY_EPOCHS) or (
        get_workload(workload_name).default_epochs if workload_name else None)
    return optuna.load_study(
        study_name=study_name, storage=storage,
        sampler=make_sampler(n_trials, None if seed is None else int(seed) + len(probe.trials)),
        pruner=make_pruner(attrs.get(STUDY_PRUNER, "median"), epochs),
    )


def study_plan(study: optuna.Study) -> SearchPlan:
    return SearchPlan.from_json(str(study.user_attrs[STUDY_PLAN]))


# -- summaries ------------------------------------------------------------------------------


@dataclass
class OptimizerSummary:
    trials: int = 0
    completed: int = 0
    pruned: int = 0
    failed: int = 0
    best_value: float | None = None
    best_hyperparameters: dict[str, float] = field(default_factory=dict)
    best_schedule: dict[str, Any] | None = None


@dataclass
class StudySummary:
    direction: str
    completed: int
    pruned: int
    failed: int
    running: int
    waiting: int
    best_value: float | None
    best_optimizer: str | None
    best_hyperparameters: dict[str, float]
    best_trial: int | None
    per_optimizer: dict[str, OptimizerSummary]
    best_schedule: dict[str, Any] | None = None  # None: no best yet, or recorded without one
    best_source: str | None = None  # where the best trial's configuration came from

    @property
    def finished(self) -> int:
        return self.completed + self.pruned + self.failed


def summarize(trials: Sequence[FrozenTrial], direction: str) -> StudySummary:
    """Counts, best trial and per-optimizer bests, from user attributes set by the trial runner."""
    counts = dict.fromkeys(TrialState, 0)
    per: dict[str, OptimizerSummary] = {}
    best: FrozenTrial | None = None
    for t in trials:
        counts[t.state] += 1
        name = trial_optimizer(t)
        if name is None:
            continue
        s = per.setdefault(str(name), OptimizerSummary())
        s.trials += 1
        if t.state == TrialState.COMPLETE:
            s.completed += 1
            value = t.value
            if value is not None and math.isfinite(value):
                if better(value, s.best_value, direction):
                    s.best_value = value
                    s.best_hyperparameters = trial_hyperparameters(t)
                    s.best_schedule = trial_schedule(t)
                if best is None or better(value, best.value, direction):
                    best = t
        elif t.state == TrialState.PRUNED:
            s.pruned += 1
        elif t.state == TrialState.FAIL:
            s.failed += 1
    return StudySummary(
        direction=direction,
        completed=counts[TrialState.COMPLETE], pruned=counts[TrialState.PRUNED],
        failed=counts[TrialState.FAIL], running=counts[TrialState.RUNNING],
        waiting=counts[TrialState.WAITING],
        best_value=best.value if best else None,
        best_optimizer=trial_optimizer(best) if best else None,
        best_hyperparameters=trial_hyperparameters(best) if best else {},
        best_trial=best.number if best else None,
        per_optimizer=per,
        best_schedule=trial_schedule(best) if best else None,
        best_source=trial_source(best) if best else None,
    )


def summarize_study(study: optuna.Study) -> StudySummary:
    return summarize(study.get_trials(deepcopy=False), study.direction.name.lower())


# -- in-process tuning ----------------------------------------------------------------------


@dataclass
class TuneResult:
    study: optuna.Study
    recommendation: Recommendation
    summary: StudySummary
    outcomes: list[TrialOutcome]


def tune(
    workload: str | Workload,
    *,
    n_trials: int,
    task: TaskDescription | None = None,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    optimizer_names: Sequence[str] | None = None,
    seed: int | None = 0,
    pruner: PrunerName = "median",
    epochs: int | None = None,
    device: str | None = None,
    timeout_s: float | None = None,
    trial_timeout_s: float | None = None,
    callback: Callable[[TrialOutcome, StudySummary], Any] | None = None,
    on_start: Callable[[], Any] | None = None,
    history: Sequence[JobOutcome] = (),
) -> TuneResult:
    """Tune ``workload`` in this process (no service) on any Optuna storage (in memory default).

    Runs exactly ``n_trials`` trials (fewer only when ``timeout_s`` runs out); failed, pruned and
    diverged trials count toward the budget and never stop the study. ``on_start`` is called
    once every input has been checked (ValueError before it), before the first trial.
    """
    if n_trials < 1:
        raise ValueError("n_trials: must be >= 1")
    wl = get_workload(workload) if isinstance(workload, str) else workload
    study, recommendation = create_study(
        storage if storage is not None else optuna.storages.InMemoryStorage(),
        study_name=study_name or f"optpilot-{wl.name}-{int(time.time() * 1000)}",
        workload=wl, task=task, n_trials=n_trials, optimizer_names=optimizer_names,
        seed=seed, pruner=pruner, epochs=epochs, history=history,
    )
    plan = study_plan(study)
    deadline = time.monotonic() + timeout_s if timeout_s is not None else None
    outcomes: list[TrialOutcome] = []
    if on_start is not None:
        on_start()
    for _ in range(n_trials):
        if deadline is not None and time.monotonic() >= deadline:
            break
        outcome = run_trial(study, plan, wl, seed=seed or 0, device=device, epochs=epochs,
                            timeout_s=trial_timeout_s)
        outcomes.append(outcome)
        if callback is not None:
            callback(outcome, summarize_study(study))
    return TuneResult(study, recommendation, summarize_study(study), outcomes)
