"""LAMB: layer-wise adaptive moments for large-batch training (You et al. 2020)."""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import torch

from optimizers import _cpu_kernels
from optimizers._base import (
    PARALLEL_MIN_NUMEL,
    GroupStep,
    OptpilotOptimizer,
    StepPaths,
    foreach_buckets,
    fused_adamw_direction,
    group_by_device_dtype,
    take,
    use_torch_fused,
)
from optimizers._checks import Implementation, check_betas, check_flag, check_number
from optimizers._compiled import PER_TENSOR_LOCALITY, run_compiled
from optimizers._scratch import ScratchBuffers, state_dtype
from optimizers.registry import ParamsT

__all__ = ["Lamb"]


class LambHyper(NamedTuple):
    """The scalars of a group's tensors at one step count (a group whose tensors have taken
    different numbers of steps has one record per count)."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    step: int  # t, 1-based
    bias_correction: bool
    trust_ratio: bool  # False: a plain Adam step (trust_ratio_on_decayed_only, no decay)
    trust_clip: bool
    clip: torch.Tensor | None  # max(1, G / max_grad_norm), or None: no gradient clipping

    def bias_corrections(self) -> tuple[float, float]:
        """``(1 - b1**t, 1 - b2**t)``, or ``(1, 1)`` without bias correction."""
        if not self.bias_correction:
            return 1.0, 1.0
        return 1.0 - self.beta1**self.step, 1.0 - self.beta2**self.step

    def row(self) -> list[float]:
        """``lr, b1, b2, eps, wd, 1/(1-b1**t), 1/sqrt(1-b2**t)`` for the C kernel and the compiled
        step (reciprocals: one division and one square root per element and pass)."""
        bc1, bc2 = self.bias_corrections()
        return [self.lr, self.beta1, self.beta2, self.eps, self.weight_decay, 1.0 / bc1,
                1.0 / math.sqrt(bc2)]  # fmt: skip


class Lamb(OptpilotOptimizer[LambHyper]):
    r"""LAMB: Adam's direction, rescaled per tensor by a trust ratio ``||p|| / ||u||``.

    For each parameter tensor ``p`` with gradient ``g`` at step ``t`` (You et al. 2020, Algorithm 2,
    with the identity scaling function ``phi``)::

        m = b1*m + (1-b1)*g                      v = b2*v + (1-b2)*g**2
        m_hat = m / (1 - b1**t)                  v_hat = v / (1 - b2**t)
        u = m_hat / (sqrt(v_hat) + eps) + weight_decay * p
        ratio = ||p|| / ||u||                    (1 where either norm is 0)
        p = p - lr * ratio * u

    Norms are Frobenius norms of the whole tensor. Defaults are the paper's: lr 1e-3, betas
    (0.9, 0.999), eps 1e-6, weight_decay 0.01. Variants seen in the wild are explicit flags (all
    off by default, so the default is the paper's form); every group may set its own:

    * ``bias_correction=False``: no ``1 - b**t`` corrections (``m_hat = m``, ``v_hat = v``), as in
      the paper's early arXiv versions.
    * ``max_grad_norm=c``: first divide every gradient by ``max(1, G / c)`` where ``G`` is the
      *global* L2 norm of all gradients of all groups (NVIDIA apex ``FusedLAMB``, whose default is
      ``c = 1.0``). Groups with ``max_grad_norm=None`` are not clipped.
    * ``trust_ratio_on_decayed_only=True``: tensors of groups with ``weight_decay == 0`` take a
      plain Adam step (``ratio = 1``), as apex ``FusedLAMB`` does unless ``use_nvlamb``; biases and
      norm weights are usually put in such a group.
    * ``trust_clip=True``: ``ratio = min(ratio, 1)`` (timm's ``Lamb(trust_clip=True)``).

    State per parameter: ``step`` (a Python int), ``exp_avg`` (m) and ``exp_avg_sq`` (v), kept in
    fp32 for fp16/bf16 parameters (whose math is done in fp32 and rounded once on write-back).

    ``implementation`` chooses how the step runs; all three give the same result up to rounding
    and share one ``state_dict`` layout, so a checkpoint of one loads into another:

    * ``"reference"``: the equations above, tensor by tensor, with temporaries. Slow; the oracle.
    * ``"fast"`` (default): the fastest path that needs no ``torch.compile``. On CPU, contiguous
      fp32 tensors go through the fused path's C kernel (below) where it can be built; the rest
      through a per-tensor loop that works in place on scratch buffers kept across steps (the
      Adam direction comes from torch's one-pass fused AdamW kernel applied to a scratch
      tensor), so a steady-state step allocates nothing, with tensors under ATen's grain size
      (biases) all together through the ``torch._foreach_*`` kernels. On CUDA those kernels,
      with ``torch._foreach_norm``, for every tensor. ``foreach=True``/``False`` forces the
      foreach kernels or the loop for every tensor.
    * ``"fused"``: opt-in; a single-pass step per tensor. Contiguous fp32 tensors on CPU go
      through optpilot's C kernel (:mod:`optimizers._cpu_kernels`, built with the system C
      compiler on first use and cached): one OpenMP region per step; per tensor one pass updates
      m and v, stores ``u`` in a scratch buffer and sums both norms, and a second pass over the
      same thread's share, still in its cache, applies the update. Everything else (CUDA, other
      dtypes, strided tensors) goes through ``torch.compile``: two generated loops per tensor
      (both norms, then the update), all groups compiled together once per structure (shapes,
      dtypes and devices of the parameters that have gradients, each group's static flags) on
      the first step; hyperparameters and bias corrections are passed as tensors, so schedules
      and the step count never recompile.

    References:
        You et al. 2020, "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
        ICLR 2020 (arXiv:1904.00962). NVIDIA apex ``FusedLAMB``; timm ``timm.optim.Lamb``.
    """

    _tensor_state = ("exp_avg", "exp_avg_sq")
    _group_fill: ClassVar[dict[str, Any]] = {
        "bias_correction": True, "max_grad_norm": None, "trust_ratio_on_decayed_only": False,
        "trust_clip": False,
    }  # fmt: skip

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        *,
        bias_correction: bool = True,
        max_grad_norm: float | None = None,
        trust_ratio_on_decayed_only: bool = False,
        trust_clip: bool = False,
        implementation: Implementation = "fast",
        foreach: bool | None = None,
    ) -> None:
        defaults: dict[str, Any] = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "bias_correction": bias_correction,
            "max_grad_norm": max_grad_norm,
            "trust_ratio_on_decayed_only": trust_ratio_on_decayed_only,
            "trust_clip": trust_clip,
        }
        super().__init__(params, defaults, implementation, foreach)

    def _validate_group(self, group: dict[str, Any]) -> None:
        check_number("lr", group["lr"], low=0.0)
        group["betas"] = check_betas(group["betas"])
        check_number("eps", group["eps"], low=0.0)
        check_number("weight_decay", group["weight_decay"], low=0.0)
        if group["max_grad_norm"] is not None:
            check_number("max_grad_norm", group["max_grad_norm"], low=0.0, low_inclusive=False)
        for flag in ("bias_correction", "trust_ratio_on_decayed_only", "trust_clip"):
            check_flag(flag, group[flag])

    def _init_state(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        dtype = state_dtype(param)
        state["step"] = 0
        for key in self._tensor_state:
            state[key] = torch.zeros_like(param, dtype=dtype, memory_format=torch.contiguous_format)

    # -- the step -------------------------------------------------------------------------------

    def _paths(self) -> StepPaths:
        return _PATHS

    def _group_steps(self) -> list[GroupStep[LambHyper]]:
        """Gradient clipping needs every group's gradients first; each tensor counts its own
        steps (``state["step"]``), so a group's tensors are split by step count."""
        gathered = [self._gather(group) for group in self.param_groups]
        clips = self._clip_divisors([grads for _, grads, _ in gathered])
        steps: list[GroupStep[LambHyper]] = []
        for group, (params, grads, states), clip in zip(
            self.param_groups, gathered, clips, strict=True
        ):
            by_count: dict[int, list[int]] = {}
            for i, state in enumerate(states):
                state["step"] += 1
                by_count.setdefault(state["step"], []).append(i)
            tensors = self._tensor_lists(params, grads, states)
            for count, idx in by_count.items():
                part = tensors if len(by_count) == 1 else [take(ts, idx) for ts in tensors]
                steps.append(GroupStep(part, self._group_hyper(group, count, clip)))
        return steps

    @staticmethod
    def _group_hyper(group: dict[str, Any], step: int, clip: torch.Tensor | None) -> LambHyper:
        b1, b2 = group["betas"]
        trust_ratio = not (group["trust_ratio_on_decayed_only"] and group["weight_decay"] == 0)
        return LambHyper(group["lr"], b1, b2, group["eps"], group["weight_decay"], step,
                         group["bias_correction"], trust_ratio, group["trust_clip"], clip)

    def _clip_divisors(self, grads: list[list[torch.Tensor]]) -> list[torch.Tensor | None]:
        """Per group, ``max(1, G / max_grad_norm)`` (G: global gradient norm), or None."""
        limits = [group["max_grad_norm"] for group in self.param_groups]
        every = [g for group_grads in grads for g in group_grads]
        if all(limit is None for limit in limits) or not every:
            return [None] * len(limits)
        total = global_grad_norm(
            every, None if self.implementation == "reference" else self._scratch
        )
        return [
            None if limit is None else torch.clamp(total / limit, min=1.0) for limit in limits
        ]


# -- "reference": the paper's equations ---------------------------------------------------------


def lamb_reference(
    params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor], hp: LambHyper,
) -> None:
    bc1, bc2 = hp.bias_corrections()
    for p, grad, m, v in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
        g = grad.to(m.dtype)
        if hp.clip is not None:
            g = g / hp.clip
        x = p.to(m.dtype)
        m.mul_(hp.beta1).add_(g, alpha=1 - hp.beta1)
        v.mul_(hp.beta2).add_(g * g, alpha=1 - hp.beta2)
        m_hat = m / bc1
        v_hat = v / bc2
        u = m_hat / (v_hat.sqrt() + hp.eps) + hp.weight_decay * x
        if not hp.trust_ratio:
            ratio = torch.ones((), dtype=x.dtype, device=x.device)
        else:
            p_norm = torch.linalg.vector_norm(x)
            u_norm = torch.linalg.vector_norm(u)
            ratio = torch.where(
                (p_norm > 0) & (u_norm > 0), p_norm / u_norm, torch.ones_like(p_norm)
            )
            if hp.trust_clip:
                ratio = torch.clamp(ratio, max=1.0)
        p.copy_(x - hp.lr * ratio * u)


