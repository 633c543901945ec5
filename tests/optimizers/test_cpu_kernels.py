"""optpilot's C kernels behind LAMB's and Lion's ``"fused"`` and default ``"fast"`` paths on CPU:
building, caching, falling back, and the multi-threaded paths (shared tensors, scratch halves,
thread-ordered sums) against the reference implementation."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from optimizers import Lamb, Lion, ScheduleFreeAdamW, ScheduleFreeSGD, _cpu_kernels
from optimizers._base import PARALLEL_MIN_NUMEL, cpu_kernel_split
from optimizers._checks import Implementation
from tests.optimizers.test_lamb_lion import assert_rel_close


@pytest.fixture(autouse=True)
def fresh_kernels(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts from an unloaded library and the kernels enabled."""
    monkeypatch.setenv("OPTPILOT_CPU_KERNELS", "1")
    _cpu_kernels.reset()
    yield
    _cpu_kernels.reset()


def test_build_compiles_once_then_reuses_the_cached_library(tmp_path: Path) -> None:
    library = _cpu_kernels.build(tmp_path)
    assert library.parent == tmp_path and library.suffix == ".so"
    built = library.stat().st_mtime_ns
    assert _cpu_kernels.build(tmp_path) == library
    assert library.stat().st_mtime_ns == built  # found, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [library.name]  # no leftovers
    kernels = _cpu_kernels.CpuKernels(library)
    assert kernels.path == library


