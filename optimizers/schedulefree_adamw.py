"""Schedule-free AdamW (Defazio et al. 2024, "The Road Less Scheduled")."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch

from optimizers._base import (
    StepPaths,
    compiled_rows,
    foreach_buckets,
    fused_adamw_direction,
    use_torch_fused,
)
from optimizers._checks import Implementation, check_betas, check_number
from optimizers._schedulefree import (
    ScheduleFreeOptimizer,
    StepScalars,
    foreach_move,
    inverse_sqrt_bias_correction,
    move,
    schedulefree_kernels,
)
from optimizers._scratch import ScratchBuffers
from optimizers.registry import ParamsT

__all__ = ["ScheduleFreeAdamW"]


class AdamWHyper(NamedTuple):
    """A group's scalars for one step."""

    lr: float  # lr_t
    weight_decay: float
    c: float
    y_lr: float
    beta2: float
    eps: float
    step: int  # t, 1-based

    def row(self) -> list[float]:
        """``lr_t, wd, c, y_lr, b2, eps, 1/sqrt(1 - b2**t)``: the C kernel's and the compiled
        step's floats."""
        return [*self[:6], inverse_sqrt_bias_correction(self.beta2, self.step)]


class ScheduleFreeAdamW(ScheduleFreeOptimizer[AdamWHyper]):
    r"""Schedule-free AdamW: Adam's normalised gradient steps on ``z``, evaluated at a running
    average ``x`` of the ``z``'s, with gradients taken at an interpolation ``y`` of the two. No
    learning-rate schedule and no training horizon: train at a constant lr (after the built-in
    warm-up) and stop whenever.

    For each parameter at step ``t`` (1-based), with ``b1, b2 = betas``::

        y_t = (1 - b1) * z_t + b1 * x_t               (the parameter in train mode)
        g_t = gradient at y_t
        v_t = b2 * v_{t-1} + (1 - b2) * g_t**2
        lr_t = lr * min(1, t / warmup_steps)          (lr without warm-up)
        u_t = g_t / (sqrt(v_t / (1 - b2**t)) + eps) + weight_decay * y_t
        z_{t+1} = z_t - lr_t * u_t
        w_t = t**r * max(lr_1, ..., lr_t)**weight_lr_power
        c_{t+1} = w_t / (w_1 + ... + w_t)
        x_{t+1} = (1 - c_{t+1}) * x_t + c_{t+1} * z_{t+1}   (the parameter in eval mode)

    with ``x_1 = z_1 = y_1`` the initial parameter. With the defaults ``r = 0`` and
    ``weight_lr_power = 2`` the average weighs each ``z`` by the square of the largest lr so far:
    uniformly after the warm-up, less during it. ``r > 0`` weighs later iterates more (polynomial
    averaging). Weight decay is taken at ``y`` and enters ``u``, so it moves both ``z`` and ``y``.
    This is the authors' package's ``AdamWScheduleFree`` (``schedulefree`` on PyPI), which keeps
    the bias correction inside the square root; the paper's Algorithm 1 as printed folds
    ``sqrt(1 - b2**t)`` into ``lr_t`` instead (the package's ``AdamWScheduleFreePaper``).

    **Modes.** The parameters hold ``y`` in train mode and ``x`` in eval mode; ``z`` is state.
    Call :meth:`eval` before evaluating the model or saving it and :meth:`train` before the next
    training step (a step in eval mode raises ``RuntimeError``). Unlike the authors' package, the
    optimizer starts in train mode, so a plain training loop works as it is; calling ``train()``
    first, as the package requires, is harmless. ``state_dict`` records the mode of each group, so
    a checkpoint of model and optimizer taken in either mode resumes in that mode.

    **Defaults** are the authors' package's: lr 0.0025, betas (0.9, 0.999), eps 1e-8,
    weight_decay 0, warmup_steps 0, r 0, weight_lr_power 2. The authors recommend a learning
    rate 1-10x a scheduled AdamW's and a warm-up (as for any Adam), and a larger ``b1`` (0.95,
    0.98) for very long runs. ``b1`` must lie in (0, 1): ``x`` is recovered from ``y`` and ``z``
    by dividing by it.

    State per parameter: ``z`` and ``exp_avg_sq`` (``v``), in fp32 for fp16/bf16 parameters
    (whose math is done in fp32, written back once per step); the step count, the weight sum,
    the largest lr and the mode are per group (``k``, ``weight_sum``, ``lr_max``,
    ``train_mode``), as in the package. The step works in ``y``/``z`` form
    (:mod:`optimizers._schedulefree`), so it reads ``y, g, z, v`` and writes ``y, z, v`` once,
    the memory traffic of an AdamW step.

    ``implementation``: ``"reference"`` (the equations above in ``y``/``z`` form, tensor by
    tensor, with temporaries), ``"fast"`` (default: on CPU, contiguous fp32 tensors through
    optpilot's C kernel where it can be built, small other tensors through ``torch._foreach_*``
    ops and large ones through a per-tensor loop on scratch buffers, whose Adam direction comes
    from torch's fused AdamW kernel; on CUDA the foreach ops; ``foreach=True``/``False`` forces
    them or the loop), ``"fused"`` (the C kernel on CPU, ``torch.compile`` for everything else).
    All give the same result up to rounding and share one ``state_dict`` layout.

    References:
        Defazio, Yang, Mehta, Mishchenko, Khaled, Cutkosky 2024, "The Road Less Scheduled",
        NeurIPS 2024 (arXiv:2405.15682); the authors' package ``schedulefree``
        (github.com/facebookresearch/schedule_free).
    """

    _tensor_state = ("z", "exp_avg_sq")
    _beta_name: ClassVar[str] = "betas[0]"

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        *,
        implementation: Implementation = "fast",
        foreach: bool | None = None,
    ) -> None:
        defaults: dict[str, Any] = {
            "lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
            "warmup_steps": warmup_steps, "r": r, "weight_lr_power": weight_lr_power,
        }  # fmt: skip
        super().__init__(params, defaults, implementation, foreach)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        group["betas"] = check_betas(group["betas"])
        self._check_beta(group["betas"][0])
        check_number("eps", group["eps"], low=0.0)

    def _beta(self, group: dict[str, Any]) -> float:
        beta: float = group["betas"][0]
        return beta

    def _step_hyper(self, group: dict[str, Any], scalars: StepScalars) -> AdamWHyper:
        return AdamWHyper(scalars.lr, group["weight_decay"], scalars.c, scalars.y_lr,
                          group["betas"][1], group["eps"], scalars.step)

    def _paths(self) -> StepPaths:
        return _PATHS


