"""optpilot's schedule-free AdamW and SGD against the paper's equations and the authors' package.

``paper_schedule_free`` below writes Defazio et al. 2024's three sequences out in float64
(``y = (1-beta) z + beta x``, the base step on ``z``, ``x`` the weighted average of the ``z``'s),
independently of ``optimizers``. Gradients depend on the point they are taken at
(``g = noise + CURVATURE * y``), so a run that kept the wrong point in the parameter would drift
from the oracle. The authors' package ``schedulefree`` is the second oracle, in fp32: every path
follows it to 1e-5 (relative to each tensor's largest entry) over 200 steps, at the training
point and at the evaluation point.
"""

from __future__ import annotations

import copy
import inspect
import io
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import schedulefree
import torch

import optimizers
from optimizers import ScheduleFreeAdamW, ScheduleFreeSGD, _cpu_kernels
from optimizers._base import PARALLEL_MIN_NUMEL
from optimizers._checks import Implementation
from tests.optimizers.test_lamb_lion import assert_rel_close, rel_close

# Odd sizes; one tensor large enough for the kernels' and the loop's multi-threaded paths.
SHAPES: tuple[tuple[int, ...], ...] = ((5, 3), (4, 3, 2), (33, 17), (PARALLEL_MIN_NUMEL + 1001,),
                                       (7,), (17,))
WEIGHTS = 4  # the first four tensors form the first param group, the rest the second
CURVATURE = 0.5
STEPS = 200

Params = list[torch.Tensor]
Cls = type[ScheduleFreeAdamW] | type[ScheduleFreeSGD]
Builder = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]

# (implementation, foreach): reference; the default (C kernels for fp32 CPU tensors, foreach for
# the others' small tensors, the loop for their large ones); the loop; the foreach ops.
PATHS: list[tuple[Implementation, bool | None]] = [
    ("reference", None), ("fast", None), ("fast", False), ("fast", True),
]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread (see test_lamb_lion.py); the kernels' threading is tested in
    test_cpu_kernels.py."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def initial(dtype: torch.dtype = torch.float32, seed: int = 0) -> Params:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]


def noise(steps: int, seed: int = 1) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
            for _ in range(steps)]  # fmt: skip


def gradient(step_noise: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """The gradient at ``at`` of a noisy quadratic, in ``at``'s dtype."""
    return (step_noise + CURVATURE * at.detach().double()).to(at.dtype)


def groups_of(params: Params, hp: dict[str, Any], bias_hp: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"params": params[:WEIGHTS], **hp}, {"params": params[WEIGHTS:], **bias_hp}]


def train(
    build: Builder,
    hp: dict[str, Any],
    bias_hp: dict[str, Any],
    noises: Sequence[Sequence[torch.Tensor]],
    params: Params | None = None,
) -> tuple[Params, Params, torch.optim.Optimizer]:
    """(parameters at the training point, at the evaluation point, the optimizer in eval mode)
    after one step per entry of ``noises``."""
    ps = [p.clone().requires_grad_() for p in (params if params is not None else initial())]
    opt = build(groups_of(ps, hp, bias_hp))
    opt.train()  # type: ignore[attr-defined]  # the authors' package starts in eval mode
    for step_noise in noises:
        for p, n in zip(ps, step_noise, strict=True):
            p.grad = gradient(n, p)
        opt.step()
    y = [p.detach().clone() for p in ps]
    opt.eval()  # type: ignore[attr-defined]
    return y, [p.detach().clone() for p in ps], opt


def max_rel_error(actual: Params, expected: Params) -> float:
    """Largest ``|a - e|`` relative to the largest ``|e|`` of its tensor, over all tensors."""
    return max(float((a.double() - e.double()).abs().max() / e.double().abs().max())
               for a, e in zip(actual, expected, strict=True))


# ------------------------------------------------------------------------------------------------
# The paper's equations (float64)


