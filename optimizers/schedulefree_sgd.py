"""Schedule-free SGD (Defazio et al. 2024, "The Road Less Scheduled")."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch

from optimizers._base import StepPaths, compiled_rows, foreach_buckets
from optimizers._checks import Implementation
from optimizers._schedulefree import (
    ScheduleFreeOptimizer,
    StepScalars,
    foreach_move,
    move,
    schedulefree_kernels,
)
from optimizers._scratch import ScratchBuffers
from optimizers.registry import ParamsT

__all__ = ["ScheduleFreeSGD"]


class SGDHyper(NamedTuple):
    """A group's scalars for one step."""

    lr: float  # lr_t
    weight_decay: float
    c: float
    y_lr: float

    def row(self) -> list[float]:
        """``lr_t, wd, c, y_lr``: the C kernel's and the compiled step's floats."""
        return list(self)


class ScheduleFreeSGD(ScheduleFreeOptimizer[SGDHyper]):
    r"""Schedule-free SGD: plain gradient steps on ``z``, evaluated at a running average ``x`` of
    the ``z``'s, with gradients taken at an interpolation ``y`` of the two; the interpolation
    plays the part of momentum. No learning-rate schedule and no training horizon.

    For each parameter at step ``t`` (1-based)::

        y_t = (1 - momentum) * z_t + momentum * x_t   (the parameter in train mode)
        u_t = gradient at y_t + weight_decay * y_t
        lr_t = lr * min(1, t / warmup_steps)          (lr without warm-up)
        z_{t+1} = z_t - lr_t * u_t
        w_t = t**r * max(lr_1, ..., lr_t)**weight_lr_power
        c_{t+1} = w_t / (w_1 + ... + w_t)
        x_{t+1} = (1 - c_{t+1}) * x_t + c_{t+1} * z_{t+1}   (the parameter in eval mode)

    with ``x_1 = z_1 = y_1`` the initial parameter: the paper's Algorithm 1 with SGD as the base
    step, and the averaging weights of the authors' package (``SGDScheduleFree``, see
    :class:`~optimizers.ScheduleFreeAdamW` for ``r`` and ``weight_lr_power``). Weight decay is an
    L2 term at ``y``, as in the package.

    **Modes**, state layout and ``implementation`` as for :class:`~optimizers.ScheduleFreeAdamW`:
    call :meth:`eval` before evaluating or saving the model and :meth:`train` before the next
    step; the optimizer starts in train mode. State per parameter: ``z`` only (fp32 for
    fp16/bf16 parameters), the memory of SGD with momentum. A step reads ``y, g, z`` and writes
    ``y, z`` once.

    **Defaults** are the authors' package's: lr 1.0, momentum 0.9, weight_decay 0,
    warmup_steps 0, r 0, weight_lr_power 2. The authors recommend a learning rate 10-50x a
    scheduled SGD's. ``momentum`` must lie in (0, 1): ``x`` is recovered from ``y`` and ``z`` by
    dividing by it.

    References:
        Defazio, Yang, Mehta, Mishchenko, Khaled, Cutkosky 2024, "The Road Less Scheduled",
        NeurIPS 2024 (arXiv:2405.15682); the authors' package ``schedulefree``
        (github.com/facebookresearch/schedule_free).
    """

    _tensor_state = ("z",)
    _beta_name: ClassVar[str] = "momentum"

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        *,
        implementation: Implementation = "fast",
        foreach: bool | None = None,
    ) -> None:
        defaults: dict[str, Any] = {
            "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
            "warmup_steps": warmup_steps, "r": r, "weight_lr_power": weight_lr_power,
        }  # fmt: skip
        super().__init__(params, defaults, implementation, foreach)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        self._check_beta(group["momentum"])

    def _beta(self, group: dict[str, Any]) -> float:
        beta: float = group["momentum"]
        return beta

    def _step_hyper(self, group: dict[str, Any], scalars: StepScalars) -> SGDHyper:
        return SGDHyper(scalars.lr, group["weight_decay"], scalars.c, scalars.y_lr)

    def _paths(self) -> StepPaths:
        return _PATHS


def sgd_reference(
    params: list[torch.Tensor], grads: list[torch.Tensor], zs: list[torch.Tensor], hp: SGDHyper
) -> None:
    for p, grad, z in zip(params, grads, zs, strict=True):
        y = p.to(z.dtype)
        u = grad.to(z.dtype) + hp.weight_decay * y
        p.copy_((1 - hp.c) * y + hp.c * z + hp.y_lr * u)
        z.sub_(hp.lr * u)


def sgd_loop(
    params: list[torch.Tensor], grads: list[torch.Tensor], zs: list[torch.Tensor], hp: SGDHyper,
    *, scratch: ScratchBuffers,
) -> None:
    for p, grad, z in zip(params, grads, zs, strict=True):
        y = scratch.working("param", p, z.dtype)
        u = scratch.working("grad", grad, z.dtype)
        if hp.weight_decay != 0:
            s = scratch.get("update", p.shape, z.dtype, p.device)
            torch.add(u, y, alpha=hp.weight_decay, out=s)
            u = s
        move(p, y, z, u, hp)


def sgd_foreach(
    params: list[torch.Tensor], grads: list[torch.Tensor], zs: list[torch.Tensor], hp: SGDHyper
) -> None:
    for bucket in foreach_buckets(params, grads, zs):
        us = bucket.grads
        if hp.weight_decay != 0:
            us = list(torch._foreach_add(us, bucket.xs, alpha=hp.weight_decay))
        foreach_move(bucket, us, hp)


def _fused_body(
    groups: list[tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]],
    scalars: torch.Tensor,
) -> None:
    """One step for all groups; traced by ``torch.compile`` (never run eagerly). ``groups[j]`` is
    ``(params, grads, zs)``, ``scalars[j]`` the ``SGDHyper.row()`` of group ``j``."""
    for j, (params, grads, zs) in enumerate(groups):
        for p, grad, z in zip(params, grads, zs, strict=True):
            sc = scalars[j].to(z.dtype)
            lr, wd, c, y_lr = sc[0], sc[1], sc[2], sc[3]
            y = p.to(z.dtype)
            u = grad.to(z.dtype) + wd * y
            p.copy_(y + c * (z - y) + y_lr * u)
            z.copy_(z - lr * u)


_PATHS = StepPaths(reference=sgd_reference, foreach=sgd_foreach, loop=sgd_loop,
                   kernels=schedulefree_kernels, compiled=compiled_rows(_fused_body))
