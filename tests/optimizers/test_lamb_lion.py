"""optpilot's LAMB and Lion: every implementation against the papers' equations.

The oracles below (``paper_lamb``, ``paper_lion``) are written from REFERENCE.md / the papers with
plain float64 torch math on cloned tensors, independent of ``optimizers``. The 1e-6 tolerance is
shown to be real: deliberately wrong versions of the equations fall outside it.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import torch

import optimizers
from optimizers import Lamb, Lion, _compiled, _cpu_kernels
from optimizers._base import PARALLEL_MIN_NUMEL
from optimizers._checks import Implementation

# Mixed shapes; the last weight is large enough for the multi-threaded fast-path kernels
# (>= PARALLEL_MIN_NUMEL elements), the last bias starts at zero (||p|| = 0: trust ratio 1).
WEIGHT_SHAPES: tuple[tuple[int, ...], ...] = ((5, 3), (4, 3, 2), (33, 17), (192, 192))
BIAS_SHAPES: tuple[tuple[int, ...], ...] = ((7,), (17,))
STEPS = 100
RTOL = 1e-6

GroupSpec = dict[str, Any]
Params = list[torch.Tensor]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a busy 2-core machine every parallel region of a multi-threaded op
    can wait a scheduler quantum for a descheduled thread, which made this file 5x slower. The
    code paths under test depend on tensor sizes, not on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_shapes_cover_large_tensor_path() -> None:
    assert max(math.prod(s) for s in WEIGHT_SHAPES) >= PARALLEL_MIN_NUMEL


@pytest.mark.parametrize("optimizer", [Lamb, Lion])
def test_fast_path_on_cpu_splits_between_kernels_foreach_and_loop(
    optimizer: type[Lamb | Lion], monkeypatch: pytest.MonkeyPatch
) -> None:
    weights, biases = make_params(torch.float32)
    params = weights + biases  # (192, 192) is the only one at or above the grain size
    large = [i for i, p in enumerate(params) if p.numel() >= PARALLEL_MIN_NUMEL]
    small = [i for i in range(len(params)) if i not in large]
    assert large == [3]
    every = list(range(6))
    strided = [*params[:5], params[5].repeat(2)[::2]]  # stride 2: not kernel-eligible
    for kernels, foreach, tensors, expected in (
        ("1", None, params, (every, [], [])),
        ("1", None, strided, ([0, 1, 2, 3, 4], [5], [])),
        ("0", None, params, ([], small, large)),
        ("1", False, params, ([], [], every)),
        ("1", True, params, ([], every, [])),
    ):
        monkeypatch.setenv("OPTPILOT_CPU_KERNELS", kernels)
        opt = optimizer([torch.nn.Parameter(p) for p in params], foreach=foreach)
        assert opt._fast_split(tensors) == expected


def make_params(dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[Params, Params]:
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in WEIGHT_SHAPES]
    biases = [torch.randn(BIAS_SHAPES[0], generator=gen, dtype=torch.float64).to(dtype),
              torch.zeros(BIAS_SHAPES[1], dtype=dtype)]
    return weights, biases


def make_grads(steps: int, seed: int = 1, scale: float = 1.0) -> list[list[torch.Tensor]]:
    """Per step, float64 gradients for weights then biases (the same stream for every run)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = WEIGHT_SHAPES + BIAS_SHAPES
    return [[torch.randn(s, generator=gen, dtype=torch.float64) * scale for s in shapes]
            for _ in range(steps)]


Builder = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]
# Splits (weights, biases) into parameter groups, keeping the order weights then biases.
Grouping = Callable[[Params, Params], list[dict[str, Any]]]


def run(
    build: Builder,
    weight_hp: GroupSpec,
    bias_hp: GroupSpec,
    grads: Sequence[Sequence[torch.Tensor]],
    dtype: torch.dtype = torch.float64,
    params: tuple[Params, Params] | None = None,
    grouping: Grouping | None = None,
) -> tuple[Params, torch.optim.Optimizer]:
    """Final parameters after one step per entry of ``grads``. Two groups (weights with
    ``weight_hp``, biases with ``bias_hp``) unless ``grouping`` says otherwise."""
    weights, biases = params if params is not None else make_params(dtype)
    weights = [w.clone().requires_grad_() for w in weights]
    biases = [b.clone().requires_grad_() for b in biases]
    if grouping is None:
        opt = build([{"params": weights, **weight_hp}, {"params": biases, **bias_hp}])
    else:
        opt = build(grouping(weights, biases))
    flat = weights + biases
    for step_grads in grads:
        for p, g in zip(flat, step_grads, strict=True):
            p.grad = g.to(dtype)
        opt.step()
    return [p.detach().clone() for p in flat], opt


