"""The shared minibatch training loop of the supervised built-in workloads.

Data live on the trial's device as whole tensors (no DataLoader): each epoch draws one
permutation from an explicit ``torch.Generator`` seeded with the trial seed, then slices
minibatches by index. Model initialisation draws from torch's global generator inside
``torch.random.fork_rng``, seeded with the trial seed, so the caller's RNG state is left alone.
The host synchronises once per epoch (validation value and a running train-loss sum together),
which is also the divergence check.

The lr follows the trial's schedule (``TrialConfig.schedule``, which the prior recommends per
candidate and a long enough tuning job tunes); a trial without one (a plan stored before
schedules) gets the usual one, linear warm-up over the first ``WARMUP_FRACTION`` of the steps and
then cosine decay to 0 (``WORKLOAD_SCHEDULE``, the prior's default schedule), built by
``optimizers.build_scheduler``. The hyperparameter's lr is the peak, as in the evidence the
prior's lrs come from (GPT-3's table, the AlgoPerf baselines). Training at a constant lr would
instead favour optimizers that decay their own step size (Adagrad's growing denominator,
Adafactor's 1/sqrt(t) relative step), which no tuned recipe relies on. Schedule-free optimizers
(``optimizers.is_schedule_free``) get no default schedule: they are meant to run at a constant
lr after their own warm-up. They are switched to their evaluation point for each validation
pass (``optimizers.evaluation_mode``), as every evaluation of a model trained by them must be.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

import optimizers
from tuner.rules import DEFAULT_SCHEDULE
from tuner.rules import WARMUP_FRACTION as WARMUP_FRACTION
from tuner.workloads.base import Reporter, TrialConfig, Workload, report_epoch


@dataclass(frozen=True)
class Split:
    """Model inputs (positional arguments of ``forward``) and the target, all first-dim aligned."""

    inputs: tuple[torch.Tensor, ...]
    target: torch.Tensor

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def to(self, device: torch.device) -> Split:
        return Split(tuple(x.to(device) for x in self.inputs), self.target.to(device))

    def rows(self, index: torch.Tensor) -> Split:
        return Split(tuple(x[index] for x in self.inputs), self.target[index])


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split

    def to(self, device: torch.device) -> Dataset:
        return Dataset(self.train.to(device), self.val.to(device))


WORKLOAD_SCHEDULE = DEFAULT_SCHEDULE


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_seeded(seed: int, factory: Callable[[], nn.Module]) -> nn.Module:
    """``factory()`` with torch's CPU generator seeded to ``seed``, without leaking that state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


class SupervisedWorkload(Workload):
    """Minibatch training of ``build_model()`` on ``dataset()`` with the trial's lr schedule
    (default: warm-up + cosine, none for schedule-free optimizers); reports the validation loss.

    Subclasses set ``batch_size`` and ``train_size`` and implement ``build_model``,
    ``make_dataset`` (CPU tensors, built once per instance and never modified) and ``loss`` (the
    mean loss of a batch, also the metric).
    """

    batch_size: ClassVar[int]
    train_size: ClassVar[int]
    default_schedule = WORKLOAD_SCHEDULE
    _dataset: Dataset | None = None

    @abstractmethod
    def build_model(self) -> nn.Module: ...

    @abstractmethod
    def make_dataset(self) -> Dataset: ...

    def dataset(self) -> Dataset:
        """``make_dataset()``, built on first use and kept (CPU tensors, shared by trials)."""
        if self._dataset is None:
            data = self.make_dataset()
            if len(data.train) != self.train_size:
                raise RuntimeError(f"{self.name}: {len(data.train)} training rows, "
                                   f"expected {self.train_size}")
            self._dataset = data
        return self._dataset

    @abstractmethod
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    def run(self, config: TrialConfig, report: Reporter) -> float:
        epochs = self.resolve_epochs(config)
        device = torch.device(config.device)
        model = build_seeded(config.seed, self.build_model).to(device)
        data = self.dataset().to(device)
        optimizer = optimizers.create(
            config.optimizer, model.parameters(), **config.hyperparameters
        )
        shuffle = torch.Generator().manual_seed(config.seed)
        n, batch = len(data.train), self.batch_size
        scheduler = self.scheduler(config, optimizer, epochs * math.ceil(n / batch))
        value = math.nan
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(n, generator=shuffle).to(device)
            train_sum = torch.zeros((), device=device)
            for start in range(0, n, batch):
                part = data.train.rows(order[start:start + batch])
                optimizer.zero_grad(set_to_none=True)
                loss = self.loss(model(*part.inputs), part.target)
                torch.autograd.backward(loss)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                train_sum += loss.detach()
            model.eval()
            with torch.no_grad(), optimizers.evaluation_mode(optimizer):
                val = self.loss(model(*data.val.inputs), data.val.target)
            train_total, value = torch.stack([train_sum, val.float()]).tolist()
            if not math.isfinite(train_total):
                value = math.nan
            if not report_epoch(report, epoch, value):
                return math.nan
        return value