# -- "fast" on CPU: per-tensor in-place loop on scratch buffers ---------------------------------


def lamb_loop(
    params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor], hp: LambHyper, *, scratch: ScratchBuffers,
) -> None:
    lr, beta1, beta2, eps, wd, step, bias_correction, trust_ratio, trust_clip, clip = hp
    bc1, bc2 = hp.bias_corrections()
    step_tensors: dict[torch.device, torch.Tensor] = {}
    for p, grad, m, v in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
        dtype, device, shape = m.dtype, p.device, p.shape
        x = scratch.working("param", p, dtype)
        if clip is None:
            g = scratch.working("grad", grad, dtype)
        elif grad.dtype == dtype:
            g = scratch.get("grad", shape, dtype, device)
            torch.div(grad, clip, out=g)
        else:
            g = scratch.working("grad", grad, dtype)
            g.div_(clip)
        s = scratch.get("update", shape, dtype, device)
        if bias_correction and use_torch_fused(m):
            # s = -u in the pass that updates m and v
            fused_adamw_direction(s, x, g, m, v, beta1=beta1, beta2=beta2, eps=eps,
                                  weight_decay=wd, step_tensors=step_tensors, step=step)
            scale = lr
        else:
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            torch.sqrt(v, out=s)
            if bc2 != 1.0:
                s.div_(math.sqrt(bc2))
            s.add_(eps)
            torch.div(m, s, out=s)
            if bc1 != 1.0:
                s.div_(bc1)
            if wd != 0:
                s.add_(x, alpha=wd)
            scale = -lr
        if not trust_ratio:
            x.add_(s, alpha=scale)
        else:
            ratio = _trust_ratio(_squared_norm(x), _squared_norm(s))
            if trust_clip:
                ratio.clamp_(max=1.0)
            x.addcmul_(s, ratio, value=scale)
        if x is not p:
            p.copy_(x)


