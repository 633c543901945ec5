"""MuonAdamW's CPU path (Newton-Schulz in fp32) against torch's Muon and an fp64 reference."""

from __future__ import annotations

import pytest
import torch

import optimizers

pytestmark = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch without Muon")


def newton_schulz_fp64(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Jordan et al.'s quintic iteration, written out in fp64."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.double()
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    out: torch.Tensor = x.T if tall else x
    return out


@pytest.mark.parametrize("shape", [(24, 16), (16, 24), (20, 20)])
def test_cpu_step_equals_the_algorithm_in_fp64(shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(shape, generator=gen))
    w0 = w.detach().double().clone()
    buf = torch.zeros(shape, dtype=torch.float64)
    opt = optimizers.create("muon", [w], lr=0.02, momentum=0.95, weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(shape, generator=gen)
        w.grad = g
        opt.step()
        buf = 0.95 * buf + 0.05 * g.double()  # lerp with 1 - momentum
        update = g.double() + 0.95 * (buf - g.double())  # nesterov: grad.lerp(buf, momentum)
        scale = max(1.0, shape[0] / shape[1]) ** 0.5
        w0 = w0 * (1 - 0.02 * 0.1) - 0.02 * scale * newton_schulz_fp64(update)
    torch.testing.assert_close(w.detach().double(), w0, rtol=1e-5, atol=1e-5)


def test_cpu_step_agrees_with_torch_muon_to_bf16_precision() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.nn.Parameter(torch.randn(32, 48, generator=gen))
    b = torch.nn.Parameter(a.detach().clone())
    ours = optimizers.create("muon", [a], lr=0.02, momentum=0.95, weight_decay=0.0)
    theirs = torch.optim.Muon([b], lr=0.02, momentum=0.95, weight_decay=0.0)
    start = a.detach().clone()
    for _ in range(3):
        g = torch.randn(32, 48, generator=gen)
        a.grad, b.grad = g, g.clone()
        ours.step()
        theirs.step()  # type: ignore[no-untyped-call]
    moved_ours, moved_theirs = a.detach() - start, b.detach() - start
    # torch orthogonalises in bf16 (8 bits of mantissa): the same step to about 1%
    rel = float((moved_ours - moved_theirs).norm() / moved_theirs.norm())
    assert rel < 2e-2, rel
