"""What optpilot's two schedule-free optimizers share (:mod:`optimizers.schedulefree_adamw`,
:mod:`optimizers.schedulefree_sgd`): the averaging weights, the warm-up, the train/eval switch and
the dispatch of a step over the reference, C kernel, foreach, loop and compiled paths.

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
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple, TypeAlias

import torch

from optimizers import _cpu_kernels
from optimizers._base import PARALLEL_MIN_NUMEL, OptpilotOptimizer, take
from optimizers._checks import Implementation, check_number, check_steps
from optimizers._compiled import compiled_step, tensor_signature
from optimizers._scratch import state_dtype
from optimizers.registry import ParamsT

# Group entries that are the optimizer's running counters, not hyperparameters (as in the authors'
# package): steps taken, the sum of the averaging weights, the largest lr so far, the mode.
COUNTERS: dict[str, Any] = {"k": 0, "weight_sum": 0.0, "lr_max": -1.0, "train_mode": True}

# (kernel row, params, grads, state lists) of one parameter group; the state lists are [z] or
# [z, exp_avg_sq].
Work: TypeAlias = tuple[list[float], list[torch.Tensor], list[torch.Tensor],
                        list[list[torch.Tensor]]]


class StepScalars(NamedTuple):
    """One group's scalars for one step."""

    step: int  # t, 1-based
    lr: float  # lr_t: the group's lr times the warm-up factor
    c: float  # the averaging weight of z' in x'
    y_lr: float  # -lr_t * (1 - beta * (1 - c)): the coefficient of u in y'


class ScheduleFreeOptimizer(OptpilotOptimizer):
    """Common behaviour; subclasses give the interpolation ``beta`` of a group, the per-tensor
    math of each path and the kernel row (``lr, wd, c, y_lr`` followed by their own scalars)."""

    # Name of the interpolation hyperparameter in messages ("betas[0]", "momentum").
    _beta_name: ClassVar[str]

    def __init__(
        self,
        params: ParamsT,
        defaults: dict[str, Any],
        implementation: Implementation,
        foreach: bool | None,
    ) -> None:
        super().__init__(params, {**defaults, **COUNTERS}, implementation, foreach)

    # -- hooks ----------------------------------------------------------------------------------

    def _beta(self, group: dict[str, Any]) -> float:
        """``beta`` of ``y = (1 - beta) * z + beta * x`` for this group."""
        raise NotImplementedError

    def _row(self, group: dict[str, Any], scalars: StepScalars) -> list[float]:
        """The group's floats for the C kernel and the compiled step."""
        raise NotImplementedError

    def _reference(self, group: dict[str, Any], scalars: StepScalars, params: list[torch.Tensor],
                   grads: list[torch.Tensor], states: list[list[torch.Tensor]]) -> None:
        raise NotImplementedError

    def _loop(self, group: dict[str, Any], scalars: StepScalars, params: list[torch.Tensor],
              grads: list[torch.Tensor], states: list[list[torch.Tensor]]) -> None:
        raise NotImplementedError

    def _foreach(self, group: dict[str, Any], scalars: StepScalars, params: list[torch.Tensor],
                 grads: list[torch.Tensor], states: list[list[torch.Tensor]]) -> None:
        raise NotImplementedError

    def _compiled_body(self) -> Callable[..., None]:
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

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in COUNTERS.items():
                group.setdefault(key, value)

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

    def _advance(self, group: dict[str, Any]) -> StepScalars:
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
        return StepScalars(step=k + 1, lr=lr, c=c, y_lr=lr * (beta * (1.0 - c) - 1.0))

    def _update(self) -> None:
        if not self.train_mode:
            raise RuntimeError(
                f"{type(self).__name__}.step() in eval mode: call optimizer.train() before "
                "training steps (and optimizer.eval() before evaluating or saving the model)"
            )
        kernel_work: list[Work] = []
        compiled_work: list[Work] = []
        for group in self.param_groups:
            params, grads, states = self._gather(group)
            scalars = self._advance(group)
            if not params:
                continue
            lists = [[state[key] for state in states] for key in self._tensor_state]
            if self.implementation == "reference":
                self._reference(group, scalars, params, grads, lists)
                continue
            kernel, batched, looped, compiled = self._step_paths(params, grads, *lists)
            for work, idx in ((kernel_work, kernel), (compiled_work, compiled)):
                if idx:
                    work.append((self._row(group, scalars), take(params, idx), take(grads, idx),
                                 [take(ts, idx) for ts in lists]))
            for path, idx in ((self._foreach, batched), (self._loop, looped)):
                if idx:
                    path(group, scalars, take(params, idx), take(grads, idx),
                         [take(ts, idx) for ts in lists])
        if kernel_work:
            self._kernels(kernel_work)
        if compiled_work:
            self._compiled(compiled_work)

    def _kernels(self, work: list[Work]) -> None:
        """All groups' tensors in one call of optpilot's C kernel (``_cpu_kernels``)."""
        kernels = _cpu_kernels.load()
        assert kernels is not None  # _step_paths picks tensors for the kernels once loaded
        lists = [[t for _, _, _, ls in work for t in ls[i]] for i in range(len(work[0][3]))]
        kernels.schedulefree(
            [p for _, params, _, _ in work for p in params],
            [g for _, _, grads, _ in work for g in grads],
            lists[0],
            lists[1] if len(lists) > 1 else None,
            [h for row, params, _, _ in work for h in row * len(params)],
            PARALLEL_MIN_NUMEL,
        )

    def _compiled(self, work: list[Work]) -> None:
        """All groups in one ``torch.compile``'d call; the scalars travel as a tensor, so the
        warm-up and the averaging weights never recompile."""
        tensors = [(params, grads, *lists) for _, params, grads, lists in work]
        key = (type(self).__name__,
               tuple(tuple(tensor_signature(ts) for ts in group) for group in tensors))
        scalars = torch.tensor([row for row, *_ in work], dtype=torch.float64,
                               device=work[0][1][0].device)
        compiled_step(self._compiled_body(), key)(tensors, scalars)