# -- "fast" on CUDA (and small CPU tensors): foreach kernels ------------------------------------


def lamb_foreach(
    params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor], hp: LambHyper,
) -> None:
    lr, beta1, beta2, eps, weight_decay, _, bias_correction, trust_ratio, trust_clip, clip = hp
    bc1, bc2 = hp.bias_corrections()
    for bucket in foreach_buckets(params, grads, exp_avgs, exp_avg_sqs):
        ms, vs = bucket.states
        xs, gs = bucket.xs, bucket.grads
        if clip is not None:
            gs = list(torch._foreach_div(gs, clip))
        torch._foreach_lerp_(ms, gs, 1 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, gs, gs, 1 - beta2)
        denom = list(torch._foreach_sqrt(vs))
        if bias_correction:
            torch._foreach_div_(denom, math.sqrt(bc2))
        torch._foreach_add_(denom, eps)
        u = list(torch._foreach_div(ms, denom))
        if bias_correction:
            torch._foreach_div_(u, bc1)
        if weight_decay != 0:
            torch._foreach_add_(u, xs, alpha=weight_decay)
        if trust_ratio:
            p_norms = torch.stack(torch._foreach_norm(xs))
            u_norms = torch.stack(torch._foreach_norm(u))
            ratios = torch.where(
                (p_norms > 0) & (u_norms > 0), p_norms / u_norms, torch.ones_like(p_norms)
            )
            if trust_clip:
                ratios.clamp_(max=1.0)
            torch._foreach_mul_(u, list(ratios.unbind(0)))
        torch._foreach_add_(xs, u, alpha=-lr)
        bucket.write_back()