def assert_rel_close(actual: Params, expected: Params, rtol: float) -> None:
    """Every element within ``rtol`` relative to itself or to the tensor's largest entry (an
    element that crosses zero is judged on the tensor's scale)."""
    for a, e in zip(actual, expected, strict=True):
        scale = float(e.double().abs().max())
        torch.testing.assert_close(a.double(), e.double(), rtol=rtol, atol=rtol * scale)


def rel_close(actual: Params, expected: Params, rtol: float) -> bool:
    try:
        assert_rel_close(actual, expected, rtol)
    except AssertionError:
        return False
    return True


# ------------------------------------------------------------------------------------------------
# Independent oracles (float64, the papers' equations)

LAMB_DEFAULTS: GroupSpec = {
    "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.01,
    "bias_correction": True, "max_grad_norm": None, "trust_ratio_on_decayed_only": False,
    "trust_clip": False,
}  # fmt: skip


def paper_lamb(
    groups: list[tuple[Params, GroupSpec]],
    grads: Sequence[Sequence[torch.Tensor]],
    bug: str | None = None,
) -> Params:
    """You et al. 2020 (+ documented variants), float64, one tensor at a time."""
    params = [[p.double().clone() for p in ps] for ps, _ in groups]
    hps = [{**LAMB_DEFAULTS, **hp} for _, hp in groups]
    ms = [[torch.zeros_like(p) for p in ps] for ps in params]
    vs = [[torch.zeros_like(p) for p in ps] for ps in params]
    for t, step_grads in enumerate(grads, start=1):
        it = iter(step_grads)
        gs = [[next(it).double() for _ in ps] for ps in params]
        global_norm = math.sqrt(sum(float((g * g).sum()) for group in gs for g in group))
        for ps, group_grads, group_m, group_v, hp in zip(params, gs, ms, vs, hps, strict=True):
            b1, b2 = hp["betas"]
            lr, eps, wd = hp["lr"], hp["eps"], hp["weight_decay"]
            for i, (p, g, m, v) in enumerate(zip(ps, group_grads, group_m, group_v, strict=True)):
                if hp["max_grad_norm"] is not None:
                    g = g / max(1.0, global_norm / hp["max_grad_norm"])
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                group_m[i], group_v[i] = m, v
                if hp["bias_correction"] and bug != "no_bias_correction":
                    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
                else:
                    m_hat, v_hat = m, v
                adam = m_hat / (torch.sqrt(v_hat) + eps)
                u = adam + wd * p
                if hp["trust_ratio_on_decayed_only"] and wd == 0:
                    ratio = 1.0
                else:
                    p_norm = float(torch.sqrt((p * p).sum()))
                    u_for_norm = adam if bug == "u_norm_without_decay" else u
                    u_norm = float(torch.sqrt((u_for_norm * u_for_norm).sum()))
                    ratio = p_norm / u_norm if p_norm > 0 and u_norm > 0 else 1.0
                    if hp["trust_clip"]:
                        ratio = min(ratio, 1.0)
                ps[i] = p - lr * ratio * u
    return [p for ps in params for p in ps]


def paper_lion(
    groups: list[tuple[Params, GroupSpec]],
    grads: Sequence[Sequence[torch.Tensor]],
    bug: str | None = None,
) -> Params:
    """Chen et al. 2023, Algorithm 2, float64."""
    params = [[p.double().clone() for p in ps] for ps, _ in groups]
    ms = [[torch.zeros_like(p) for p in ps] for ps in params]
    for step_grads in grads:
        it = iter(step_grads)
        for ps, group_m, (_, hp) in zip(params, ms, groups, strict=True):
            lr, wd = hp["lr"], hp.get("weight_decay", 0.0)
            b1, b2 = hp.get("betas", (0.9, 0.99))
            for i, p in enumerate(ps):
                g, m = next(it).double(), group_m[i]
                if bug == "momentum_first":
                    m = b2 * m + (1 - b2) * g
                p = p * (1 - lr * wd)
                c = b1 * m + (1 - b1) * g
                ps[i] = p - lr * torch.sign(c)
                group_m[i] = b2 * m + (1 - b2) * g if bug != "momentum_first" else m
    return [p for ps in params for p in ps]


