"""optpilot's tuner: from a described task to a ranked recommendation to tuned trials.

The public surface, importable from here::

    from tuner import TaskDescription, recommend, tune

    task = TaskDescription(model_family="cnn", num_parameters=2_500_000, batch_size=256)
    best = recommend(task).candidates[0]          # ranked, explained, with its lr schedule
    result = tune("digits-cnn", n_trials=20)      # a prior-guided Optuna study, in process

=================================  =========================================================
name                               what
=================================  =========================================================
``TaskDescription``                the task: family, size, data, batch, memory (validated)
``recommend``                      rules + published evidence -> ``Recommendation``
``Recommendation``, ``Candidate``  its ranked candidates (hyperparameter priors, schedule,
                                   memory, rationale, evidence, references)
``create_study``, ``load_study``   an Optuna study whose sampler starts from the prior
``tune``, ``TuneResult``           create a study and run its trials in this process
``summarize_study``, ``StudySummary``  best value and per-optimizer summary of a study
``run_trial``, ``TrialOutcome``    run one trial of a study (what workers do)
``Workload``, ``TrialConfig``      what a server-side trial trains, and its configuration
``get_workload``, ``workload_names``, ``register_workload``  the workload registry
``published_trainings``            the shipped table of published trainings
=================================  =========================================================

Names resolve on first use, so ``import tuner`` (or ``tuner.task``) does not import torch or
Optuna until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuner.evidence import published_trainings
    from tuner.prior import Candidate, Recommendation, recommend
    from tuner.task import TaskDescription
    from tuner.trial import TrialOutcome, run_trial
    from tuner.tuning import (
        StudySummary,
        TuneResult,
        create_study,
        load_study,
        summarize_study,
        tune,
    )
    from tuner.workloads import (
        TrialConfig,
        Workload,
        get_workload,
        register_workload,
        workload_names,
    )

_WHERE = {
    "TaskDescription": "tuner.task",
    "recommend": "tuner.prior", "Recommendation": "tuner.prior", "Candidate": "tuner.prior",
    "create_study": "tuner.tuning", "load_study": "tuner.tuning", "tune": "tuner.tuning",
    "TuneResult": "tuner.tuning", "summarize_study": "tuner.tuning",
    "StudySummary": "tuner.tuning",
    "run_trial": "tuner.trial", "TrialOutcome": "tuner.trial",
    "Workload": "tuner.workloads", "TrialConfig": "tuner.workloads",
    "get_workload": "tuner.workloads", "workload_names": "tuner.workloads",
    "register_workload": "tuner.workloads",
    "published_trainings": "tuner.evidence",
}

__all__ = [
    "Candidate", "Recommendation", "StudySummary", "TaskDescription", "TrialConfig",
    "TrialOutcome", "TuneResult", "Workload", "create_study", "get_workload", "load_study",
    "published_trainings", "recommend", "register_workload", "run_trial", "summarize_study",
    "tune", "workload_names",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'tuner' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
