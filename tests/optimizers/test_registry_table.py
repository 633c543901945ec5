"""One table of checks that every registered optimizer goes through (cf. torch's OptimizerInfo)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch

import optimizers
from optimizers.registry import HYPERPARAMETER_BOUNDS

NAMES = optimizers.names()

# Learning rates that suit these tiny problems; everything else stays at the registry default,
# which is what users get. Rosenbrock's gradients are in the hundreds, hence its own column.
TEST_LR: dict[str, float] = {
    "sgd": 5e-2, "sgd_momentum": 1e-2, "nesterov": 1e-2, "rmsprop": 1e-2, "adagrad": 0.2,
    "adam": 5e-2, "adamw": 5e-2, "nadam": 5e-2, "radam": 5e-2, "adafactor": 5e-2,
    "lamb": 5e-2, "lion": 1e-2, "muon": 5e-2,
    "schedulefree_adamw": 5e-2, "schedulefree_sgd": 1e-2,
}
ROSENBROCK_LR: dict[str, float] = {
    "sgd": 1e-3, "sgd_momentum": 1e-3, "nesterov": 1e-3, "rmsprop": 1e-2, "adagrad": 0.2,
    "adam": 0.2, "adamw": 0.2, "nadam": 0.2, "radam": 1e-2, "adafactor": 0.2,
    "lamb": 5e-2, "lion": 1e-2, "muon": 5e-2,
    "schedulefree_adamw": 0.2, "schedulefree_sgd": 1e-3,
}


def hp(name: str, **overrides: float) -> dict[str, float]:
    values = {"lr": TEST_LR[name]}
    if name == "muon":  # the 1-D tensors take muon's AdamW side
        values["aux_lr"] = values["lr"]
    if "weight_decay" in optimizers.get(name).defaults:
        values["weight_decay"] = 0.0
    values.update(overrides)
    return values


def test_catalog_names_are_the_design_names() -> None:
    expected = {"sgd", "sgd_momentum", "nesterov", "rmsprop", "adagrad", "adam", "adamw",
                "nadam", "radam", "adafactor", "lamb", "lion", "schedulefree_adamw",
                "schedulefree_sgd"}
    assert expected <= set(NAMES)
    assert ("muon" in NAMES) == hasattr(torch.optim, "Muon")
    assert set(TEST_LR) >= set(NAMES), "add the new optimizer to the tables below"
    assert set(ROSENBROCK_LR) >= set(NAMES)


def least_squares(seed: int = 0) -> tuple[torch.nn.Parameter, Callable[[], torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(32, 8, generator=gen)
    target = a @ torch.randn(8, 4, generator=gen)
    w = torch.nn.Parameter(torch.zeros(8, 4))

    def loss() -> torch.Tensor:
        return ((a @ w - target) ** 2).mean()

    return w, loss


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def run(opt: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor], steps: int) -> float:
    """The loss after ``steps`` steps, at the evaluation point (schedule-free optimizers switch
    the parameters to it with ``eval()``)."""
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    with optimizers.evaluation_mode(opt):
        return float(loss_fn().detach())


@pytest.mark.parametrize("name", NAMES)
def test_loss_falls_on_convex_least_squares(name: str) -> None:
    w, loss_fn = least_squares()
    start = float(loss_fn().detach())
    final = run(optimizers.create(name, [w], **hp(name)), loss_fn, 200)
    assert math.isfinite(final)
    assert final < 0.5 * start, f"{name}: {start} -> {final}"


@pytest.mark.parametrize("name", NAMES)
def test_loss_falls_on_rosenbrock(name: str) -> None:
    x = torch.nn.Parameter(torch.tensor([-1.5, 2.0]))
    start = float(rosenbrock(x).detach())
    lr = ROSENBROCK_LR[name]
    extra = {"aux_lr": lr} if name == "muon" else {}
    opt = optimizers.create(name, [x], **hp(name, lr=lr, **extra))
    final = run(opt, lambda: rosenbrock(x), 300)
    assert math.isfinite(final)
    assert final < 0.5 * start, f"{name}: {start} -> {final}"


def small_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def train_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=gen)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_resumes_bit_identical(name: str) -> None:
    model = small_model(0)
    opt = optimizers.create(name, model.parameters(), **hp(name))
    train_steps(model, opt, 5, seed=1)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    train_steps(model, opt, 5, seed=2)
    expected = [p.detach().clone() for p in model.parameters()]

    resumed = small_model(99)
    resumed.load_state_dict(saved_model)
    resumed_opt = optimizers.create(name, resumed.parameters(), **hp(name))
    resumed_opt.load_state_dict(saved_opt)
    train_steps(resumed, resumed_opt, 5, seed=2)
    for got, want in zip(resumed.parameters(), expected, strict=True):
        assert torch.equal(got, want), name


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_take_their_own_lr(name: str) -> None:
    model = small_model(0)
    first, second = model[0], model[2]  # type: ignore[index]
    before = [p.detach().clone() for p in model.parameters()]
    lr = TEST_LR[name]
    groups = [{"params": first.parameters(), "lr": lr},
              {"params": second.parameters(), "lr": lr * 1e-3}]
    if name == "muon":
        groups[1]["aux_lr"] = groups[1]["lr"]
    opt = optimizers.create(name, groups, **hp(name))
    train_steps(model, opt, 3, seed=0)
    moved = [float((p.detach() - b).abs().max()) for p, b in zip(model.parameters(), before,
                                                                  strict=True)]
    assert min(moved[:2]) > 0
    assert max(moved[2:]) < max(moved[:2]) * 0.1, f"{name}: {moved}"


@pytest.mark.parametrize("name", NAMES)
def test_parameters_without_gradient_are_untouched(name: str) -> None:
    model = small_model(0)
    frozen = model[2].weight  # type: ignore[index]
    frozen.requires_grad_(False)
    before = frozen.detach().clone()
    opt = optimizers.create(name, model.parameters(), **hp(name, weight_decay=0.1)
                            if "weight_decay" in optimizers.get(name).defaults else hp(name))
    train_steps(model, opt, 3, seed=0)
    assert torch.equal(frozen, before)
    assert not torch.equal(model[0].weight, small_model(0)[0].weight)  # type: ignore[index]


@pytest.mark.parametrize("name", NAMES)
def test_bf16_parameters_train(name: str) -> None:
    w, _ = least_squares()
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(32, 8, generator=gen)
    target = a @ torch.randn(8, 4, generator=gen)
    w16 = torch.nn.Parameter(w.detach().to(torch.bfloat16))

    def loss_fn() -> torch.Tensor:
        return ((a.to(torch.bfloat16) @ w16 - target.to(torch.bfloat16)).float() ** 2).mean()

    start = float(loss_fn().detach())
    final = run(optimizers.create(name, [w16], **hp(name)), loss_fn, 100)
    assert w16.dtype == torch.bfloat16
    assert math.isfinite(final)
    assert final < start, f"{name}: {start} -> {final}"


@pytest.mark.parametrize("name", NAMES)
def test_unknown_hyperparameter_is_rejected_by_name(name: str) -> None:
    with pytest.raises(ValueError, match=r"^learning_rate: not a hyperparameter"):
        optimizers.create(name, [torch.nn.Parameter(torch.zeros(2))], learning_rate=0.1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [-1.0, 0.0, math.nan, math.inf, 1e9])
def test_out_of_range_hyperparameter_is_rejected_by_name(name: str, bad: float) -> None:
    spec = optimizers.get(name)
    for field, bound in HYPERPARAMETER_BOUNDS.items():
        if field not in spec.defaults:
            continue
        try:
            bound.check(field, bad)
        except ValueError:
            with pytest.raises(ValueError, match=f"^{field}: "):
                optimizers.create(name, [torch.nn.Parameter(torch.zeros(2))], **{field: bad})


def test_unknown_optimizer_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown name 'adamx'"):
        optimizers.create("adamx", [torch.nn.Parameter(torch.zeros(2))])


@pytest.mark.parametrize("name", NAMES)
def test_registry_record_is_consistent(name: str) -> None:
    spec = optimizers.get(name)
    assert spec.name == name
    assert spec.when_to_use and spec.references
    assert spec.state_bytes_per_param >= 0
    assert "lr" in spec.search_space
    for hp_name, rng in spec.search_space.items():
        HYPERPARAMETER_BOUNDS[hp_name].check(hp_name, rng.low)
        HYPERPARAMETER_BOUNDS[hp_name].check(hp_name, rng.high)
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]