def lamb_builder(impl: Implementation, foreach: bool | None = None, **flags: Any) -> Builder:
    return lambda groups: Lamb(groups, implementation=impl, foreach=foreach, **flags)


def lion_builder(impl: Implementation, foreach: bool | None = None) -> Builder:
    return lambda groups: Lion(groups, implementation=impl, foreach=foreach)


# (implementation, foreach) of the paths without torch.compile: reference, CPU loop, foreach
# kernels, and the default choice. On CPU that is optpilot's C kernels for fp32 tensors, and for
# others (the float64 of the paper tests, bf16) the loop for large tensors and the foreach kernels
# for small ones.
EAGER: list[tuple[Implementation, bool | None]] = [
    ("reference", None), ("fast", False), ("fast", True), ("fast", None),
]

LAMB_VARIANTS: list[dict[str, Any]] = [
    {},
    {"bias_correction": False},
    {"max_grad_norm": 1.0},  # clipping active (global norm ~200)
    {"max_grad_norm": 1e4},  # clipping inactive
    {"trust_ratio_on_decayed_only": True},
    {"trust_clip": True},
    {"max_grad_norm": 1.0, "trust_ratio_on_decayed_only": True},  # NVIDIA FusedLAMB
    {"max_grad_norm": 1.0, "trust_ratio_on_decayed_only": True, "trust_clip": True},
    {"bias_correction": False, "trust_clip": True},
]
# The bias group has its own lr, betas and eps, and no weight decay.
LAMB_BIAS_HP: GroupSpec = {"lr": 2e-3, "betas": (0.8, 0.99), "eps": 1e-8, "weight_decay": 0.0}


# ------------------------------------------------------------------------------------------------
# LAMB: eager implementations vs the paper (float64, 100 steps)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("flags", LAMB_VARIANTS, ids=lambda f: ",".join(f) or "paper")
def test_lamb_matches_paper(flags: dict[str, Any], weight_decay: float) -> None:
    grads = make_grads(STEPS)
    weights, biases = make_params()
    weight_hp = {"weight_decay": weight_decay}
    expected = paper_lamb([(weights, {**flags, **weight_hp}), (biases, {**flags, **LAMB_BIAS_HP})],
                          grads)
    for impl, foreach in EAGER:
        actual, _ = run(lamb_builder(impl, foreach, **flags), weight_hp, LAMB_BIAS_HP, grads)
        assert_rel_close(actual, expected, RTOL)


@pytest.mark.parametrize("bug", ["no_bias_correction", "u_norm_without_decay"])
def test_lamb_tolerance_detects_wrong_equations(bug: str) -> None:
    grads = make_grads(STEPS)
    weights, biases = make_params()
    groups = [(weights, {}), (biases, LAMB_BIAS_HP)]
    actual, _ = run(lamb_builder("fast"), {}, LAMB_BIAS_HP, grads)
    assert rel_close(actual, paper_lamb(groups, grads), RTOL)
    assert not rel_close(actual, paper_lamb(groups, grads, bug=bug), RTOL)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("flags", LAMB_VARIANTS, ids=lambda f: ",".join(f) or "paper")
def test_lamb_fast_matches_reference_in_fp32(flags: dict[str, Any], weight_decay: float) -> None:
    """fp32 runs the C kernels with foreach=None (the paper tests above are float64, which the
    kernels leave to the eager paths)."""
    grads = make_grads(STEPS)
    weight_hp = {"weight_decay": weight_decay}
    reference, _ = run(lamb_builder("reference", **flags), weight_hp, LAMB_BIAS_HP, grads,
                       dtype=torch.float32)  # fmt: skip
    assert _cpu_kernels.load() is not None
    for foreach in (False, True, None):
        fast, _ = run(lamb_builder("fast", foreach, **flags), weight_hp, LAMB_BIAS_HP, grads,
                      dtype=torch.float32)  # fmt: skip
        assert_rel_close(fast, reference, 1e-5)


# ------------------------------------------------------------------------------------------------
# Lion: eager implementations vs the paper (float64, 100 steps)