def paper_schedule_free(
    base: str,
    groups: list[tuple[Params, dict[str, Any]]],
    noises: Sequence[Sequence[torch.Tensor]],
    bug: str | None = None,
) -> tuple[Params, Params]:
    """Defazio et al. 2024, Algorithm 1 (with the authors' package's bias correction and
    averaging weights): (y, x) after the steps, float64."""
    out_y: Params = []
    out_x: Params = []
    offset = 0
    for ps, hp in groups:
        lr, wd = hp["lr"], hp.get("weight_decay", 0.0)
        warmup, r = hp.get("warmup_steps", 0), hp.get("r", 0.0)
        power = hp.get("weight_lr_power", 2.0)
        if base == "adamw":
            beta, beta2 = hp.get("betas", (0.9, 0.999))
            eps = hp.get("eps", 1e-8)
        else:
            beta = hp.get("momentum", 0.9)
        xs = [p.double().clone() for p in ps]
        zs = [p.double().clone() for p in ps]
        vs = [torch.zeros_like(p, dtype=torch.float64) for p in ps]
        weight_sum, lr_max = 0.0, 0.0
        for t, step_noise in enumerate(noises, start=1):
            lr_t = lr * min(1.0, t / warmup) if warmup else lr
            lr_max = max(lr_max, lr_t)
            weight = t**r * lr_max**power
            if bug == "uniform_average":
                weight = 1.0
            weight_sum += weight
            c = weight / weight_sum
            for i in range(len(ps)):
                x, z = xs[i], zs[i]
                y = (1 - beta) * z + beta * x
                g = step_noise[offset + i] + CURVATURE * y
                decay_at = x if bug == "decay_at_x" else y
                if base == "adamw":
                    vs[i] = beta2 * vs[i] + (1 - beta2) * g * g
                    correction = 1.0 if bug == "no_bias_correction" else 1 - beta2**t
                    u = g / (torch.sqrt(vs[i] / correction) + eps) + wd * decay_at
                else:
                    u = g + wd * decay_at
                zs[i] = z - lr_t * u
                xs[i] = (1 - c) * x + c * zs[i]
        out_y += [(1 - beta) * z + beta * x for x, z in zip(xs, zs, strict=True)]
        out_x += xs
        offset += len(ps)
    return out_y, out_x


ADAMW_CASES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"lr": 1e-2}, {"lr": 3e-3, "betas": (0.8, 0.99)}),
    ({"lr": 1e-2, "weight_decay": 0.1, "warmup_steps": 20},
     {"lr": 3e-3, "betas": (0.95, 0.99), "eps": 1e-6, "warmup_steps": 50}),
    ({"lr": 1e-2, "weight_decay": 0.05, "warmup_steps": 10, "r": 0.75, "weight_lr_power": 1.0},
     {"lr": 3e-3}),
]
SGD_CASES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"lr": 0.1}, {"lr": 0.03, "momentum": 0.8}),
    ({"lr": 0.1, "weight_decay": 0.1, "warmup_steps": 20},
     {"lr": 0.03, "momentum": 0.95, "warmup_steps": 50}),
    ({"lr": 0.1, "weight_decay": 0.05, "warmup_steps": 10, "r": 0.75, "weight_lr_power": 1.0},
     {"lr": 0.03}),
]
CASES = [(ScheduleFreeAdamW, "adamw", *case) for case in ADAMW_CASES] + [
    (ScheduleFreeSGD, "sgd", *case) for case in SGD_CASES]
CASE_IDS = [f"{base}-{i % 3}" for i, (_, base, *_) in enumerate(CASES)]


def ours(cls: Cls, implementation: Implementation, foreach: bool | None = None) -> Builder:
    return lambda groups: cls(groups, implementation=implementation, foreach=foreach)


@pytest.mark.parametrize(("cls", "base", "hp", "bias_hp"), CASES, ids=CASE_IDS)
def test_eager_paths_follow_the_paper_in_float64(
    cls: Cls, base: str, hp: dict[str, Any], bias_hp: dict[str, Any]
) -> None:
    noises = noise(100)
    start = initial(torch.float64)
    expected_y, expected_x = paper_schedule_free(
        base, [(start[:WEIGHTS], hp), (start[WEIGHTS:], bias_hp)], noises)
    for impl, foreach in PATHS:
        y, x, _ = train(ours(cls, impl, foreach), hp, bias_hp, noises, start)
        assert_rel_close(y, expected_y, 1e-10)
        assert_rel_close(x, expected_x, 1e-10)


@pytest.mark.parametrize(("base", "bug"), [("adamw", "no_bias_correction"),
                                           ("adamw", "decay_at_x"), ("sgd", "decay_at_x"),
                                           ("adamw", "uniform_average"),
                                           ("sgd", "uniform_average")])