def test_cache_location_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPTPILOT_KERNEL_CACHE", str(tmp_path / "k"))
    assert _cpu_kernels.cache_dir() == tmp_path / "k"
    monkeypatch.delenv("OPTPILOT_KERNEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _cpu_kernels.cache_dir() == tmp_path / "xdg" / "optpilot" / "kernels"


def test_without_a_compiler_the_fused_step_warns_once_and_uses_torch_compile(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("OPTPILOT_KERNEL_CACHE", str(tmp_path / "empty"))
    params = [torch.zeros(4)]
    with pytest.warns(RuntimeWarning, match="cannot build the CPU kernels.*no-such-cc"):
        assert cpu_kernel_split(params, params) == ([], [0])
    assert cpu_kernel_split(params, params) == ([], [0])  # no second attempt, no second warning


def test_without_a_compiler_the_fast_path_quietly_keeps_its_eager_loop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("OPTPILOT_KERNEL_CACHE", str(tmp_path / "empty"))
    p = torch.ones(SHARED, requires_grad=True)
    opt = Lion([p], lr=0.1)
    p.grad = torch.ones(SHARED)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default path does not warn
        opt.step()
    assert opt._fast_split([p]) == ([], [], [0])  # the per-tensor loop
    torch.testing.assert_close(p.detach(), torch.full((SHARED,), 0.9))


def test_a_failing_compiler_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    failing = tmp_path / "cc"
    failing.write_text("#!/bin/sh\necho 'cc: error: broken toolchain' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("CC", str(failing))
    with pytest.raises(RuntimeError, match="broken toolchain"):
        _cpu_kernels.build(tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())  # nothing half-written is left behind


def test_kernels_refuse_a_wrong_number_of_hyperparameters() -> None:
    kernels = _cpu_kernels.load()
    assert kernels is not None
    p = [torch.zeros(8)]
    with pytest.raises(ValueError, match="4 hyperparameters per tensor"):
        kernels.lion(p, p, p, [1e-4, 0.9, 0.99], PARALLEL_MIN_NUMEL)
    with pytest.raises(ValueError, match="8 hyperparameters per tensor"):
        kernels.lamb(p, p, p, p, [1e-3] * 9, [1], PARALLEL_MIN_NUMEL, torch.empty(0))
    with pytest.raises(ValueError, match="7 hyperparameters per tensor"):
        kernels.schedulefree(p, p, p, p, [0.1] * 4, PARALLEL_MIN_NUMEL)
    with pytest.raises(ValueError, match="4 hyperparameters per tensor"):
        kernels.schedulefree(p, p, p, None, [0.1] * 7, PARALLEL_MIN_NUMEL)
    assert torch.equal(p[0], torch.zeros(8))  # nothing ran


def test_environment_switch_and_eligibility(monkeypatch: pytest.MonkeyPatch) -> None:
    contiguous = torch.zeros(6, 5)
    strided = torch.zeros(5, 6).t()
    wide = torch.zeros(3, dtype=torch.float64)
    half = torch.zeros(3, dtype=torch.bfloat16)
    params = [contiguous, strided, wide, half]
    assert [_cpu_kernels.eligible(p) for p in params] == [True, False, False, False]
    assert cpu_kernel_split(params, params) == ([0], [1, 2, 3])
    monkeypatch.setenv("OPTPILOT_CPU_KERNELS", "0")
    assert cpu_kernel_split(params, params) == ([], [0, 1, 2, 3])


# ------------------------------------------------------------------------------------------------
# Numerics with two threads: several shared tensors (>= PARALLEL_MIN_NUMEL) in a row, so that both
# scratch halves are used and reused, in groups of every mode


SHARED = PARALLEL_MIN_NUMEL + 1000  # not a multiple of the kernels' block size
SHAPES = [(SHARED,), (7, 11), (SHARED + 4096,), (SHARED // 2 + 3, 2), (5,), (SHARED,)]


def _params(dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]


def _grads(steps: int) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(4)
    return [[torch.randn(s, generator=gen, dtype=torch.float64).float() for s in SHAPES]
            for _ in range(steps)]  # fmt: skip


def _lamb_groups(params: list[torch.Tensor]) -> list[dict[str, Any]]:
    """Trust ratio, a plain Adam group (no decay) between trust-ratio tensors, trust clipping,
    gradient clipping: every kind of tensor the LAMB kernel distinguishes."""
    return [
        {"params": params[:2], "max_grad_norm": 1.0},
        {"params": params[2:3], "weight_decay": 0.0, "trust_ratio_on_decayed_only": True},
        {"params": params[3:5], "trust_clip": True, "lr": 3e-3},
        {"params": params[5:], "bias_correction": False},
    ]


def _run(build: Any, grouping: Any, steps: int = 15, threads: int = 2) -> list[torch.Tensor]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        params = [p.clone().requires_grad_() for p in _params()]
        opt = build(grouping(params))
        for grads in _grads(steps):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            opt.step()
        return [p.detach().clone() for p in params]
    finally:
        torch.set_num_threads(before)


def _lion_groups(params: list[torch.Tensor]) -> list[dict[str, Any]]:
    return [
        {"params": params[:3], "weight_decay": 0.5, "lr": 1e-3},
        {"params": params[3:], "betas": (0.95, 0.98), "lr": 3e-4},
    ]


def _schedulefree_groups(params: list[torch.Tensor]) -> list[dict[str, Any]]:
    """Warm-up, weight decay and polynomial averaging in one group, defaults in the other."""
    return [
        {"params": params[:3], "weight_decay": 0.1, "warmup_steps": 5, "r": 0.5, "lr": 1e-2},
        {"params": params[3:]},
    ]


def _schedulefree_sgd_groups(params: list[torch.Tensor]) -> list[dict[str, Any]]:
    return [
        {"params": params[:3], "weight_decay": 1e-3, "warmup_steps": 5, "lr": 0.05},
        {"params": params[3:], "momentum": 0.95, "lr": 0.1},
    ]


KERNEL_OPTIMIZERS = [(Lamb, _lamb_groups), (Lion, _lion_groups),
                     (ScheduleFreeAdamW, _schedulefree_groups),
                     (ScheduleFreeSGD, _schedulefree_sgd_groups)]


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize(("cls", "grouping"), KERNEL_OPTIMIZERS,
                         ids=["lamb", "lion", "schedulefree_adamw", "schedulefree_sgd"])
def test_kernels_match_reference_and_repeat_exactly(cls: Any, grouping: Any, threads: int) -> None:
    """The default path (foreach=None) and the fused path both run the kernels here."""
    assert _cpu_kernels.load() is not None
    reference = _run(lambda g: cls(g, implementation="reference"), grouping)
    fused = _run(lambda g: cls(g, implementation="fused"), grouping, threads=threads)
    assert_rel_close(fused, reference, 1e-5)
    fast = _run(lambda g: cls(g), grouping, threads=threads)
    assert all(torch.equal(a, b) for a, b in zip(fused, fast, strict=True))
    again = _run(lambda g: cls(g, implementation="fused"), grouping, threads=threads)
    assert all(torch.equal(a, b) for a, b in zip(fused, again, strict=True))


def test_lion_kernel_treats_nan_like_torch_sign() -> None:
    """torch.sign(NaN) is 0 on CPU: the entry only decays while its momentum turns NaN."""
    results = []
    for impl in ("reference", "fused"):
        p = torch.ones(SHARED, requires_grad=True)
        opt = Lion([p], lr=0.1, weight_decay=0.5, implementation=impl)
        p.grad = torch.zeros(SHARED)
        p.grad[[3, SHARED - 2]] = float("nan")
        opt.step()
        results.append((p.detach().clone(), opt.state[p]["exp_avg"].clone()))
    (p_ref, m_ref), (p_fused, m_fused) = results
    torch.testing.assert_close(p_fused, p_ref, rtol=0, atol=0)
    torch.testing.assert_close(m_fused, m_ref, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(m_fused).nonzero().flatten().tolist() == [3, SHARED - 2]


def test_kernels_bump_the_autograd_version_of_parameters() -> None:
    w = torch.randn(SHARED, requires_grad=True)
    loss = (w * w).sum()  # saves w for backward
    w.grad = torch.ones(SHARED)
    Lion([w], implementation="fused").step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()  # type: ignore[no-untyped-call]


@pytest.mark.slow
def test_one_optimizer_mixes_kernel_and_compiled_tensors() -> None:
    """A strided parameter and an fp64 one go through torch.compile, the others through the C
    kernel, in the same step; all follow the reference."""

    def params() -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(5)
        return [
            torch.randn(SHARED, generator=gen),
            torch.randn(40, 30, generator=gen).t(),
            torch.randn(33, generator=gen, dtype=torch.float64),
            torch.randn(17, generator=gen),
        ]

    def run(impl: Implementation, cls: type[Lamb] | type[Lion]) -> list[torch.Tensor]:
        ps = [p.clone().requires_grad_() for p in params()]
        assert not ps[1].is_contiguous()
        groups: list[dict[str, Any]] = [{"params": ps[:2]}, {"params": ps[2:], "lr": 2e-3}]
        opt = cls(groups, implementation=impl)
        gen = torch.Generator().manual_seed(6)
        for _ in range(10):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            opt.step()
        return [p.detach() for p in ps]

    for cls in (Lamb, Lion):
        assert_rel_close(run("fused", cls), run("reference", cls), 1e-5)


@pytest.mark.parametrize(("cls", "grouping"), KERNEL_OPTIMIZERS[2:],
                         ids=["schedulefree_adamw", "schedulefree_sgd"])
def test_schedule_free_falls_back_to_its_loop_when_the_kernels_fail_to_compile(
    cls: Any, grouping: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A compiler that fails: the default path runs its per-tensor loop (large tensors) and
    foreach ops (small ones) without a warning, and follows the reference as the kernels do."""
    reference = _run(lambda g: cls(g, implementation="reference"), grouping)
    with_kernels = _run(lambda g: cls(g), grouping)
    failing = tmp_path / "cc"
    failing.write_text("#!/bin/sh\necho 'cc: error: broken toolchain' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("CC", str(failing))
    monkeypatch.setenv("OPTPILOT_KERNEL_CACHE", str(tmp_path / "empty"))
    _cpu_kernels.reset()
    params = _params()
    opt = cls(grouping([p.clone().requires_grad_() for p in params]))
    shared = [i for i, p in enumerate(params) if p.numel() >= PARALLEL_MIN_NUMEL]
    assert opt._fast_split(params, params, params) == (
        [], [i for i in range(len(params)) if i not in shared], shared)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default path does not warn
        fallback = _run(lambda g: cls(g), grouping)
    assert _cpu_kernels.load(warn=False) is None
    assert_rel_close(fallback, reference, 1e-5)
    assert_rel_close(with_kernels, reference, 1e-5)


@pytest.mark.slow
def test_schedule_free_fused_warns_and_compiles_when_the_kernels_fail(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("OPTPILOT_KERNEL_CACHE", str(tmp_path / "empty"))
    reference = _run(lambda g: ScheduleFreeSGD(g, implementation="reference"),
                     _schedulefree_sgd_groups, steps=5)
    with pytest.warns(RuntimeWarning, match="cannot build the CPU kernels.*torch.compile"):
        fused = _run(lambda g: ScheduleFreeSGD(g, implementation="fused"),
                     _schedulefree_sgd_groups, steps=5)
    assert_rel_close(fused, reference, 1e-5)
