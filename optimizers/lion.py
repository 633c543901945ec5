"""Lion: EvoLved Sign Momentum (Chen et al. 2023)."""

from __future__ import annotations

from typing import Any, TypeAlias

import torch

from optimizers import _cpu_kernels
from optimizers._base import PARALLEL_MIN_NUMEL, OptpilotOptimizer, group_by_device_dtype, take
from optimizers._checks import Implementation, check_betas, check_number
from optimizers._compiled import compiled_step, tensor_signature
from optimizers._scratch import state_dtype
from optimizers.registry import ParamsT

__all__ = ["Lion"]

# (group, params, grads, exp_avgs) of one parameter group.
_GroupWork: TypeAlias = tuple[
    dict[str, Any], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]
]
# Devices with a one-pass ``torch._fused_sgd_`` kernel (used by the fast loop, see ``Lion._loop``).
_FUSED_SGD_DEVICES = frozenset({"cpu", "cuda"})


class Lion(OptpilotOptimizer):
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

    def _update(self) -> None:
        kernel_work: list[_GroupWork] = []
        compiled_work: list[_GroupWork] = []
        for group in self.param_groups:
            params, grads, states = self._gather(group)
            if not params:
                continue
            exp_avgs = [state["exp_avg"] for state in states]
            if self.implementation == "reference":
                self._reference(group, params, grads, exp_avgs)
                continue
            kernel, batched, looped, compiled = self._step_paths(params, grads, exp_avgs)
            for work, idx in ((kernel_work, kernel), (compiled_work, compiled)):
                if idx:
                    work.append((group, take(params, idx), take(grads, idx), take(exp_avgs, idx)))
            for path, idx in ((self._foreach, batched), (self._loop, looped)):
                if idx:
                    path(group, take(params, idx), take(grads, idx), take(exp_avgs, idx))
        if kernel_work:
            _kernels(kernel_work)
        if compiled_work:
            _compiled(compiled_work)

    # -- "reference": the paper's equations -----------------------------------------------------

    @staticmethod
    def _reference(
        group: dict[str, Any],
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        exp_avgs: list[torch.Tensor],
    ) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        b1, b2 = group["betas"]
        for p, grad, m in zip(params, grads, exp_avgs, strict=True):
            g = grad.to(m.dtype)
            x = p.to(m.dtype)
            x = x * (1 - lr * wd)
            c = b1 * m + (1 - b1) * g
            x = x - lr * torch.sign(c)
            m.mul_(b2).add_(g, alpha=1 - b2)
            p.copy_(x)

    # -- "fast" on CPU: per-tensor in-place loop ------------------------------------------------

    def _loop(
        self,
        group: dict[str, Any],
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        exp_avgs: list[torch.Tensor],
    ) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        b1, b2 = group["betas"]
        scratch = self._scratch
        for p, grad, m in zip(params, grads, exp_avgs, strict=True):
            dtype, device, shape = m.dtype, p.device, p.shape
            x = scratch.working("param", p, dtype)
            g = scratch.working("grad", grad, dtype)
            s = scratch.get("update", shape, dtype, device)
            torch.lerp(m, g, 1 - b1, out=s)  # c = b1*m + (1-b1)*g
            # m <- b2*m + (1-b2)*g = lerp(m, c, (1-b2)/(1-b1)): reads m and c while they are
            # still in cache, instead of m and g again after the update pass.
            m.lerp_(s, (1 - b2) / (1 - b1))
            s.sign_()
            if device.type in _FUSED_SGD_DEVICES and (
                device.type != "cpu" or x.numel() >= PARALLEL_MIN_NUMEL
            ):
                # x <- x - lr*(s + wd*x) = (1 - lr*wd)*x - lr*sign(c), one pass over x and s.
                torch._fused_sgd_(
                    [x], [s], [],
                    weight_decay=wd, momentum=0.0, lr=lr, dampening=0.0,
                    nesterov=False, maximize=False, is_first_step=False,
                )  # fmt: skip
            else:
                if wd != 0:
                    x.mul_(1 - lr * wd)
                x.add_(s, alpha=-lr)
            if x is not p:
                p.copy_(x)

    # -- "fast" on CUDA: foreach kernels --------------------------------------------------------

    @staticmethod
    def _foreach(
        group: dict[str, Any],
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        exp_avgs: list[torch.Tensor],
    ) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        b1, b2 = group["betas"]
        for idx in group_by_device_dtype(range(len(params)), params).values():
            ps = [params[i] for i in idx]
            ms = [exp_avgs[i] for i in idx]
            dtype = ms[0].dtype
            low = ps[0].dtype != dtype
            xs = [p.to(dtype) for p in ps] if low else ps
            gs = [grads[i] if grads[i].dtype == dtype else grads[i].to(dtype) for i in idx]
            c = list(torch._foreach_lerp(ms, gs, 1 - b1))
            torch._foreach_sign_(c)
            if wd != 0:
                torch._foreach_mul_(xs, 1 - lr * wd)
            torch._foreach_add_(xs, c, alpha=-lr)
            torch._foreach_lerp_(ms, gs, 1 - b2)
            if low:
                torch._foreach_copy_(ps, xs)


# -- "fused" (and "fast" on CPU): optpilot's C kernel; torch.compile for other tensors ----------


def _kernels(work: list[_GroupWork]) -> None:
    """All groups' tensors in one call of optpilot's C kernel (``_cpu_kernels``)."""
    kernels = _cpu_kernels.load()
    assert kernels is not None  # _step_paths picks tensors for the kernels once loaded
    kernels.lion(
        [p for _, params, _, _ in work for p in params],
        [g for _, _, grads, _ in work for g in grads],
        [m for _, _, _, exp_avgs in work for m in exp_avgs],
        [h for group, params, _, _ in work for h in _lion_row(group) * len(params)],
        PARALLEL_MIN_NUMEL,
    )


def _lion_row(group: dict[str, Any]) -> list[float]:
    return [group["lr"], group["betas"][0], group["betas"][1], group["weight_decay"]]


def _compiled(work: list[_GroupWork]) -> None:
    """All groups in one compiled call."""
    tensors = [(params, grads, exp_avgs) for _, params, grads, exp_avgs in work]
    key = (
        "lion",
        tuple(tuple(tensor_signature(ts) for ts in group_ts) for group_ts in tensors),
    )
    rows = [_lion_row(group) for group, *_ in work]
    scalars = torch.tensor(rows, dtype=torch.float64, device=work[0][1][0].device)
    compiled_step(_lion_fused_body, key)(tensors, scalars)


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