def test_the_tolerance_detects_wrong_equations(base: str, bug: str) -> None:
    cls, hp, bias_hp = ((ScheduleFreeAdamW, *ADAMW_CASES[1]) if base == "adamw"
                        else (ScheduleFreeSGD, *SGD_CASES[1]))  # warm-up and weight decay
    noises = noise(100)
    start = initial(torch.float64)
    groups = [(start[:WEIGHTS], hp), (start[WEIGHTS:], bias_hp)]
    _, x, _ = train(ours(cls, "fast"), hp, bias_hp, noises, start)
    assert rel_close(x, paper_schedule_free(base, groups, noises)[1], 1e-10)
    assert not rel_close(x, paper_schedule_free(base, groups, noises, bug=bug)[1], 1e-5)


# ------------------------------------------------------------------------------------------------
# The authors' package (fp32, 200 steps)


def package(cls: Cls) -> Builder:
    if cls is ScheduleFreeAdamW:
        return lambda groups: schedulefree.AdamWScheduleFree(groups)
    return lambda groups: schedulefree.SGDScheduleFree(groups)


@pytest.mark.parametrize(("cls", "base", "hp", "bias_hp"), CASES, ids=CASE_IDS)
def test_every_path_follows_the_authors_package(
    cls: Cls, base: str, hp: dict[str, Any], bias_hp: dict[str, Any]
) -> None:
    assert _cpu_kernels.load() is not None  # the default path runs the C kernel here
    noises = noise(STEPS)
    want_y, want_x, _ = train(package(cls), hp, bias_hp, noises)
    errors = {}
    for impl, foreach in PATHS:
        y, x, _ = train(ours(cls, impl, foreach), hp, bias_hp, noises)
        errors[(impl, foreach)] = (max_rel_error(y, want_y), max_rel_error(x, want_x))
    print(f"\n{base} {hp} vs schedulefree: max relative error (train, eval) per path: {errors}")
    for path, (train_error, eval_error) in errors.items():
        assert train_error < 1e-5 and eval_error < 1e-5, path


def test_defaults_are_the_authors_packages() -> None:
    for ours_cls, theirs, names in (
        (ScheduleFreeAdamW, schedulefree.AdamWScheduleFree,
         ("lr", "betas", "eps", "weight_decay", "warmup_steps", "r", "weight_lr_power")),
        (ScheduleFreeSGD, schedulefree.SGDScheduleFree,
         ("lr", "momentum", "weight_decay", "warmup_steps", "r", "weight_lr_power")),
    ):
        mine = inspect.signature(ours_cls).parameters
        package_defaults = inspect.signature(theirs).parameters
        for name in names:
            assert mine[name].default == package_defaults[name].default, name
    adamw = optimizers.get("schedulefree_adamw").defaults
    assert (adamw["lr"], adamw["beta1"], adamw["beta2"], adamw["eps"], adamw["weight_decay"],
            adamw["warmup_steps"]) == (0.0025, 0.9, 0.999, 1e-8, 0.0, 0)
    sgd = optimizers.get("schedulefree_sgd").defaults
    assert (sgd["lr"], sgd["momentum"], sgd["weight_decay"], sgd["warmup_steps"]) == (1.0, 0.9,
                                                                                       0.0, 0)


# ------------------------------------------------------------------------------------------------
# Modes


@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
def test_modes_switch_between_y_and_x(cls: Cls) -> None:
    y, x, opt = train(ours(cls, "fast"), {"lr": 1e-2}, {}, noise(5))
    free = opt
    assert isinstance(free, cls)
    assert not free.train_mode
    free.eval()  # a no-op in eval mode
    assert_rel_close([p.detach() for p in _params(free)], x, 0)
    free.train()
    assert free.train_mode
    assert_rel_close([p.detach() for p in _params(free)], y, 1e-6)  # back to y, up to rounding
    free.train()
    assert_rel_close([p.detach() for p in _params(free)], y, 1e-6)


def _params(opt: torch.optim.Optimizer) -> Params:
    return [p for group in opt.param_groups for p in group["params"]]