# -- "reference" --------------------------------------------------------------------------------


def adamw_reference(
    params: list[torch.Tensor], grads: list[torch.Tensor], zs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor], hp: AdamWHyper,
) -> None:
    lr, weight_decay, c, y_lr, beta2, eps, step = hp
    bias_correction2 = 1.0 - beta2**step
    for p, grad, z, v in zip(params, grads, zs, exp_avg_sqs, strict=True):
        y = p.to(z.dtype)
        g = grad.to(z.dtype)
        v.mul_(beta2).add_((1 - beta2) * g * g)
        u = g / ((v / bias_correction2).sqrt() + eps) + weight_decay * y
        p.copy_((1 - c) * y + c * z + y_lr * u)
        z.sub_(lr * u)


# -- "fast": per-tensor loop on scratch buffers (CPU tensors the kernel cannot take) ------------


def adamw_loop(
    params: list[torch.Tensor], grads: list[torch.Tensor], zs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor], hp: AdamWHyper, *, scratch: ScratchBuffers,
) -> None:
    _, wd, _, _, beta2, eps, step = hp
    step_tensors: dict[torch.device, torch.Tensor] = {}
    for p, grad, z, v in zip(params, grads, zs, exp_avg_sqs, strict=True):
        dtype, device, shape = z.dtype, p.device, p.shape
        y = scratch.working("param", p, dtype)
        g = scratch.working("grad", grad, dtype)
        s = scratch.get("update", shape, dtype, device)
        if use_torch_fused(p):
            # AdamW's fused kernel with b1=0 (its m is then g): s = -u, that is
            # -(g / (sqrt(v / (1 - b2**t)) + eps) + wd*y), in three passes instead of six. The
            # kernel reads its m (b1 * m) before overwriting it with g: zeros, not what the
            # scratch buffer held (uninitialised memory, or a NaN of an earlier step).
            m = scratch.get("momentum", shape, dtype, device).zero_()
            fused_adamw_direction(s, y, g, m, v, beta1=0.0, beta2=beta2, eps=eps,
                                  weight_decay=wd, step_tensors=step_tensors, step=step)
            sign = -1.0
        else:
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            torch.sqrt(v, out=s)
            s.mul_(inverse_sqrt_bias_correction(beta2, step)).add_(eps)
            torch.div(g, s, out=s)
            if wd != 0:
                s.add_(y, alpha=wd)
            sign = 1.0
        move(p, y, z, s, hp, sign)


# -- "fast": foreach ops (CUDA; small CPU tensors) ----------------------------------------------


def adamw_foreach(
    params: list[torch.Tensor], grads: list[torch.Tensor], zs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor], hp: AdamWHyper,
) -> None:
    _, weight_decay, _, _, beta2, eps, step = hp
    for bucket in foreach_buckets(params, grads, zs, exp_avg_sqs):
        vs, gs = bucket.states[1], bucket.grads
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, gs, gs, 1 - beta2)
        denom = list(torch._foreach_sqrt(vs))
        torch._foreach_mul_(denom, inverse_sqrt_bias_correction(beta2, step))
        torch._foreach_add_(denom, eps)
        u = list(torch._foreach_div(gs, denom))
        if weight_decay != 0:
            torch._foreach_add_(u, bucket.xs, alpha=weight_decay)
        foreach_move(bucket, u, hp)


def _fused_body(
    groups: list[tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor],
                       list[torch.Tensor]]],
    scalars: torch.Tensor,
) -> None:
    """One step for all groups; traced by ``torch.compile`` (never run eagerly). ``groups[j]`` is
    ``(params, grads, zs, exp_avg_sqs)``, ``scalars[j]`` the ``AdamWHyper.row()`` of group
    ``j``."""
    for j, (params, grads, zs, vs) in enumerate(groups):
        for p, grad, z, v in zip(params, grads, zs, vs, strict=True):
            sc = scalars[j].to(z.dtype)
            lr, wd, c, y_lr = sc[0], sc[1], sc[2], sc[3]
            b2, eps, inv_sqrt_bc2 = sc[4], sc[5], sc[6]
            y = p.to(z.dtype)
            g = grad.to(z.dtype)
            v_new = b2 * v + (1 - b2) * (g * g)
            u = g / (torch.sqrt(v_new) * inv_sqrt_bc2 + eps) + wd * y
            p.copy_(y + c * (z - y) + y_lr * u)
            z.copy_(z - lr * u)
            v.copy_(v_new)


_PATHS = StepPaths(reference=adamw_reference, foreach=adamw_foreach, loop=adamw_loop,
                   kernels=schedulefree_kernels, compiled=compiled_rows(_fused_body))