# -- "fused" (and "fast" on CPU): optpilot's C kernel; torch.compile for other tensors ----------


def lamb_kernels(work: list[GroupStep[LambHyper]], scratch: ScratchBuffers) -> None:
    """All groups' tensors in one call of optpilot's C kernel (``_cpu_kernels``)."""
    params, grads, exp_avgs, exp_avg_sqs = (
        [t for step in work for t in step.tensors[i]] for i in range(4)
    )
    hyper: list[float] = []
    flags: list[int] = []
    for step in work:
        h, n = step.hyper, len(step.tensors[0])
        clip_divisor = 1.0 if h.clip is None else float(h.clip)
        flag = 0
        if h.trust_ratio:
            flag = _cpu_kernels.TRUST_RATIO | (_cpu_kernels.TRUST_CLIP if h.trust_clip else 0)
        hyper += [*h.row(), clip_divisor] * n
        flags += [flag] * n
    kernels = _cpu_kernels.load()
    assert kernels is not None  # _step_paths picks tensors for the kernels once loaded
    buffer = scratch.get(
        "fused_update",
        torch.Size([_cpu_kernels.scratch_numel(params, PARALLEL_MIN_NUMEL)]),
        torch.float32,
        torch.device("cpu"),
    )
    kernels.lamb(params, grads, exp_avgs, exp_avg_sqs, hyper, flags, PARALLEL_MIN_NUMEL, buffer)


def lamb_compiled(work: list[GroupStep[LambHyper]]) -> None:
    """All groups in one compiled call.

    (Measured alternative, slower on CPU: large tensors one by one, a compiled pass storing
    ``u`` in a shared scratch buffer plus an eager ``addcmul_``; the call overhead and the
    extra pass cost more than recomputing ``u``.)"""
    static = tuple((step.hyper.trust_ratio, step.hyper.trust_clip) for step in work)
    clips = [step.hyper.clip for step in work]
    rows = [step.hyper.row() for step in work for _ in step.tensors[0]]
    run_compiled(_lamb_fused_body, [step.tensors for step in work], rows, clips, static,
                 static=(static, tuple(clip is not None for clip in clips)),
                 options=PER_TENSOR_LOCALITY)