LION_BIAS_HP: GroupSpec = {"lr": 3e-4, "betas": (0.95, 0.98), "weight_decay": 0.0}


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_lion_matches_paper(weight_decay: float) -> None:
    grads = make_grads(STEPS)
    weights, biases = make_params()
    weight_hp = {"lr": 1e-3, "weight_decay": weight_decay}
    expected = paper_lion([(weights, weight_hp), (biases, LION_BIAS_HP)], grads)
    for impl, foreach in EAGER:
        actual, _ = run(lion_builder(impl, foreach), weight_hp, LION_BIAS_HP, grads)
        assert_rel_close(actual, expected, RTOL)
    wrong = paper_lion([(weights, weight_hp), (biases, LION_BIAS_HP)], grads, bug="momentum_first")
    assert not rel_close(actual, wrong, RTOL)


def test_lion_fast_matches_reference_in_fp32() -> None:
    grads = make_grads(STEPS)
    hp = {"lr": 1e-3, "weight_decay": 0.5}
    reference, _ = run(lion_builder("reference"), hp, LION_BIAS_HP, grads, dtype=torch.float32)
    assert _cpu_kernels.load() is not None  # foreach=None: the C kernels
    for foreach in (False, True, None):
        fast, _ = run(lion_builder("fast", foreach), hp, LION_BIAS_HP, grads, dtype=torch.float32)
        assert_rel_close(fast, reference, 1e-5)


def test_lion_zero_momentum_and_gradient_only_decays() -> None:
    for impl in ("reference", "fast"):
        p = torch.full((40000,), 2.0, requires_grad=True)
        opt = Lion([p], lr=0.1, weight_decay=0.5, implementation=impl)
        p.grad = torch.zeros_like(p)
        opt.step()
        torch.testing.assert_close(p.detach(), torch.full_like(p, 2.0 * (1 - 0.05)))


# ------------------------------------------------------------------------------------------------
# Fused vs reference, fp32, 20 steps: optpilot's CPU kernels, and torch.compile (which runs
# everything that the kernels do not: CUDA, other dtypes, strided tensors)

FUSED_BACKENDS = [
    pytest.param("cpu kernels", id="cpu-kernels"),
    pytest.param("torch.compile", id="torch-compile", marks=pytest.mark.slow),
]


@pytest.fixture
def fused_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Selects the backend of ``implementation="fused"`` for CPU fp32 tensors."""
    backend: str = request.param
    monkeypatch.setenv("OPTPILOT_CPU_KERNELS", "1" if backend == "cpu kernels" else "0")
    if backend == "cpu kernels":
        assert _cpu_kernels.load() is not None, "the CPU kernels must build on this machine"
    return backend


def lamb_fused_groups(weights: Params, biases: Params) -> list[dict[str, Any]]:
    """Every variant flag in one optimizer (one compile): paper form, clipped + trust-clipped
    trust ratio, and NVIDIA's plain Adam step for an undecayed group."""
    return [
        {"params": weights[:2]},
        {"params": weights[2:], "max_grad_norm": 1.0, "trust_clip": True},
        {"params": biases, **LAMB_BIAS_HP, "max_grad_norm": 1.0,
         "trust_ratio_on_decayed_only": True},
    ]


@pytest.mark.parametrize("fused_backend", FUSED_BACKENDS, indirect=True)
def test_lamb_fused_matches_reference(fused_backend: str) -> None:
    grads = make_grads(20)
    reference, _ = run(lamb_builder("reference"), {}, {}, grads, dtype=torch.float32,
                       grouping=lamb_fused_groups)
    fused, _ = run(lamb_builder("fused"), {}, {}, grads, dtype=torch.float32,
                   grouping=lamb_fused_groups)
    assert_rel_close(fused, reference, 1e-5)
    weights, biases = make_params()
    groups = lamb_fused_groups(weights, biases)
    expected = paper_lamb([(g.pop("params"), g) for g in groups], grads)
    assert_rel_close(fused, expected, 1e-5)


@pytest.mark.parametrize("fused_backend", FUSED_BACKENDS, indirect=True)
def test_lion_fused_matches_reference(fused_backend: str) -> None:
    grads = make_grads(20)
    hp = {"lr": 1e-3, "weight_decay": 0.5}
    reference, _ = run(lion_builder("reference"), hp, LION_BIAS_HP, grads, dtype=torch.float32)
    fused, _ = run(lion_builder("fused"), hp, LION_BIAS_HP, grads, dtype=torch.float32)
    assert_rel_close(fused, reference, 1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["fast", "fused"])