@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
def test_a_step_in_eval_mode_is_refused(cls: Cls) -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = cls([p])
    assert opt.train_mode  # unlike the authors' package, it starts in train mode
    opt.eval()
    p.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match=r"eval mode: call optimizer\.train\(\)"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3))
    opt.train()
    opt.step()


@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
def test_a_group_added_later_joins_the_current_mode(cls: Cls) -> None:
    opt = cls([torch.nn.Parameter(torch.ones(3))])
    opt.eval()
    opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "lr": 0.5})
    assert not opt.param_groups[1]["train_mode"] and not opt.train_mode
    opt.train()
    assert opt.train_mode and opt.param_groups[1]["k"] == 0


def test_parameters_without_gradients_keep_their_value_in_both_modes() -> None:
    stepped, frozen = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.full((2,), 5.0))
    opt = ScheduleFreeAdamW([stepped, frozen], weight_decay=0.1)
    for _ in range(3):
        stepped.grad = torch.ones(3)
        opt.step()
    opt.eval()
    assert torch.equal(frozen.detach(), torch.full((2,), 5.0)) and frozen not in opt.state
    opt.train()
    assert torch.equal(frozen.detach(), torch.full((2,), 5.0))


# ------------------------------------------------------------------------------------------------
# bf16 parameters, state_dict


@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_bf16_params_keep_fp32_state(cls: Cls, impl: Implementation) -> None:
    hp = {"lr": 1e-2 if cls is ScheduleFreeAdamW else 0.05, "weight_decay": 0.01}
    noises = [[n * 0.1 for n in step] for step in noise(20)]
    start = initial(torch.bfloat16)
    y16, x16, opt = train(ours(cls, impl), hp, {}, noises, start)
    assert all(p.dtype == torch.bfloat16 for p in _params(opt))
    for state in opt.state.values():
        assert all(state[key].dtype == torch.float32 for key in cls._tensor_state)
    # fp32 math on the bf16 values: the fp32 trajectory from the same start, up to the bf16
    # rounding of each write-back (a few bf16 ulps of each tensor's scale after 20 steps)
    y32, x32, _ = train(ours(cls, impl), hp, {}, noises, [p.float() for p in start])
    assert_rel_close(x16 + y16, x32 + y32, 3e-2)
    clone = cls([{"params": [p.detach().clone().requires_grad_() for p in g["params"]]}
                 for g in opt.param_groups], implementation=impl)
    clone.load_state_dict(opt.state_dict())
    for state in clone.state.values():
        assert all(state[key].dtype == torch.float32 for key in cls._tensor_state)


def _resume(cls: Cls, build: Builder, resume_build: Builder, save_in_eval: bool,
            dtype: torch.dtype = torch.float32) -> tuple[Params, Params]:
    """(straight run of 20 steps, a run checkpointed after 10 steps and resumed with
    ``resume_build``), both at the end in train mode. The checkpoint (model and optimizer) is
    taken in eval mode when ``save_in_eval``, as the authors recommend."""
    hp = {"lr": 1e-2 if cls is ScheduleFreeAdamW else 0.05, "weight_decay": 0.01,
          "warmup_steps": 4}
    noises = noise(20)
    start = initial(dtype)

    def run(opt: torch.optim.Optimizer, ps: Params,
            steps: Sequence[Sequence[torch.Tensor]]) -> None:
        for step_noise in steps:
            for p, n in zip(ps, step_noise, strict=True):
                p.grad = gradient(n, p)
            opt.step()

    ps = [p.clone().requires_grad_() for p in start]
    straight = build(groups_of(ps, hp, {}))
    run(straight, ps, noises)
    expected = [p.detach().clone() for p in ps]

    ps = [p.clone().requires_grad_() for p in start]
    opt = build(groups_of(ps, hp, {}))
    run(opt, ps, noises[:10])
    if save_in_eval:
        opt.eval()  # type: ignore[attr-defined]
    buffer = io.BytesIO()
    torch.save(({i: p.detach() for i, p in enumerate(ps)}, opt.state_dict()), buffer)
    buffer.seek(0)
    saved_params, saved_state = torch.load(buffer, weights_only=True)
    resumed_ps = [saved_params[i].clone().requires_grad_() for i in range(len(ps))]
    resumed = resume_build(groups_of(resumed_ps, {}, {}))
    resumed.load_state_dict(saved_state)
    assert resumed.train_mode != save_in_eval  # type: ignore[attr-defined]
    resumed.train()  # type: ignore[attr-defined]
    run(resumed, resumed_ps, noises[10:])
    return expected, [p.detach() for p in resumed_ps]


