"""The shared minibatch training loop of the supervised built-in workloads.

Data live on the trial's device as whole tensors (no DataLoader): each epoch draws one
permutation from an explicit ``torch.Generator`` seeded with the trial seed, then slices
minibatches by index. Model initialisation draws from torch's global generator inside
``torch.random.fork_rng``, seeded with the trial seed, so the caller's RNG state is left alone.
The host synchronises once per epoch (validation value and a running train-loss sum together),
which is also the divergence check.

The lr follows the usual schedule, linear warm-up over the first ``WARMUP_FRACTION`` of the steps
and then cosine decay to 0 (``warmup_cosine``). The hyperparameter's lr is the peak, as in the
evidence the prior's lrs come from (GPT-3's table, the AlgoPerf baselines). Training at a
constant lr would instead favour optimizers that decay their own step size (Adagrad's growing
denominator, Adafactor's 1/sqrt(t) relative step), which no tuned recipe relies on.
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


WARMUP_FRACTION = 0.05
SCHEDULED_KEYS = ("lr", "aux_lr")  # param-group entries that are learning rates


def warmup_cosine(step: int, total: int, warmup_fraction: float = WARMUP_FRACTION) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based) of ``total``: linear
    warm-up from 1/warmup to 1, then cosine decay to 0 at ``total``."""
    warmup = max(1, round(total * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class LrSchedule:
    """Sets every param group's learning rates (``SCHEDULED_KEYS``) to their peak value times
    ``warmup_cosine``; works for any optimizer whose groups hold its lrs."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int) -> None:
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.peaks = [{k: float(g[k]) for k in SCHEDULED_KEYS if k in g}
                      for g in optimizer.param_groups]

    def set(self, step: int) -> None:
        factor = warmup_cosine(step, self.total_steps)
        for group, peaks in zip(self.optimizer.param_groups, self.peaks, strict=True):
            for key, peak in peaks.items():
                group[key] = peak * factor


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_seeded(seed: int, factory: Callable[[], nn.Module]) -> nn.Module:
    """``factory()`` with torch's CPU generator seeded to ``seed``, without leaking that state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


class SupervisedWorkload(Workload):
    """Minibatch training of ``build_model()`` on ``dataset()`` with the warm-up + cosine lr
    schedule; reports the validation loss.

    Subclasses set ``batch_size`` and ``train_size`` and implement ``build_model``,
    ``make_dataset`` (CPU tensors, built once per instance and never modified) and ``loss`` (the
    mean loss of a batch, also the metric).
    """

    batch_size: ClassVar[int]
    train_size: ClassVar[int]
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
        schedule = LrSchedule(optimizer, epochs * math.ceil(n / batch))
        step = 0
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
                schedule.set(step)
                optimizer.step()
                step += 1
                train_sum += loss.detach()
            model.eval()
            with torch.no_grad():
                val = self.loss(model(*data.val.inputs), data.val.target)
            train_total, value = torch.stack([train_sum, val.float()]).tolist()
            if not math.isfinite(train_total):
                value = math.nan
            if not report_epoch(report, epoch, value):
                return math.nan
        return value
