"""The one place that runs a trial: ask, sample, build the optimizer, train, report, prune, tell.

Whatever happens inside a trial ends as a recorded Optuna state, never as an exception that stops
the study:

=====================  ========  ===============================================
what happened          state     ``reason`` user attribute
=====================  ========  ===============================================
finished               COMPLETE  -
pruner said stop       PRUNED    ``pruned``
NaN/inf metric         PRUNED    ``diverged``; ``nan`` reported at that epoch
per-trial timeout      PRUNED    ``timeout`` (FAIL when nothing was reported)
job cancelled          FAIL      ``cancelled``
worker stopping        FAIL      the reason ``should_stop`` gave (the worker hands the trial back)
CUDA out of memory     FAIL      ``cuda_oom`` (memory freed)
any other exception    FAIL      ``error: <type>: <message>``; ``traceback`` kept
=====================  ========  ===============================================

The trial's ``optimizer``, flat ``hyperparameters`` and lr ``schedule`` (``Schedule.to_dict()``;
absent in trials of plans stored before schedules, which train with the workload's own) are user
attributes too, so a summary or a client never decodes namespaced Optuna parameter names.

Every trial of a study trains with the same ``seed`` (initialisation, data order): common random
numbers, so two trials differ only by their configuration. With a seed per trial, the best of n
trials is partly the luckiest seed, and the more trials a search runs, the more of its "best"
is noise that a rerun of the winning configuration does not reproduce.

A diverged trial is PRUNED with ``nan`` as its last intermediate value, also when it diverged
before its first report (``nan`` at step 0), never FAIL: Optuna's samplers ignore failed trials but
rank a pruned trial's ``nan`` below every other outcome (TPE), so the search learns to avoid a
region that diverges instead of proposing it again as if unexplored.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from optimizers.schedules import Schedule
from tuner import optuna_internals
from tuner.contract import (
    REASON_CANCELLED,
    REASON_DIVERGED,
    SOURCE_SAMPLER,
    TRIAL_DEVICE,
    TRIAL_HYPERPARAMETERS,
    TRIAL_OPTIMIZER,
    TRIAL_REASON,
    TRIAL_SCHEDULE,
    TRIAL_SECONDS,
    TRIAL_SOURCE,
    TRIAL_TRACEBACK,
)
from tuner.space import SearchPlan, Suggestion
from tuner.workloads import TrialConfig, Workload

log = logging.getLogger(__name__)

MAX_TRACEBACK_CHARS = 8000




class TrialStopped(Exception):
    """Raised from the reporter to end a trial early; ``reason`` says why. ``interrupted``: the
    caller stopped it (``should_stop``), so it ends FAIL rather than PRUNED."""

    def __init__(self, reason: str, interrupted: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.interrupted = interrupted


@dataclass(frozen=True)
class TrialOutcome:
    number: int
    state: TrialState
    value: float | None
    optimizer: str | None
    hyperparameters: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    seconds: float = 0.0
    schedule: Schedule | None = None




def report_diverged(trial: optuna.Trial, step: int) -> None:
    """Report ``nan`` at ``step``: a diverged trial's last intermediate value, which TPE ranks
    below every other outcome once the trial is told PRUNED."""
    trial.report(math.nan, step)


def suggest_and_record(plan: SearchPlan, trial: optuna.Trial) -> Suggestion:
    """Sample the trial's configuration from ``plan`` and record it as user attributes
    (optimizer, hyperparameters and, when the plan has one, the schedule)."""
    choice = plan.suggest(trial)
    for key, value in suggestion_attrs(choice, trial).items():
        trial.set_user_attr(key, value)
    return choice


def suggestion_attrs(choice: Suggestion, trial: optuna.Trial) -> dict[str, Any]:
    """The user attributes that record a sampled configuration on its trial; a trial that was
    not enqueued with a source (a warm-start point) came from the sampler."""
    attrs: dict[str, Any] = {TRIAL_OPTIMIZER: choice.optimizer,
                             TRIAL_HYPERPARAMETERS: choice.hyperparameters}
    if choice.schedule is not None:
        attrs[TRIAL_SCHEDULE] = choice.schedule.to_dict()
    if TRIAL_SOURCE not in trial.user_attrs:
        attrs[TRIAL_SOURCE] = SOURCE_SAMPLER
    return attrs




def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _free_accelerator_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class TrialEnd:
    """How a trial ended, before it is recorded: its state, value (COMPLETE only) and why."""

    state: TrialState
    value: float | None = None
    reason: str | None = None
    traceback: str | None = None
    seconds: float | None = None


def end_trial(study: optuna.Study, trial: optuna.Trial, end: TrialEnd, *,
              skip_if_finished: bool = True) -> FrozenTrial:
    """Record how ``trial`` ended and tell Optuna: the one way every trial ends, run here or
    evaluated by an ask/tell client.

    A trial that ends with reason ``diverged`` is told PRUNED with ``nan`` as its last
    intermediate value (reported at the next step unless its last report was already ``nan``).
    ``reason``, ``traceback`` and ``seconds`` become user attributes. ``skip_if_finished``: a
    trial finished elsewhere meanwhile (taken for lost, failed and retried) keeps that end, and
    this one is dropped rather than raised.
    """
    state, value = end.state, end.value
    if end.reason == REASON_DIVERGED:
        state, value = TrialState.PRUNED, None
        stored = optuna_internals.stored_trial(study, optuna_internals.trial_id(trial))
        reported = stored.intermediate_values
        last = max(reported, default=None)
        if last is None or not math.isnan(reported[last]):
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                report_diverged(trial, 0 if last is None else last + 1)
    attrs = {TRIAL_REASON: end.reason, TRIAL_TRACEBACK: end.traceback, TRIAL_SECONDS: end.seconds}
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        for key, attr in attrs.items():
            if attr is not None:
                trial.set_user_attr(key, attr)
    return study.tell(trial, value if state == TrialState.COMPLETE else None, state=state,
                      skip_if_finished=skip_if_finished)


def run_trial(
    study: optuna.Study,
    plan: SearchPlan,
    workload: Workload,
    *,
    trial: optuna.Trial | None = None,
    seed: int = 0,
    device: str | None = None,
    epochs: int | None = None,
    timeout_s: float | None = None,
    should_stop: Callable[[], bool | str] | None = None,
) -> TrialOutcome:
    """Run one trial of ``study`` end to end and tell Optuna how it ended.

    ``trial`` may be passed when the caller already asked for one (a worker that claimed it);
    otherwise one is asked here. ``should_stop`` is polled at every report: True ends the trial
    FAIL with reason ``cancelled`` (the job was cancelled), a string ends it FAIL with that
    reason (e.g. a stopping worker handing the trial back).
    """
    trial = trial if trial is not None else study.ask()
    device = device or default_device()
    started = time.monotonic()
    choice: Suggestion | None = None
    try:
        choice = suggest_and_record(plan, trial)
        trial.set_user_attr(TRIAL_DEVICE, device)
        config = TrialConfig(choice.optimizer, choice.hyperparameters, seed=seed, device=device,
                             epochs=epochs, schedule=choice.schedule)
        end = _train(trial, workload, config, started, timeout_s, should_stop)
    except Exception as exc:  # sampling or recording failed: the trial's own failure too
        end = _failure(exc)
    end = replace(end, seconds=round(time.monotonic() - started, 4))
    if end.traceback is not None:
        log.warning("trial %d failed: %s", trial.number, end.reason)
    end_trial(study, trial, end)
    return TrialOutcome(trial.number, end.state, end.value,
                        None if choice is None else choice.optimizer,
                        {} if choice is None else choice.hyperparameters, end.reason,
                        end.seconds or 0.0, None if choice is None else choice.schedule)


def _train(trial: optuna.Trial, workload: Workload, config: TrialConfig, started: float,
           timeout_s: float | None, should_stop: Callable[[], bool | str] | None) -> TrialEnd:
    """Train ``config`` on ``workload``, reporting each epoch to ``trial``; how it ended."""
    deadline = started + timeout_s if timeout_s is not None else None
    reported: set[int] = set()  # epochs reported to Optuna

    def report(epoch: int, value: float) -> None:
        if not math.isfinite(value):
            if epoch not in reported:
                report_diverged(trial, epoch)
            raise TrialStopped(REASON_DIVERGED)
        trial.report(value, epoch)
        reported.add(epoch)
        stop = should_stop() if should_stop is not None else False
        if stop:
            reason = stop if isinstance(stop, str) else REASON_CANCELLED
            raise TrialStopped(reason, interrupted=True)
        if trial.should_prune():
            raise TrialStopped("pruned")
        if deadline is not None and time.monotonic() > deadline:
            raise TrialStopped("timeout")

    try:
        result = float(workload.run(config, report))
    except TrialStopped as stop:
        if stop.reason == REASON_DIVERGED:
            return TrialEnd(TrialState.PRUNED, reason=REASON_DIVERGED)
        state = TrialState.PRUNED if reported and not stop.interrupted else TrialState.FAIL
        return TrialEnd(state, reason=stop.reason)
    except optuna.TrialPruned:
        return TrialEnd(TrialState.PRUNED, reason="pruned")
    except Exception as exc:  # a trial's own failure must not stop the study
        return _failure(exc)
    if math.isfinite(result):
        return TrialEnd(TrialState.COMPLETE, result)
    return TrialEnd(TrialState.PRUNED, reason=REASON_DIVERGED)  # returned nan without reporting it


def _failure(exc: Exception) -> TrialEnd:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        _free_accelerator_memory()
        return TrialEnd(TrialState.FAIL, reason="cuda_oom", traceback=_traceback())
    return TrialEnd(TrialState.FAIL, reason=f"error: {type(exc).__name__}: {exc}"[:500],
                    traceback=_traceback())


def _traceback() -> str:
    return traceback.format_exc()[-MAX_TRACEBACK_CHARS:]