def _lamb_fused_body(
    groups: list[tuple[list[torch.Tensor], ...]],
    scalars: torch.Tensor,
    clips: list[torch.Tensor | None],
    static: tuple[tuple[bool, bool], ...],
) -> None:
    """One LAMB step for all groups; traced by ``torch.compile`` (never run eagerly).

    ``groups[j]`` is ``(params, grads, exp_avgs, exp_avg_sqs)`` of group ``j``, ``static[j]`` its
    ``(trust_ratio, trust_clip)``, ``clips[j]`` its gradient divisor (or None); row ``i`` of
    ``scalars`` holds ``lr, b1, b2, eps, wd, 1/(1-b1**t), 1/sqrt(1-b2**t)`` for the ``i``-th
    tensor overall (reciprocals: one division and one square root per element and pass, which is
    what bounds this step on CPU). The update recomputes the Adam direction from the new moments
    instead of reusing ``u``, so inductor emits per tensor one reduction loop (both norms,
    moments not stored) and one update loop (moments and parameter stored), without a
    tensor-sized temporary.
    """
    i = 0
    for (params, grads, exp_avgs, exp_avg_sqs), clip, (trust_ratio, trust_clip) in zip(
        groups, clips, static, strict=True
    ):
        for p, grad, m, v in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
            sc = scalars[i].to(m.dtype)
            i += 1
            lr, b1, b2, eps, wd = sc[0], sc[1], sc[2], sc[3], sc[4]
            inv_bc1, inv_sqrt_bc2 = sc[5], sc[6]
            g = grad.to(m.dtype)
            if clip is not None:
                g = g / clip.to(m.dtype)
            x = p.to(m.dtype)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).add_((1 - b2) * g * g)
            if not trust_ratio:
                k = lr
            else:
                u = (m * inv_bc1) / (torch.sqrt(v) * inv_sqrt_bc2 + eps) + wd * x
                p_norm = torch.linalg.vector_norm(x)
                u_norm = torch.linalg.vector_norm(u)
                ratio = torch.where((p_norm > 0) & (u_norm > 0), p_norm / u_norm, 1.0)
                if trust_clip:
                    ratio = torch.clamp(ratio, max=1.0)
                k = lr * ratio
            adam = (m * inv_bc1) / (torch.sqrt(v) * inv_sqrt_bc2 + eps)
            p.copy_(x * (1 - k * wd) - k * adam)


def _squared_norm(x: torch.Tensor) -> torch.Tensor:
    """``||x||**2`` as a 0-dim tensor (BLAS dot on large contiguous CPU tensors: ~1.6x faster
    than vector_norm there)."""
    if x.device.type == "cpu" and x.numel() >= PARALLEL_MIN_NUMEL and x.is_contiguous():
        flat = x.view(-1)
        sq: torch.Tensor = torch.dot(flat, flat)
        return sq
    norm: torch.Tensor = torch.linalg.vector_norm(x)
    return norm.square()


def _trust_ratio(p_sq: torch.Tensor, u_sq: torch.Tensor) -> torch.Tensor:
    """``||p|| / ||u||`` from squared norms, 1 where either is 0 (no ``.item()``, no sync)."""
    return torch.where((p_sq > 0) & (u_sq > 0), (p_sq / u_sq).sqrt_(), torch.ones_like(p_sq))


def global_grad_norm(
    grads: list[torch.Tensor], scratch: ScratchBuffers | None = None
) -> torch.Tensor:
    """L2 norm of all ``grads`` together (fp32 or wider), on the first gradient's device.

    On CPU, fp16/bf16 gradients are widened into ``scratch`` (when given) rather than into a
    temporary per tensor.
    """
    device = grads[0].device
    squares: list[torch.Tensor] = []
    for (dev, dtype), idx in group_by_device_dtype(range(len(grads)), grads).items():
        bucket = [grads[i] for i in idx]
        wide = state_dtype(bucket[0])
        if dev.type != "cpu":
            norms = torch._foreach_norm(bucket, 2, dtype=wide)
            squares.extend(n.square().to(device) for n in norms)
            continue
        for g in bucket:
            if dtype != wide and scratch is not None:
                buf = scratch.get("grad", g.shape, wide, dev)
                buf.copy_(g)
                g = buf
            squares.append(_squared_norm(g.to(wide)).to(device))
    dtype = squares[0].dtype
    for part in squares[1:]:
        dtype = torch.promote_types(dtype, part.dtype)
    total: torch.Tensor = torch.stack([sq.to(dtype) for sq in squares]).sum().sqrt()
    return total


_PATHS = StepPaths(reference=lamb_reference, foreach=lamb_foreach, loop=lamb_loop,
                   kernels=lamb_kernels, compiled=lamb_compiled)
