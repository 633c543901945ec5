"""What optpilot records on Optuna studies and trials, and how it reads it back: the one place for
attribute names, the retry chain, "which optimizer did this trial use" and "is this value better".

Study user attributes (``STUDY_*``) carry what any process needs to run the study's trials: the
search plan, the workload, the task, the budget, the seed, the pruner, the epochs; the service
adds the job id. Trial user attributes (``TRIAL_*``) record the sampled configuration (optimizer,
flat hyperparameters, lr schedule), how the trial ended (reason, traceback, seconds) and where it
ran (device, worker, ask/tell client), and where its configuration came from (``source``: the
rules' warm start, a past job's best, or the sampler). The retry chain lives in system
attributes, as Optuna's ``RetryFailedTrialCallback`` writes it: ``failed_trial`` (the chain's
first trial) and ``retry_history`` (every number before this one); Optuna's ``enqueue_trial``
keeps a waiting trial's parameters in ``fixed_params``; ``optpilot.void`` marks a trial
that was made but never ran (its worker lost the answer in a database outage).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Final, Literal

from optuna.trial import FrozenTrial, TrialState

Direction = Literal["minimize", "maximize"]

STUDY_PLAN: Final = "optpilot.plan"
STUDY_WORKLOAD: Final = "optpilot.workload"
STUDY_TASK: Final = "optpilot.task"
STUDY_N_TRIALS: Final = "optpilot.n_trials"
STUDY_SEED: Final = "optpilot.seed"
STUDY_PRUNER: Final = "optpilot.pruner"
STUDY_EPOCHS: Final = "optpilot.epochs"
STUDY_JOB_ID: Final = "optpilot.job_id"

TRIAL_OPTIMIZER: Final = "optimizer"
TRIAL_HYPERPARAMETERS: Final = "hyperparameters"
TRIAL_SCHEDULE: Final = "schedule"
TRIAL_REASON: Final = "reason"
TRIAL_TRACEBACK: Final = "traceback"
TRIAL_DEVICE: Final = "device"
TRIAL_SECONDS: Final = "seconds"
TRIAL_WORKER: Final = "worker"
TRIAL_CLIENT: Final = "client_id"
TRIAL_SOURCE: Final = "source"  # where the configuration came from: SOURCE_RULES, ...

SOURCE_RULES: Final = "rules"  # the prior's warm start (defaults and lr ladder)
SOURCE_HISTORY: Final = "history"  # a past job's best, as "history:<job id>"
SOURCE_SAMPLER: Final = "sampler"  # sampled by Optuna's sampler

OPTIMIZER_PARAM: Final = "optimizer"  # the categorical parameter a plan samples first
RETRY_OF: Final = "failed_trial"
RETRY_HISTORY: Final = "retry_history"
FIXED_PARAMS: Final = "fixed_params"  # Optuna's, for enqueued trials
VOID: Final = "optpilot.void"  # a trial that never ran: it counts toward no budget

# Why a trial ended, where optpilot itself decides it.
REASON_DIVERGED: Final = "diverged"
REASON_CANCELLED: Final = "cancelled"
REASON_WORKER_LOST: Final = "worker lost (no heartbeat)"
REASON_NEVER_RAN: Final = "never ran (made while the database failed; its worker never took it)"


def trial_optimizer(trial: FrozenTrial) -> str | None:
    """The optimizer the trial used (or, for a waiting trial, will use)."""
    name = (trial.user_attrs.get(TRIAL_OPTIMIZER) or trial.params.get(OPTIMIZER_PARAM)
            or trial.system_attrs.get(FIXED_PARAMS, {}).get(OPTIMIZER_PARAM))
    return None if name is None else str(name)


def trial_hyperparameters(trial: FrozenTrial) -> dict[str, float]:
    """The trial's flat hyperparameters (``lr``, ``beta1``, ...), as sampled."""
    return dict(trial.user_attrs.get(TRIAL_HYPERPARAMETERS, {}))


def trial_schedule(trial: FrozenTrial) -> dict[str, Any] | None:
    """A recorded trial's schedule as JSON fields; None for trials recorded without one."""
    recorded = trial.user_attrs.get(TRIAL_SCHEDULE)
    return dict(recorded) if isinstance(recorded, dict) else None


def history_source(job_id: str) -> str:
    return f"{SOURCE_HISTORY}:{job_id}"


def trial_source(trial: FrozenTrial) -> str:
    """Where the trial's configuration came from: ``rules``, ``history:<job id>`` or
    ``sampler`` (also for trials recorded before sources were)."""
    return str(trial.user_attrs.get(TRIAL_SOURCE) or SOURCE_SAMPLER)


def trial_reason(trial: FrozenTrial) -> str | None:
    """Why the trial did not complete; a failure with no reason recorded lost its worker (the
    reaper records one, a process killed mid-trial could not)."""
    reason = trial.user_attrs.get(TRIAL_REASON)
    if reason is None and trial.state == TrialState.FAIL:
        return REASON_WORKER_LOST
    return None if reason is None else str(reason)


def retry_of(trial: FrozenTrial) -> int | None:
    """The number of the first trial of this trial's retry chain; None for a first try."""
    first = trial.system_attrs.get(RETRY_OF)
    return None if first is None else int(first)


def retry_history(trial: FrozenTrial) -> list[int]:
    """The numbers of every earlier trial of this trial's retry chain."""
    return [int(n) for n in trial.system_attrs.get(RETRY_HISTORY, ())]


def retry_system_attrs(trial: FrozenTrial) -> dict[str, Any]:
    """The system attributes of a retry of ``trial`` (its chain extended by ``trial``)."""
    return {**trial.system_attrs, RETRY_OF: trial.system_attrs.get(RETRY_OF, trial.number),
            RETRY_HISTORY: [*retry_history(trial), trial.number]}


def retried_numbers(trials: Iterable[FrozenTrial]) -> set[int]:
    """Numbers of failed trials that were enqueued again (they do not count toward a budget)."""
    return {n for t in trials for n in retry_history(t)}


def is_void(trial: FrozenTrial) -> bool:
    """A trial that never ran (``VOID``): it counts toward no budget."""
    return bool(trial.system_attrs.get(VOID))


def better(a: float, b: float | None, direction: Direction | str) -> bool:
    """Whether value ``a`` beats ``b`` (anything beats None) under ``direction``."""
    return b is None or (a < b if direction == "minimize" else a > b)


def best_first(value: float, direction: Direction | str) -> float:
    """A sort key that puts the best value first under ``direction``."""
    return value if direction == "minimize" else -value


def finite(value: float | None) -> float | None:
    """``value`` if it is a finite number, else None (NaN/inf never reach JSON)."""
    return value if value is not None and math.isfinite(value) else None
