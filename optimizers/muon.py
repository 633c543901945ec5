"""Muon for hidden matrices, AdamW for everything else, in one optimizer.

torch.optim.Muon (torch >= 2.9) accepts 2-D parameters only, but a real model also has biases,
norms and convolution kernels. ``MuonAdamW`` splits each parameter group: 2-D tensors take torch's
Muon step (momentum, Newton-Schulz orthogonalisation, decoupled weight decay), the rest take
torch's AdamW step with ``aux_lr``. Both steps are torch's own functional kernels (wrapped, not
rewritten), so the numerics equal torch.optim.Muon / torch.optim.AdamW on the same tensors::

    matrices W:  B = mu*B + G;  O = NS5(G + mu*B if nesterov else B);  W = W*(1 - lr*wd) - lr*O
    other p:     AdamW(p; aux_lr, betas, eps, wd)

On CPU the Newton-Schulz iteration runs in fp32 (``_orthogonalize_fp32``), the same five-step
quintic as torch's: torch's kernel casts to bf16, which is the fast choice on accelerators but
has no fast matmul on most CPUs (measured: 140 s instead of ~5 s per step for 24 matrices of
816x816 on 2 cores). fp32 is also the more accurate of the two.

Reference: Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import _muon
from torch.optim.adamw import adamw

from optimizers.registry import ParamsT


class MuonAdamW(torch.optim.Optimizer):
    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.02,
        momentum: float = 0.95,
        weight_decay: float = 0.01,
        *,
        aux_lr: float = 3e-4,
        aux_betas: tuple[float, float] = (0.9, 0.95),
        aux_eps: float = 1e-8,
        nesterov: bool = True,
        ns_steps: int = _muon.DEFAULT_NS_STEPS,
    ) -> None:
        defaults: dict[str, Any] = {
            "lr": lr, "momentum": momentum, "weight_decay": weight_decay, "aux_lr": aux_lr,
            "aux_betas": aux_betas, "aux_eps": aux_eps, "nesterov": nesterov,
            "ns_steps": ns_steps,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            matrices: list[torch.Tensor] = []
            matrix_grads: list[torch.Tensor] = []
            buffers: list[torch.Tensor] = []
            others: list[torch.Tensor] = []
            other_grads: list[torch.Tensor] = []
            exp_avgs: list[torch.Tensor] = []
            exp_avg_sqs: list[torch.Tensor] = []
            steps: list[torch.Tensor] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("MuonAdamW does not support sparse gradients")
                state = self.state[p]
                if p.ndim == 2:
                    if not state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    matrices.append(p)
                    matrix_grads.append(p.grad)
                    buffers.append(state["momentum_buffer"])
                else:
                    if not state:
                        state["step"] = torch.tensor(0.0)
                        state["exp_avg"] = torch.zeros_like(p)
                        state["exp_avg_sq"] = torch.zeros_like(p)
                    others.append(p)
                    other_grads.append(p.grad)
                    exp_avgs.append(state["exp_avg"])
                    exp_avg_sqs.append(state["exp_avg_sq"])
                    steps.append(state["step"])
            if matrices and matrices[0].device.type == "cpu":
                _muon_fp32(matrices, matrix_grads, buffers, lr=group["lr"],
                           weight_decay=group["weight_decay"], momentum=group["momentum"],
                           nesterov=group["nesterov"], ns_steps=group["ns_steps"])
            elif matrices:
                _muon.muon(
                    matrices, matrix_grads, buffers, lr=group["lr"],
                    weight_decay=group["weight_decay"], momentum=group["momentum"],
                    nesterov=group["nesterov"],
                    ns_coefficients=(_muon.DEFAULT_A, _muon.DEFAULT_B, _muon.DEFAULT_C),
                    ns_steps=group["ns_steps"], eps=_muon.EPS, adjust_lr_fn=None,
                    has_complex=False,
                )
            if others:
                beta1, beta2 = group["aux_betas"]
                adamw(
                    others, other_grads, exp_avgs, exp_avg_sqs, [], steps, foreach=False,
                    amsgrad=False, beta1=beta1, beta2=beta2, lr=group["aux_lr"],
                    weight_decay=group["weight_decay"], eps=group["aux_eps"], maximize=False,
                )
        return loss


def _orthogonalize_fp32(update: torch.Tensor, ns_steps: int) -> torch.Tensor:
    """torch's quintic Newton-Schulz orthogonalisation (``_muon._zeropower_via_newtonschulz``),
    in fp32 instead of bf16."""
    a, b, c = _muon.DEFAULT_A, _muon.DEFAULT_B, _muon.DEFAULT_C
    x = update.float()
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=_muon.EPS)  # spectral norm <= 1
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def _muon_fp32(
    params: list[torch.Tensor], grads: list[torch.Tensor], buffers: list[torch.Tensor], *,
    lr: float, weight_decay: float, momentum: float, nesterov: bool, ns_steps: int,
) -> None:
    """torch's single-tensor Muon step with the orthogonalisation in fp32."""
    for param, grad, buf in zip(params, grads, buffers, strict=True):
        buf.lerp_(grad, 1 - momentum)
        update = grad.lerp(buf, momentum) if nesterov else buf
        ortho = _orthogonalize_fp32(update, ns_steps).to(param.dtype)
        param.mul_(1 - lr * weight_decay)
        param.add_(ortho, alpha=-_muon._adjust_lr(lr, None, param.shape))