@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
@pytest.mark.parametrize(("impl", "foreach"), PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_in_train_mode_is_bit_identical(
    cls: Cls, impl: Implementation, foreach: bool | None, dtype: torch.dtype
) -> None:
    build = ours(cls, impl, foreach)
    straight, resumed = _resume(cls, build, build, save_in_eval=False, dtype=dtype)
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed, strict=True))


@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
def test_state_dict_round_trip_through_eval_mode(cls: Cls) -> None:
    """Saved in eval mode (the parameters hold x), loaded, switched back: the same run up to
    the rounding of the two switches."""
    straight, resumed = _resume(cls, ours(cls, "fast"), ours(cls, "fast"), save_in_eval=True)
    assert_rel_close(resumed, straight, 1e-5)


@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
@pytest.mark.parametrize(("saved", "loaded"), [("fast", "reference"), ("reference", "fast")])
def test_state_dict_loads_across_implementations(
    cls: Cls, saved: Implementation, loaded: Implementation
) -> None:
    straight, resumed = _resume(cls, ours(cls, saved), ours(cls, loaded), save_in_eval=True)
    assert_rel_close(resumed, straight, 1e-5)


def test_state_dict_holds_z_and_the_second_moment_per_parameter_and_counters_per_group() -> None:
    _, _, adamw = train(ours(ScheduleFreeAdamW, "fast"), {"lr": 1e-2}, {}, noise(3))
    _, _, sgd = train(ours(ScheduleFreeSGD, "fast"), {"lr": 0.1}, {}, noise(3))
    for opt, keys in ((adamw, {"z", "exp_avg_sq"}), (sgd, {"z"})):
        saved = opt.state_dict()
        assert saved["state"] and all(set(s) == keys for s in saved["state"].values())
        for group in saved["param_groups"]:
            assert group["k"] == 3 and group["train_mode"] is False and group["weight_sum"] > 0


