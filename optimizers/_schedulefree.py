"""What optpilot's two schedule-free optimizers share (:mod:`optimizers.schedulefree_adamw`,
:mod:`optimizers.schedulefree_sgd`): the averaging weights, the warm-up, the train/eval switch, the
C kernel and compiled paths of a step, and the ``y``/``z`` moves the other paths end with.

Schedule-free training (Defazio et al. 2024) keeps three points per parameter: ``z``, the base
optimizer's iterate; ``x``, a weighted average of the ``z``'s, the point to evaluate; and
``y = (1 - beta) * z + beta * x``, where gradients are taken. Like the authors' package, optpilot
stores ``z`` as state and one of ``y`` (train mode) and ``x`` (eval mode) in the parameter itself;
the other follows from ``x = (y - (1 - beta) * z) / beta``. So the parameters hold whatever the
current mode needs, with no third tensor. In ``y``/``z`` form a step with update direction ``u``
(the base optimizer's gradient step at ``y``, weight decay included), learning rate ``lr_t`` and
averaging weight ``c`` is::

    z' = z - lr_t * u
    y' = (1 - c) * y + c * z - lr_t * (1 - beta * (1 - c)) * u

which is ``x' = (1 - c) * x + c * z'`` and ``y' = (1 - beta) * z' + beta * x'`` expanded.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple, Protocol, TypeVar

import torch

from optimizers import _cpu_kernels
from optimizers._base import (
    PARALLEL_MIN_NUMEL,
    ForeachBucket,
    GroupStep,
    Hyperparameters,
    OptpilotOptimizer,
)
from optimizers._checks import check_number, check_steps
from optimizers._scratch import ScratchBuffers, state_dtype

# Group entries that are the optimizer's running counters, not hyperparameters (as in the authors'
# package): steps taken, the sum of the averaging weights, the largest lr so far, the mode.
COUNTERS: dict[str, Any] = {"k": 0, "weight_sum": 0.0, "lr_max": -1.0, "train_mode": True}

H = TypeVar("H", bound=Hyperparameters)


class StepScalars(NamedTuple):
    """One group's scalars for one step, shared by both optimizers."""

    step: int  # t, 1-based
    lr: float  # lr_t: the group's lr times the warm-up factor
    c: float  # the averaging weight of z' in x'
    y_lr: float  # -lr_t * (1 - beta * (1 - c)): the coefficient of u in y'


