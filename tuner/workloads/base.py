"""The workload contract: what one server-side trial trains, and the configuration it gets.

A workload builds its model and data, trains with the optimizer a trial names for a budget of
epochs, calls ``report(epoch, value)`` after every epoch (``epoch`` = 0, 1, 2, ...; the trial
runner turns reports into Optuna intermediate values and may raise ``optuna.TrialPruned`` from
it), and returns the final validation value. Exceptions raised by the reporter propagate
unchanged and end the run.

Divergence: when training produces a non-finite loss or validation value, a workload stops at
that epoch, reports ``nan`` for it and returns ``nan``; the caller records a diverged trial.
Invalid configurations (unknown optimizer, out-of-range hyperparameter, bad device) raise
``ValueError`` (or torch's ``RuntimeError`` for a device that is not available) before the first
epoch.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Literal

import torch
from torch.optim.lr_scheduler import LRScheduler

import optimizers
from optimizers.schedules import Schedule
from tuner.task import TaskDescription

Reporter = Callable[[int, float], None]
"""``report(epoch, validation_value)``; may raise (e.g. ``optuna.TrialPruned``) to stop training."""

Direction = Literal["minimize", "maximize"]

MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class TrialConfig:
    """One trial: which optimizer with which hyperparameters, seed, device and budget."""

    optimizer: str
    """Optimizer registry name, e.g. ``"adamw"``."""
    hyperparameters: Mapping[str, float]
    """Flat names, passed to ``optimizers.create(optimizer, params, **hyperparameters)``."""
    seed: int = 0
    device: str = "cpu"
    """Torch device string: ``"cpu"``, ``"cuda"``, ``"cuda:1"``. The caller picks the device."""
    epochs: int | None = None
    """Training budget in epochs; ``None`` means the workload's ``default_epochs``."""
    schedule: Schedule | None = None
    """The lr schedule (its fields as a mapping are accepted too); the hyperparameters' ``lr`` is
    its peak. ``None`` means the workload's own (``Workload.default_schedule``), which is what
    trials of plans stored before schedules get."""

    def __post_init__(self) -> None:
        if not isinstance(self.optimizer, str) or not self.optimizer:
            raise ValueError("optimizer: expected a non-empty registry name")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed: expected an int, got {type(self.seed).__name__}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed: {self.seed} is outside [0, 2**63 - 1]")
        bad_device = f"device: {self.device!r} is not a torch device such as 'cpu' or 'cuda:0'"
        if not isinstance(self.device, str):
            raise ValueError(bad_device)
        try:
            torch.device(self.device)  # parses only: never initialises CUDA
        except RuntimeError:
            raise ValueError(bad_device) from None
        if self.epochs is not None and (
            isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1
        ):
            raise ValueError(f"epochs: expected an int >= 1 or None, got {self.epochs!r}")
        if isinstance(self.schedule, Mapping):
            object.__setattr__(self, "schedule", Schedule.from_dict(self.schedule))
        elif self.schedule is not None and not isinstance(self.schedule, Schedule):
            raise ValueError(f"schedule: expected a Schedule or its fields, got {self.schedule!r}")
        # A private read-only copy: the caller's mapping may change after the trial was built.
        object.__setattr__(self, "hyperparameters", MappingProxyType(dict(self.hyperparameters)))


class Workload(ABC):
    """A model + data + training budget that a trial trains with a given optimizer.

    Subclasses set the class attributes below and implement :meth:`run`. Register a subclass (or
    an instance) with ``tuner.workloads.register_workload`` or, from an installed package, through
    the ``optpilot.workloads`` entry-point group.
    """

    name: ClassVar[str]
    """The registry handle (letters, digits, ``-``, ``_``, ``.``; at most 64 characters)."""
    summary: ClassVar[str]
    """One line for catalogs."""
    task: ClassVar[TaskDescription]
    """The workload's own task description (used when a job gives none)."""
    metric: ClassVar[str]
    """What ``run`` reports and returns, e.g. ``"val_loss"``."""
    direction: ClassVar[Direction] = "minimize"
    default_epochs: ClassVar[int]
    default_schedule: ClassVar[Schedule | None] = None
    """The lr schedule of a trial that names none (None: a constant lr)."""
    schedule_override: ClassVar[Schedule | None] = None
    """When set, the schedule every trial of a tuning job on this workload trains with, instead
    of the one the prior recommends (``tuner.tuning.create_study``)."""

    def resolve_epochs(self, config: TrialConfig) -> int:
        """The budget for ``config``: its ``epochs`` or this workload's ``default_epochs``."""
        return self.default_epochs if config.epochs is None else config.epochs

    def scheduler(self, config: TrialConfig, optimizer: torch.optim.Optimizer,
                  total_steps: int) -> LRScheduler | None:
        """The lr scheduler a trial trains with (step it after every optimizer step), or None:
        ``config.schedule``, else ``default_schedule``, which schedule-free optimizers
        (``optimizers.is_schedule_free``) never get: they run at a constant lr after their own
        warm-up. A ``none`` schedule is no scheduler."""
        schedule = config.schedule
        if schedule is None and not optimizers.is_schedule_free(optimizer):
            schedule = self.default_schedule
        if schedule is None or schedule.name == "none":
            return None
        return optimizers.build_scheduler(optimizer, schedule, total_steps)

    @abstractmethod
    def run(self, config: TrialConfig, report: Reporter) -> float:
        """Train with ``config``; ``report(epoch, value)`` after every epoch; return the last value.

        A non-finite loss stops training: the epoch is reported as ``nan`` and ``nan`` returned.
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} workload {getattr(self, 'name', '?')!r}>"


def report_epoch(report: Reporter, epoch: int, value: float) -> bool:
    """Report ``value`` (``nan`` if not finite); True while training should go on."""
    if not math.isfinite(value):
        report(epoch, math.nan)
        return False
    report(epoch, value)
    return True