def working_copies(
    params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], dtype: torch.dtype
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """For foreach ops: the parameters and gradients in the state dtype (copies where they
    differ; ``foreach_move`` writes copied parameters back)."""
    ys = [p.to(dtype) for p in params] if params[0].dtype != dtype else list(params)
    gs = [g if g.dtype == dtype else g.to(dtype) for g in grads]
    return ys, gs


def move(p: torch.Tensor, y: torch.Tensor, z: torch.Tensor, u: torch.Tensor,
         scalars: StepScalars, sign: float = 1.0) -> None:
    """``y' = y + c * (z - y) + y_lr * u`` and ``z' = z - lr * u`` in place for one tensor, with
    ``u`` given as ``sign * u``; ``y`` is ``p`` or its working copy (written back)."""
    y.lerp_(z, scalars.c)
    y.add_(u, alpha=sign * scalars.y_lr)
    z.add_(u, alpha=-sign * scalars.lr)
    if y is not p:
        p.copy_(y)


def foreach_move(params: list[torch.Tensor], ys: list[torch.Tensor], zs: list[torch.Tensor],
                 us: list[torch.Tensor], scalars: StepScalars) -> None:
    """``move`` for lists of tensors of one device and dtype, with foreach ops."""
    torch._foreach_lerp_(ys, zs, scalars.c)
    torch._foreach_add_(ys, us, alpha=scalars.y_lr)
    torch._foreach_add_(zs, us, alpha=-scalars.lr)
    if ys[0] is not params[0]:
        torch._foreach_copy_(params, ys)


def inverse_sqrt_bias_correction(beta2: float, step: int) -> float:
    """``1 / sqrt(1 - beta2**t)``."""
    return 1.0 / math.sqrt(1.0 - beta2**step)