class ScheduleFreeOptimizer(OptpilotOptimizer[H]):
    """Common behaviour; subclasses give the interpolation ``beta`` of a group, their record of
    a step's scalars (``H``: ``lr, weight_decay, c, y_lr`` and their own) and their paths."""

    _group_fill = COUNTERS
    # Name of the interpolation hyperparameter in messages ("betas[0]", "momentum").
    _beta_name: ClassVar[str]

    # -- hooks ----------------------------------------------------------------------------------

    def _beta(self, group: dict[str, Any]) -> float:
        """``beta`` of ``y = (1 - beta) * z + beta * x`` for this group."""
        raise NotImplementedError

    def _step_hyper(self, group: dict[str, Any], scalars: StepScalars) -> H:
        """The group's record of this step's scalars."""
        raise NotImplementedError

    # -- validation and state -------------------------------------------------------------------

    def _validate_group(self, group: dict[str, Any]) -> None:
        check_number("lr", group["lr"], low=0.0)
        check_number("weight_decay", group["weight_decay"], low=0.0)
        group["warmup_steps"] = check_steps("warmup_steps", group["warmup_steps"])
        check_number("r", group["r"], low=0.0)
        check_number("weight_lr_power", group["weight_lr_power"], low=0.0)

    @classmethod
    def _check_beta(cls, value: object) -> float:
        """``beta`` must lie in (0, 1): ``x`` follows from ``y`` and ``z`` by dividing by it."""
        return check_number(cls._beta_name, value, low=0.0, high=1.0, low_inclusive=False,
                            high_inclusive=False)

    def _init_state(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        state["z"] = param.detach().to(dtype=state_dtype(param), copy=True,
                                       memory_format=torch.contiguous_format)
        for key in self._tensor_state[1:]:
            state[key] = torch.zeros_like(param, dtype=state_dtype(param),
                                          memory_format=torch.contiguous_format)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # A group added later starts its own counters, in the optimizer's current mode.
        mode = self.param_groups[0]["train_mode"] if self.param_groups else True
        super().add_param_group(param_group)
        self.param_groups[-1]["train_mode"] = mode

    # -- train / eval ---------------------------------------------------------------------------

    @property
    def train_mode(self) -> bool:
        """True when the parameters hold ``y`` (for training steps), False when they hold ``x``
        (for evaluation and checkpoints)."""
        return all(group["train_mode"] for group in self.param_groups)

    def train(self) -> None:
        """Switch the parameters to the training point ``y = (1 - beta) * z + beta * x``
        (a no-op in train mode). Call before training steps."""
        self._switch(train=True)

    def eval(self) -> None:
        """Switch the parameters to the averaged point ``x = (y - (1 - beta) * z) / beta``
        (a no-op in eval mode). Call before evaluating, and before saving the model."""
        self._switch(train=False)

    @torch.no_grad()
    def _switch(self, *, train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == train:
                continue
            beta = self._beta(group)
            weight = 1.0 - beta if train else 1.0 - 1.0 / beta
            for p in group["params"]:
                z = self.state[p].get("z") if p in self.state else None
                if z is None:
                    continue  # never stepped: x = y = z = p
                if p.dtype == z.dtype:
                    p.lerp_(z, weight)
                else:
                    p.copy_(p.to(z.dtype).lerp_(z, weight))
            group["train_mode"] = train

    # -- the step -------------------------------------------------------------------------------

    def _update(self) -> None:
        if not self.train_mode:
            raise RuntimeError(
                f"{type(self).__name__}.step() in eval mode: call optimizer.train() before "
                "training steps (and optimizer.eval() before evaluating or saving the model)"
            )
        super()._update()

    def _hyperparameters(self, group: dict[str, Any]) -> H:
        """The group's scalars for this step; moves its counters on (as the authors' package:
        every group counts every step, with or without gradients)."""
        k = group["k"]
        warmup = group["warmup_steps"]
        lr = group["lr"] * ((k + 1) / warmup if k < warmup else 1.0)
        lr_max = group["lr_max"] = max(lr, group["lr_max"])
        weight = (k + 1) ** group["r"] * lr_max ** group["weight_lr_power"]
        weight_sum = group["weight_sum"] = group["weight_sum"] + weight
        c = weight / weight_sum if weight_sum != 0 else 0.0
        group["k"] = k + 1
        beta = self._beta(group)
        scalars = StepScalars(step=k + 1, lr=lr, c=c, y_lr=lr * (beta * (1.0 - c) - 1.0))
        return self._step_hyper(group, scalars)


def schedulefree_kernels(work: list[GroupStep[Any]], scratch: ScratchBuffers) -> None:
    """All groups' tensors in one call of optpilot's C kernel (``_cpu_kernels``; AdamW's with
    ``exp_avg_sq``, SGD's without), which needs no scratch buffers."""
    kernels = _cpu_kernels.load()
    assert kernels is not None  # _step_paths picks tensors for the kernels once loaded
    lists = [[t for step in work for t in step.tensors[i]] for i in range(len(work[0].tensors))]
    kernels.schedulefree(
        lists[0], lists[1], lists[2], lists[3] if len(lists) > 3 else None,
        [h for step in work for h in step.hyper.row() * len(step.tensors[0])],
        PARALLEL_MIN_NUMEL,
    )


class MoveScalars(Protocol):
    """What a move needs of a step's scalars (both optimizers' records have these fields)."""

    @property
    def lr(self) -> float: ...
    @property
    def c(self) -> float: ...
    @property
    def y_lr(self) -> float: ...


def move(p: torch.Tensor, y: torch.Tensor, z: torch.Tensor, u: torch.Tensor, hp: MoveScalars,
         sign: float = 1.0) -> None:
    """``y' = y + c * (z - y) + y_lr * u`` and ``z' = z - lr * u`` in place for one tensor, with
    ``u`` given as ``sign * u``; ``y`` is ``p`` or its working copy (written back)."""
    y.lerp_(z, hp.c)
    y.add_(u, alpha=sign * hp.y_lr)
    z.add_(u, alpha=-sign * hp.lr)
    if y is not p:
        p.copy_(y)


def foreach_move(bucket: ForeachBucket, us: list[torch.Tensor], hp: MoveScalars) -> None:
    """``move`` for one bucket of foreach tensors (``bucket.xs`` hold ``y``, its first state list
    ``z``)."""
    ys, zs = bucket.xs, bucket.states[0]
    torch._foreach_lerp_(ys, zs, hp.c)
    torch._foreach_add_(ys, us, alpha=hp.y_lr)
    torch._foreach_add_(zs, us, alpha=-hp.lr)
    bucket.write_back()


def inverse_sqrt_bias_correction(beta2: float, step: int) -> float:
    """``1 / sqrt(1 - beta2**t)``."""
    return 1.0 / math.sqrt(1.0 - beta2**step)