def test_cuda_paths_match_the_cpu_reference(impl: Implementation) -> None:
    """On CUDA, "fast" runs the foreach kernels and "fused" torch.compile (Triton)."""
    grads = make_grads(20)
    for build, grouping in (
        (lamb_builder, lamb_fused_groups),
        (lion_builder, lambda w, b: [{"params": w, "lr": 1e-3, "weight_decay": 0.5},
                                     {"params": b, **LION_BIAS_HP}]),
    ):  # fmt: skip
        reference, _ = run(build("reference"), {}, {}, grads, dtype=torch.float32,
                           grouping=grouping)  # fmt: skip
        weights, biases = make_params(torch.float32)
        on_gpu = ([w.cuda() for w in weights], [b.cuda() for b in biases])
        cuda_grads = [[g.cuda() for g in step] for step in grads]
        actual, _ = run(build(impl), {}, {}, cuda_grads, dtype=torch.float32, params=on_gpu,
                        grouping=grouping)  # fmt: skip
        assert all(p.is_cuda for p in actual)
        assert_rel_close([p.cpu() for p in actual], reference, 1e-5)


@pytest.mark.slow
def test_fused_step_does_not_recompile_when_lr_or_step_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same group structures as the fused tests above: compiled once, then schedules run free."""
    import torch._dynamo

    monkeypatch.setenv("OPTPILOT_CPU_KERNELS", "0")
    grads = make_grads(6)
    for build, hp, bias_hp, grouping in (
        (lamb_builder("fused"), {}, {}, lamb_fused_groups),
        (lion_builder("fused"), {"lr": 1e-3, "weight_decay": 0.5}, LION_BIAS_HP, None),
    ):
        _, opt = run(build, hp, bias_hp, grads[:1], dtype=torch.float32, grouping=grouping)
        compiled = dict(_compiled._COMPILED)
        with torch._dynamo.config.patch(error_on_recompile=True):
            for step_grads in grads[1:]:
                for group in opt.param_groups:
                    group["lr"] *= 0.5
                    group["weight_decay"] *= 0.9
                flat = [p for group in opt.param_groups for p in group["params"]]
                for p, g in zip(flat, step_grads, strict=True):
                    p.grad = g.float()
                opt.step()
        assert dict(_compiled._COMPILED) == compiled  # no new compiled step either


# ------------------------------------------------------------------------------------------------
# Trust ratio edge cases


@pytest.mark.parametrize(("impl", "foreach"), [*EAGER, ("fused", None)])
def test_lamb_trust_ratio_is_one_for_zero_norms(
    impl: Implementation, foreach: bool | None
) -> None:
    n = 40000  # large enough for the multi-threaded kernels
    zero_param = torch.zeros(n, requires_grad=True)  # ||p|| = 0
    zero_grad = torch.full((n,), 3.0, requires_grad=True)  # u = 0 without decay
    small = torch.zeros(5, requires_grad=True)
    opt = Lamb([zero_param, zero_grad, small], lr=0.1, weight_decay=0.0,
               implementation=impl, foreach=foreach)
    zero_param.grad = torch.ones(n)
    zero_grad.grad = torch.zeros(n)
    small.grad = -torch.ones(5)
    opt.step()
    # Step 1 with bias correction: u = g/(|g| + eps) per entry, ratio 1.
    torch.testing.assert_close(zero_param.detach(), torch.full((n,), -0.1 / (1 + 1e-6)))
    torch.testing.assert_close(zero_grad.detach(), torch.full((n,), 3.0))
    torch.testing.assert_close(small.detach(), torch.full((5,), 0.1 / (1 + 1e-6)))


# ------------------------------------------------------------------------------------------------
# bf16 parameters, sparse gradients, validation


@pytest.mark.parametrize("cls", [Lamb, Lion])
@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_bf16_params_keep_fp32_state(cls: type[Lamb] | type[Lion], impl: Implementation) -> None:
    grads = make_grads(10, scale=1e-2)
    weights, biases = make_params(torch.bfloat16)
    build = (lamb_builder if cls is Lamb else lion_builder)(impl)
    bf16, opt = run(build, {}, {}, grads, dtype=torch.bfloat16, params=(weights, biases))
    for p in bf16:
        assert p.dtype == torch.bfloat16
        assert torch.isfinite(p.float()).all()
    for state in opt.state.values():
        for key in cls._tensor_state:
            assert state[key].dtype == torch.float32
    # fp32 math on the bf16 values: the same trajectory as fp32 parameters that start there,
    # up to the bf16 rounding of each write-back.
    fp32, _ = run(build, {}, {}, grads, dtype=torch.float32,
                  params=([w.float() for w in weights], [b.float() for b in biases]))
    for a, b in zip(bf16, fp32, strict=True):
        torch.testing.assert_close(a.float(), b, rtol=2e-2, atol=2e-2)
    # the state survives a state_dict round trip as fp32
    clone = cls([{"params": [p.detach().clone().requires_grad_() for p in g["params"]]}
                 for g in opt.param_groups], implementation=impl)
    clone.load_state_dict(opt.state_dict())
    for state in clone.state.values():
        for key in cls._tensor_state:
            assert state[key].dtype == torch.float32


@pytest.mark.parametrize("cls", [Lamb, Lion])
@pytest.mark.parametrize("impl", ["reference", "fast", "fused"])
def test_sparse_gradients_are_rejected(cls: type[Lamb] | type[Lion], impl: Implementation) -> None:
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = cls(emb.parameters(), implementation=impl)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"betas": (1.0, 0.999)}, "betas"),
        ({"betas": (0.9, -0.1)}, "betas"),
        ({"betas": (0.9,)}, "betas"),
        ({"eps": -1e-8}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"max_grad_norm": "1"}, "max_grad_norm"),
        ({"trust_clip": 1}, "trust_clip"),
        ({"implementation": "turbo"}, "implementation"),
    ],
)
def test_lamb_validates_arguments(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Lamb([torch.zeros(2, requires_grad=True)], **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lr": -1.0}, "lr"),
        ({"betas": (0.9, 1.5)}, "betas"),
        ({"weight_decay": float("inf")}, "weight_decay"),
        ({"implementation": "compiled"}, "implementation"),
        ({"foreach": "yes"}, "foreach"),
    ],
)
def test_lion_validates_arguments(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Lion([torch.zeros(2, requires_grad=True)], **kwargs)


def test_param_group_overrides_are_validated() -> None:
    opt = Lamb([torch.zeros(2, requires_grad=True)])
    with pytest.raises(ValueError, match="weight_decay"):
        opt.add_param_group({"params": [torch.zeros(3, requires_grad=True)], "weight_decay": -1})
    with pytest.raises(ValueError, match="lr"):
        Lion([{"params": [torch.zeros(2, requires_grad=True)], "lr": -3.0}])


# ------------------------------------------------------------------------------------------------
# state_dict round trips, closures, the registry


def _resume(
    build: Builder,
    resume_build: Builder,
    hp: GroupSpec,
    bias_hp: GroupSpec,
    dtype: torch.dtype,
    grouping: Grouping | None = None,
) -> tuple[Params, Params]:
    """(straight run of 20 steps, run saved after 10 and resumed by ``resume_build``)."""
    grads = make_grads(20)
    straight, _ = run(build, hp, bias_hp, grads, dtype=dtype, grouping=grouping)
    half, opt = run(build, hp, bias_hp, grads[:10], dtype=dtype, grouping=grouping)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    n = len(WEIGHT_SHAPES)
    weights = [p.clone().requires_grad_() for p in half[:n]]
    biases = [p.clone().requires_grad_() for p in half[n:]]
    resumed = resume_build(
        [{"params": weights}, {"params": biases}] if grouping is None
        else [{"params": g["params"]} for g in grouping(weights, biases)]
    )
    resumed.load_state_dict(saved)
    for step_grads in grads[10:]:
        for p, g in zip(weights + biases, step_grads, strict=True):
            p.grad = g.to(dtype)
        resumed.step()
    return straight, [p.detach() for p in weights + biases]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("impl", "foreach"), EAGER)
def test_state_dict_round_trip_is_bit_identical(
    impl: Implementation, foreach: bool | None, dtype: torch.dtype
) -> None:
    for build, hp, bias_hp in (
        (lamb_builder(impl, foreach, max_grad_norm=1.0), {}, LAMB_BIAS_HP),
        (lion_builder(impl, foreach), {"lr": 1e-3, "weight_decay": 0.5}, LION_BIAS_HP),
    ):
        straight, resumed = _resume(build, build, hp, bias_hp, dtype)
        for a, b in zip(straight, resumed, strict=True):
            assert torch.equal(a, b)


def test_state_dict_has_only_the_documented_state() -> None:
    _, lamb = run(lamb_builder("fast"), {}, LAMB_BIAS_HP, make_grads(2))
    _, lion = run(lion_builder("fast"), {}, LION_BIAS_HP, make_grads(2))
    for opt, keys in ((lamb, {"step", "exp_avg", "exp_avg_sq"}), (lion, {"exp_avg"})):
        state = opt.state_dict()["state"]
        assert state and all(set(s) == keys for s in state.values())
    assert all(s["step"] == 2 for s in lamb.state_dict()["state"].values())


@pytest.mark.parametrize(("saved_impl", "loaded_impl"), [("fast", "reference"),
                                                          ("reference", "fast")])
def test_state_dict_loads_across_implementations(
    saved_impl: Implementation, loaded_impl: Implementation
) -> None:
    for save, load, hp, bias_hp in (
        (lamb_builder(saved_impl), lamb_builder(loaded_impl), {}, LAMB_BIAS_HP),
        (lion_builder(saved_impl), lion_builder(loaded_impl), {"lr": 1e-3, "weight_decay": 0.5},
         LION_BIAS_HP),
    ):
        straight, resumed = _resume(save, load, hp, bias_hp, torch.float64)
        assert_rel_close(resumed, straight, RTOL)


@pytest.mark.parametrize("cls", [Lamb, Lion])
def test_load_state_dict_keeps_the_implementation(cls: type[Lamb] | type[Lion]) -> None:
    _, saved = run((lamb_builder if cls is Lamb else lion_builder)("fast"), {}, {}, make_grads(1))
    opt = cls([{"params": [torch.zeros(s, requires_grad=True) for s in WEIGHT_SHAPES]},
               {"params": [torch.zeros(s, requires_grad=True) for s in BIAS_SHAPES]}],
              implementation="reference", foreach=True)
    opt.load_state_dict(saved.state_dict())
    assert (opt.implementation, opt.foreach) == ("reference", True)


@pytest.mark.parametrize("fused_backend", FUSED_BACKENDS, indirect=True)
def test_state_dict_loads_into_fused(fused_backend: str) -> None:
    for save, load, hp, bias_hp, grouping in (
        (lamb_builder("fast"), lamb_builder("fused"), {}, {}, lamb_fused_groups),
        (lion_builder("fast"), lion_builder("fused"), {"lr": 1e-3, "weight_decay": 0.5},
         LION_BIAS_HP, None),
    ):
        straight, resumed = _resume(save, load, hp, bias_hp, torch.float32, grouping)
        assert_rel_close(resumed, straight, 1e-5)


@pytest.mark.parametrize("cls", [Lamb, Lion])
def test_closure_and_deepcopy(cls: type[Lamb] | type[Lion]) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    opt = cls(model.parameters(), lr=1e-2)

    def closure() -> float:
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        return float(loss.detach())

    losses = [opt.step(closure) for _ in range(30)]
    assert losses[-1] < losses[0]
    clone = copy.deepcopy(opt)
    assert clone.implementation == opt.implementation == "fast"
    clone.step(closure)


def test_registry_builds_fast_lamb_and_lion() -> None:
    p = torch.zeros(3, requires_grad=True)
    lamb = optimizers.create("lamb", [p], lr=3e-3, beta1=0.8)
    lion = optimizers.create("lion", [p], weight_decay=1.0)
    assert isinstance(lamb, Lamb) and lamb.implementation == "fast"
    assert lamb.param_groups[0]["betas"] == (0.8, 0.999)
    assert isinstance(lion, Lion) and lion.param_groups[0]["weight_decay"] == 1.0


def test_fast_step_allocates_no_tensor_sized_temporaries() -> None:
    """Steady-state fast steps on CPU reuse scratch buffers (REFERENCE: glibc mmap faults)."""
    from torch.profiler import ProfilerActivity, profile

    big = 1 << 16
    for build in (lamb_builder("fast", max_grad_norm=1.0), lion_builder("fast")):
        p = torch.randn(big, requires_grad=True)
        q = torch.randn(256, 256, dtype=torch.bfloat16, requires_grad=True)
        opt = build([{"params": [p, q]}])
        p.grad, q.grad = torch.randn(big), torch.randn(256, 256, dtype=torch.bfloat16)
        opt.step()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            opt.step()
        largest = max((e.cpu_memory_usage for e in prof.events()), default=0)
        assert largest < 4096, f"{type(opt).__name__} allocated {largest} bytes in one op"
