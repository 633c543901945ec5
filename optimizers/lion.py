"""Lion: EvoLved Sign Momentum (Chen et al. 2023)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from optimizers import _cpu_kernels
from optimizers._base import (
    PARALLEL_MIN_NUMEL,
    GroupStep,
    OptpilotOptimizer,
    StepPaths,
    compiled_rows,
    foreach_buckets,
    use_torch_fused,
)
from optimizers._checks import Implementation, check_betas, check_number
from optimizers._scratch import ScratchBuffers, state_dtype
from optimizers.registry import ParamsT

__all__ = ["Lion"]


class LionHyper(NamedTuple):
    """A group's scalars."""

    lr: float
    beta1: float
    beta2: float
    weight_decay: float

    def row(self) -> list[float]:
        """``lr, b1, b2, wd``: the C kernel's and the compiled step's floats."""
        return list(self)


class Lion(OptpilotOptimizer[LionHyper]):
    r"""Lion: the sign of an interpolated momentum, with decoupled weight decay.

    For each parameter ``p`` with gradient ``g`` (Chen et al. 2023, Algorithm 2)::

        p = p * (1 - lr * weight_decay)
        c = b1*m + (1-b1)*g
        p = p - lr * sign(c)
        m = b2*m + (1-b2)*g

    ``sign(0) = 0``, so an entry whose momentum and gradient are both zero only decays. Defaults
    are the paper's: lr 1e-4, betas (0.9, 0.99), weight_decay 0. Use a learning rate 3-10x
    smaller than AdamW's and a weight decay 3-10x larger (the update has unit magnitude per
    entry). One state tensor per parameter, ``exp_avg`` (m), kept in fp32 for fp16/bf16 parameters
    (whose math is done in fp32 and rounded once on write-back).

    ``implementation`` chooses how the step runs; all three give the same result up to rounding
    and share one ``state_dict`` layout:

    * ``"reference"``: the equations above, tensor by tensor, with temporaries.
    * ``"fast"`` (default): the fastest path that needs no ``torch.compile``. On CPU, contiguous
      fp32 tensors go through the fused path's C kernel (below) where it can be built; the rest
      through a per-tensor loop on a scratch buffer kept across steps: ``c`` by ``lerp`` into the
      buffer, ``m`` by ``lerp_`` towards ``c`` (``m + (1-b2)/(1-b1) * (c - m)``, the same value
      while ``c`` is in cache), ``sign_`` in place, decay and signed step in one pass of torch's
      fused SGD kernel; tensors under ATen's grain size (biases) all together through
      ``torch._foreach_*`` ops. On CUDA the ``torch._foreach_*`` ops for every tensor.
      ``foreach=True``/``False`` forces the foreach ops or the loop for every tensor.
    * ``"fused"``: opt-in; one pass per tensor (reads p, g, m once, writes p, m once).
      Contiguous fp32 tensors on CPU go through optpilot's C kernel (:mod:`optimizers._cpu_kernels`,
      built with the system C compiler on first use and cached), everything else through one
      ``torch.compile``'d call for all groups, compiled once per structure (shapes, dtypes and
      devices of the parameters that have gradients) on the first step; hyperparameters are
      passed as tensors, so schedules never recompile.

    References:
        Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023
        (arXiv:2302.06675).
    """

    _tensor_state = ("exp_avg",)

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        implementation: Implementation = "fast",
        foreach: bool | None = None,
    ) -> None:
        defaults: dict[str, Any] = {"lr": lr, "betas": betas, "weight_decay": weight_decay}
        super().__init__(params, defaults, implementation, foreach)

    def _validate_group(self, group: dict[str, Any]) -> None:
        check_number("lr", group["lr"], low=0.0)
        group["betas"] = check_betas(group["betas"])
        check_number("weight_decay", group["weight_decay"], low=0.0)

    def _init_state(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        state["exp_avg"] = torch.zeros_like(
            param, dtype=state_dtype(param), memory_format=torch.contiguous_format
        )

    def _hyperparameters(self, group: dict[str, Any]) -> LionHyper:
        b1, b2 = group["betas"]
        return LionHyper(group["lr"], b1, b2, group["weight_decay"])

    def _paths(self) -> StepPaths:
        return _PATHS


# -- "reference": the paper's equations ---------------------------------------------------------


def lion_reference(
    params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
    hp: LionHyper,
) -> None:
    for p, grad, m in zip(params, grads, exp_avgs, strict=True):
        g = grad.to(m.dtype)
        x = p.to(m.dtype)
        x = x * (1 - hp.lr * hp.weight_decay)
        c = hp.beta1 * m + (1 - hp.beta1) * g
        x = x - hp.lr * torch.sign(c)
        m.mul_(hp.beta2).add_(g, alpha=1 - hp.beta2)
        p.copy_(x)


# -- "fast" on CPU: per-tensor in-place loop ----------------------------------------------------


def lion_loop(
    params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
    hp: LionHyper, *, scratch: ScratchBuffers,
) -> None:
    lr, beta1, beta2, weight_decay = hp
    for p, grad, m in zip(params, grads, exp_avgs, strict=True):
        dtype, device, shape = m.dtype, p.device, p.shape
        x = scratch.working("param", p, dtype)
        g = scratch.working("grad", grad, dtype)
        s = scratch.get("update", shape, dtype, device)
        torch.lerp(m, g, 1 - beta1, out=s)  # c = b1*m + (1-b1)*g
        # m <- b2*m + (1-b2)*g = lerp(m, c, (1-b2)/(1-b1)): reads m and c while they are still in
        # cache, instead of m and g again after the update pass.
        m.lerp_(s, (1 - beta2) / (1 - beta1))
        s.sign_()
        if use_torch_fused(x):
            # x <- x - lr*(s + wd*x) = (1 - lr*wd)*x - lr*sign(c), one pass over x and s.
            torch._fused_sgd_(
                [x], [s], [],
                weight_decay=weight_decay, momentum=0.0, lr=lr, dampening=0.0,
                nesterov=False, maximize=False, is_first_step=False,
            )  # fmt: skip
        else:
            if weight_decay != 0:
                x.mul_(1 - lr * weight_decay)
            x.add_(s, alpha=-lr)
        if x is not p:
            p.copy_(x)


# -- "fast" on CUDA (and small CPU tensors): foreach kernels ------------------------------------


def lion_foreach(
    params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
    hp: LionHyper,
) -> None:
    for bucket in foreach_buckets(params, grads, exp_avgs):
        (ms,) = bucket.states
        c = list(torch._foreach_lerp(ms, bucket.grads, 1 - hp.beta1))
        torch._foreach_sign_(c)
        if hp.weight_decay != 0:
            torch._foreach_mul_(bucket.xs, 1 - hp.lr * hp.weight_decay)
        torch._foreach_add_(bucket.xs, c, alpha=-hp.lr)
        torch._foreach_lerp_(ms, bucket.grads, 1 - hp.beta2)
        bucket.write_back()


# -- "fused" (and "fast" on CPU): optpilot's C kernel; torch.compile for other tensors ----------


def lion_kernels(work: list[GroupStep[LionHyper]], scratch: ScratchBuffers) -> None:
    """All groups' tensors in one call of optpilot's C kernel (``_cpu_kernels``), which needs
    no scratch buffers."""
    kernels = _cpu_kernels.load()
    assert kernels is not None  # _step_paths picks tensors for the kernels once loaded
    params, grads, exp_avgs = ([t for step in work for t in step.tensors[i]] for i in range(3))
    rows = [h for step in work for h in step.hyper.row() * len(step.tensors[0])]
    kernels.lion(params, grads, exp_avgs, rows, PARALLEL_MIN_NUMEL)


def _lion_fused_body(
    groups: list[tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]],
    scalars: torch.Tensor,
) -> None:
    """One Lion step for all groups; traced by ``torch.compile`` (never run eagerly).
    ``groups[j]`` is ``(params, grads, exp_avgs)``, ``scalars[j]`` holds ``lr, b1, b2, wd``."""
    for j, (params, grads, exp_avgs) in enumerate(groups):
        for p, grad, m in zip(params, grads, exp_avgs, strict=True):
            sc = scalars[j].to(m.dtype)
            lr, b1, b2, wd = sc[0], sc[1], sc[2], sc[3]
            g = grad.to(m.dtype)
            x = p.to(m.dtype)
            c = b1 * m + (1 - b1) * g  # multiply-adds: fewer instructions than lerp's blend
            p.copy_(x * (1 - lr * wd) - lr * torch.sign(c))
            m.copy_(b2 * m + (1 - b2) * g)


_PATHS = StepPaths(reference=lion_reference, foreach=lion_foreach, loop=lion_loop,
                   kernels=lion_kernels, compiled=compiled_rows(_lion_fused_body))
