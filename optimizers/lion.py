"""Lion (Chen et al. 2023). Initial reference implementation; fast paths to follow."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from optimizers.registry import ParamsT

Implementation = Literal["reference", "fast", "fused"]


class Lion(torch.optim.Optimizer):
    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        implementation: Implementation = "fast",
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.implementation = implementation

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lion does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                m = state["exp_avg"]
                g = p.grad.float()
                p32 = p.float()
                p32.mul_(1 - lr * wd)
                c = b1 * m + (1 - b1) * g
                p32.add_(torch.sign(c), alpha=-lr)
                m.mul_(b2).add_(g, alpha=1 - b2)
                p.copy_(p32)
        return loss