# ------------------------------------------------------------------------------------------------
# Validation, closures, the registry


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (ScheduleFreeAdamW, {"lr": -1.0}, "lr"),
        (ScheduleFreeAdamW, {"betas": (0.0, 0.999)}, r"betas\[0\]"),
        (ScheduleFreeAdamW, {"betas": (0.9, 1.0)}, r"betas\[1\]"),
        (ScheduleFreeAdamW, {"eps": -1e-8}, "eps"),
        (ScheduleFreeAdamW, {"weight_decay": math.inf}, "weight_decay"),
        (ScheduleFreeAdamW, {"warmup_steps": -1}, "warmup_steps"),
        (ScheduleFreeAdamW, {"warmup_steps": 2.5}, "warmup_steps"),
        (ScheduleFreeAdamW, {"r": -0.5}, "r"),
        (ScheduleFreeAdamW, {"weight_lr_power": math.nan}, "weight_lr_power"),
        (ScheduleFreeAdamW, {"implementation": "turbo"}, "implementation"),
        (ScheduleFreeSGD, {"momentum": 0.0}, "momentum"),
        (ScheduleFreeSGD, {"momentum": 1.0}, "momentum"),
        (ScheduleFreeSGD, {"lr": math.nan}, "lr"),
        (ScheduleFreeSGD, {"warmup_steps": "10"}, "warmup_steps"),
        (ScheduleFreeSGD, {"foreach": "yes"}, "foreach"),
    ],
)
def test_arguments_are_validated_by_name(cls: Cls, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        cls([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_registry_builds_them_and_checks_warmup_steps() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    adamw = optimizers.create("schedulefree_adamw", [p], lr=1e-3, beta1=0.95, warmup_steps=100)
    assert isinstance(adamw, ScheduleFreeAdamW) and adamw.implementation == "fast"
    group = adamw.param_groups[0]
    assert (group["betas"], group["warmup_steps"]) == ((0.95, 0.999), 100)
    assert isinstance(group["warmup_steps"], int)
    sgd = optimizers.create("schedulefree_sgd", [p], momentum=0.95, weight_decay=1e-5)
    assert isinstance(sgd, ScheduleFreeSGD) and sgd.param_groups[0]["momentum"] == 0.95
    with pytest.raises(ValueError, match=r"^warmup_steps: expected a whole number"):
        optimizers.create("schedulefree_sgd", [p], warmup_steps=2.5)
    with pytest.raises(ValueError, match=r"^warmup_steps: "):
        optimizers.create("schedulefree_adamw", [p], warmup_steps=-1)


@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
def test_closure_deepcopy_and_sparse_gradients(cls: Cls) -> None:
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
    assert clone.implementation == "fast" and clone.train_mode
    clone.step(closure)
    emb = torch.nn.Embedding(10, 3, sparse=True)
    sparse = cls(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        sparse.step()


@pytest.mark.parametrize(("impl", "foreach"), PATHS)
def test_a_nan_gradient_does_not_leak_into_other_tensors(
    impl: Implementation, foreach: bool | None
) -> None:
    """The loop shares scratch buffers between tensors: one tensor's NaN must stay its own."""
    n = PARALLEL_MIN_NUMEL + 5
    poisoned = torch.nn.Parameter(torch.ones(n))
    clean = torch.nn.Parameter(torch.ones(n))
    opt = ScheduleFreeAdamW([poisoned, clean], implementation=impl, foreach=foreach)
    for _ in range(2):
        poisoned.grad = torch.ones(n)
        poisoned.grad[3] = math.nan
        clean.grad = torch.ones(n)
        opt.step()
    assert torch.isnan(poisoned[3]) and torch.isfinite(clean).all()


def test_fast_step_allocates_no_tensor_sized_temporaries() -> None:
    """Steady-state fast steps on CPU: the kernel for fp32, scratch buffers for the loop (bf16
    working copies, the Adam direction)."""
    from torch.profiler import ProfilerActivity, profile

    big = 1 << 16
    for cls in (ScheduleFreeAdamW, ScheduleFreeSGD):
        for foreach in (None, False):
            p = torch.randn(big, requires_grad=True)
            q = torch.randn(256, 256, dtype=torch.bfloat16, requires_grad=True)
            opt = cls([p, q], weight_decay=0.01, foreach=foreach)
            p.grad, q.grad = torch.randn(big), torch.randn(256, 256, dtype=torch.bfloat16)
            opt.step()
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                opt.step()
            largest = max((e.cpu_memory_usage for e in prof.events()), default=0)
            assert largest < 4096, f"{cls.__name__} allocated {largest} bytes in one op"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["fast", "fused"])
@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
def test_cuda_paths_match_the_cpu_reference(cls: Cls, impl: Implementation) -> None:
    """On CUDA, "fast" runs the foreach ops and "fused" torch.compile (Triton)."""
    hp, bias_hp = (ADAMW_CASES if cls is ScheduleFreeAdamW else SGD_CASES)[1]
    noises = noise(50)
    ref_y, ref_x, _ = train(ours(cls, "reference"), hp, bias_hp, noises)
    on_gpu = [p.cuda() for p in initial()]
    cuda_noises = [[n.cuda() for n in step] for step in noises]
    y, x, _ = train(ours(cls, impl), hp, bias_hp, cuda_noises, on_gpu)
    assert all(p.is_cuda for p in y + x)
    assert_rel_close([p.cpu() for p in y], ref_y, 1e-5)
    assert_rel_close([p.cpu() for p in x], ref_x, 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
def test_fused_torch_compile_path_follows_the_reference(
    cls: Cls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``implementation="fused"`` with the C kernels disabled: everything through
    torch.compile, compiled once; warm-up and averaging weights change every step without
    recompiling."""
    import torch._dynamo

    monkeypatch.setenv("OPTPILOT_CPU_KERNELS", "0")
    hp, bias_hp = (ADAMW_CASES if cls is ScheduleFreeAdamW else SGD_CASES)[1]
    noises = noise(20)
    ref_y, ref_x, _ = train(ours(cls, "reference"), hp, bias_hp, noises)
    _, _, warm = train(ours(cls, "fused"), hp, bias_hp, noises[:1])  # compiles
    del warm
    with torch._dynamo.config.patch(error_on_recompile=True):
        y, x, _ = train(ours(cls, "fused"), hp, bias_hp, noises)
    assert_rel_close(y, ref_y, 1e-5)
    assert_rel_close(x, ref_x, 1e-5)
