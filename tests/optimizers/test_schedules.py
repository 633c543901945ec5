"""Learning-rate schedules: every schedule against its closed form at every step, through a real
torch optimizer with several param groups; the record's validation and JSON form."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch

import optimizers
from optimizers import Schedule, build_scheduler

GROUP_LRS = (1e-3, 0.1, 2.0)


def closed_form(schedule: dict[str, Any], step: int, total: int) -> float:
    """The multiplier of the peak lr at ``step``, written from the textbook definitions: linear
    warm-up to the peak at step W-1, then cosine / linear decay to the final fraction at step T,
    WSD's plateau and cool-down over the last ``decay_fraction`` of the steps, inverse square
    root continuous with the warm-up."""
    name = schedule["name"]
    warmup: int = schedule.get("warmup_steps", round(total * schedule.get("warmup_fraction", 0.0)))
    final: float = schedule.get("final_lr_fraction", 0.0)
    if step < warmup:
        return (step + 1) / warmup
    if name in ("constant", "none"):
        return 1.0
    if name == "inverse_sqrt":
        return 1 / math.sqrt((step + 1) / max(warmup, 1))
    if name == "wsd":
        start = total - round(total * schedule.get("decay_fraction", 0.2))
        if step < start:
            return 1.0
        shape = schedule.get("decay_shape", "linear")
    else:
        start, shape = warmup, name
    p = min(1.0, (step - start) / (total - start))
    remaining: float = {"linear": 1 - p, "cosine": (1 + math.cos(math.pi * p)) / 2,
                 "1-sqrt": 1 - math.sqrt(p)}[shape]
    return final + (1 - final) * remaining


CASES: list[tuple[dict[str, Any], int]] = [
    ({"name": "cosine", "warmup_steps": 10, "final_lr_fraction": 0.1}, 100),
    ({"name": "cosine", "warmup_fraction": 0.05}, 200),  # the built-in workloads' schedule
    ({"name": "cosine"}, 7),  # no warm-up
    ({"name": "linear", "warmup_steps": 5}, 50),
    ({"name": "linear", "warmup_fraction": 0.1, "final_lr_fraction": 0.5}, 31),
    ({"name": "wsd", "warmup_steps": 10}, 100),
    ({"name": "wsd", "warmup_steps": 10, "decay_shape": "1-sqrt", "decay_fraction": 0.3}, 100),
    ({"name": "wsd", "warmup_fraction": 0.02, "decay_shape": "cosine", "final_lr_fraction": 0.1},
     250),
    ({"name": "wsd", "decay_fraction": 1.0}, 40),  # all cool-down: linear decay
    ({"name": "constant"}, 20),
    ({"name": "constant", "warmup_steps": 3}, 20),
    ({"name": "inverse_sqrt", "warmup_steps": 4}, 60),
    ({"name": "inverse_sqrt"}, 60),
    ({"name": "none"}, 15),  # schedule-free optimizers: the lr is left alone
]


def lrs_per_step(schedule: Schedule | str, total: int, **knobs: Any) -> list[list[float]]:
    """The lr of each param group at every step 0..total of a real training loop (step ``s``'s
    lr is what the ``s``-th ``optimizer.step()`` uses; ``total`` is the value after the last)."""
    params = [torch.nn.Parameter(torch.ones(3)) for _ in GROUP_LRS]
    opt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, GROUP_LRS,
                                                                         strict=True)])
    scheduler = build_scheduler(opt, schedule, total, **knobs)
    seen = []
    for _ in range(total):
        seen.append([g["lr"] for g in opt.param_groups])
        for p in params:
            p.grad = torch.ones(3)
        opt.step()
        scheduler.step()
    seen.append([g["lr"] for g in opt.param_groups])
    assert scheduler.get_last_lr() == seen[-1]
    return seen


@pytest.mark.parametrize(("fields", "total"), CASES,
                         ids=[f"{f['name']}-{i}" for i, (f, _) in enumerate(CASES)])
def test_every_step_follows_the_closed_form_in_every_group(fields: dict[str, Any],
                                                            total: int) -> None:
    knobs = {k: v for k, v in fields.items() if k != "name"}
    seen = lrs_per_step(fields["name"], total, **knobs)
    for step, lrs in enumerate(seen):
        factor = closed_form(fields, step, total)
        assert lrs == pytest.approx([lr * factor for lr in GROUP_LRS], rel=1e-12, abs=0), step
    # the record built first gives the same scheduler
    assert lrs_per_step(Schedule(**fields), total) == seen


def factors(fields: dict[str, Any], total: int) -> list[float]:
    return [lrs[1] / GROUP_LRS[1] for lrs in lrs_per_step(Schedule(**fields), total)]


def test_cosine_at_its_landmarks() -> None:
    f = factors({"name": "cosine", "warmup_steps": 10, "final_lr_fraction": 0.1}, 100)
    assert f[0] == pytest.approx(0.1)  # the first step already moves
    assert f[9] == pytest.approx(1.0)  # end of warm-up: the peak
    assert f[10] == pytest.approx(1.0)  # decay starts at the peak
    assert f[55] == pytest.approx(0.55)  # half-way through the decay: (1 + f) / 2
    assert f[99] == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 89 / 90)) / 2)
    assert f[99] > 0.1 and f[100] == pytest.approx(0.1)  # the last step still moves


def test_linear_at_its_landmarks() -> None:
    f = factors({"name": "linear", "warmup_steps": 5}, 50)
    assert f[0] == pytest.approx(0.2) and f[4] == pytest.approx(1.0) and f[5] == pytest.approx(1.0)
    assert f[30] == pytest.approx(1 - 25 / 45)
    assert f[49] == pytest.approx(1 / 45) and f[50] == 0.0


def test_wsd_phase_boundaries() -> None:
    f = factors({"name": "wsd", "warmup_steps": 10}, 100)  # stable until step 80 (20% decay)
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(x == 1.0 for x in f[10:81])
    assert f[81] == pytest.approx(1 - 1 / 20)
    assert f[90] == pytest.approx(0.5) and f[100] == 0.0
    g = factors({"name": "wsd", "warmup_steps": 10, "decay_shape": "1-sqrt"}, 100)
    assert g[80] == 1.0 and g[90] == pytest.approx(1 - math.sqrt(0.5)) and g[100] == 0.0
    h = factors({"name": "wsd", "warmup_steps": 10, "decay_shape": "cosine",
                 "final_lr_fraction": 0.1}, 100)
    assert h[79] == 1.0 and h[90] == pytest.approx(0.55) and h[100] == pytest.approx(0.1)


def test_constant_and_inverse_sqrt_at_their_landmarks() -> None:
    assert factors({"name": "constant", "warmup_steps": 3}, 10)[:5] == pytest.approx(
        [1 / 3, 2 / 3, 1.0, 1.0, 1.0])
    f = factors({"name": "inverse_sqrt", "warmup_steps": 4}, 20)
    assert f[0] == pytest.approx(0.25) and f[3] == pytest.approx(1.0)
    assert f[15] == pytest.approx(0.5)  # sqrt(4 / 16)
    no_warmup = factors({"name": "inverse_sqrt"}, 4)
    assert no_warmup == pytest.approx([1, 0.5**0.5, 3**-0.5, 0.5, 0.2**0.5])


def test_schedules_without_a_horizon_need_no_total_steps() -> None:
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.4)
    scheduler = build_scheduler(opt, "inverse_sqrt", warmup_steps=4)
    for _ in range(15):
        opt.step()
        scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)
    build_scheduler(torch.optim.SGD([p], lr=0.1), "constant")
    with pytest.raises(ValueError, match=r"^total_steps: .*warmup_fraction"):
        build_scheduler(torch.optim.SGD([p], lr=0.1), "constant", warmup_fraction=0.1)


def test_other_learning_rates_of_a_group_follow_the_schedule() -> None:
    """MuonAdamW keeps its AdamW side's lr in ``aux_lr``: it is scaled like ``lr``."""
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([{"params": [p], "lr": 0.1, "aux_lr": 3e-4}])
    scheduler = build_scheduler(opt, "linear", 10, warmup_steps=2)
    for step in range(10):
        factor = closed_form({"name": "linear", "warmup_steps": 2}, step, 10)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * factor)
        assert opt.param_groups[0]["aux_lr"] == pytest.approx(3e-4 * factor)
        opt.step()
        scheduler.step()


def test_scheduler_state_dict_resumes_the_schedule() -> None:
    def build() -> tuple[torch.optim.Optimizer, optimizers.ScheduledLR]:
        p = torch.nn.Parameter(torch.ones(2))
        opt = torch.optim.SGD([{"params": [p], "lr": 0.5}, {"params": [], "lr": 0.05}])
        return opt, build_scheduler(opt, "wsd", 30, warmup_steps=3, final_lr_fraction=0.1)

    opt, scheduler = build()
    for _ in range(12):
        opt.step()
        scheduler.step()
    saved = (opt.state_dict(), scheduler.state_dict())
    straight = []
    for _ in range(18):
        opt.step()
        scheduler.step()
        straight.append(scheduler.get_last_lr())
    opt, scheduler = build()
    opt.load_state_dict(saved[0])
    scheduler.load_state_dict(saved[1])
    resumed = []
    for _ in range(18):
        opt.step()
        scheduler.step()
        resumed.append(scheduler.get_last_lr())
    assert resumed == straight
    assert straight[-1] == pytest.approx([0.05, 0.005])


# ------------------------------------------------------------------------------------------------
# The record: defaults, JSON, validation


def test_record_fills_the_defaults_of_each_schedule_and_round_trips_through_json() -> None:
    assert Schedule("cosine").to_dict() == {
        "name": "cosine", "warmup_steps": 0, "warmup_fraction": None, "final_lr_fraction": 0.0,
        "decay_fraction": None, "decay_shape": None,
    }  # fmt: skip
    assert Schedule("wsd", warmup_fraction=0.01).to_dict() == {
        "name": "wsd", "warmup_steps": None, "warmup_fraction": 0.01, "final_lr_fraction": 0.0,
        "decay_fraction": 0.2, "decay_shape": "linear",
    }  # fmt: skip
    assert Schedule("inverse_sqrt", warmup_steps=100).to_dict()["final_lr_fraction"] is None
    for fields, _ in CASES:
        schedule = Schedule(**fields)
        again = Schedule.from_dict(json.loads(json.dumps(schedule.to_dict())))
        assert again == schedule and hash(again) == hash(schedule)
    with pytest.raises(AttributeError):
        Schedule("cosine").name = "linear"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "step"}, "name"),
        ({"name": "cosine", "warmup_steps": 5, "warmup_fraction": 0.1}, "warmup_fraction"),
        ({"name": "cosine", "warmup_steps": -1}, "warmup_steps"),
        ({"name": "cosine", "warmup_steps": 2.5}, "warmup_steps"),
        ({"name": "cosine", "warmup_steps": True}, "warmup_steps"),
        ({"name": "cosine", "warmup_fraction": 1.5}, "warmup_fraction"),
        ({"name": "cosine", "warmup_fraction": math.nan}, "warmup_fraction"),
        ({"name": "linear", "final_lr_fraction": -0.1}, "final_lr_fraction"),
        ({"name": "cosine", "final_lr_fraction": "0.1"}, "final_lr_fraction"),
        ({"name": "constant", "final_lr_fraction": 0.1}, "final_lr_fraction"),
        ({"name": "inverse_sqrt", "final_lr_fraction": 0.0}, "final_lr_fraction"),
        ({"name": "cosine", "decay_fraction": 0.2}, "decay_fraction"),
        ({"name": "linear", "decay_shape": "cosine"}, "decay_shape"),
        ({"name": "wsd", "decay_fraction": 0.0}, "decay_fraction"),
        ({"name": "wsd", "decay_fraction": 1.2}, "decay_fraction"),
        ({"name": "wsd", "decay_shape": "exponential"}, "decay_shape"),
        ({"name": "none", "warmup_steps": 3}, "warmup_steps"),
        ({"name": "none", "warmup_fraction": 0.05}, "warmup_fraction"),
        ({"name": "none", "final_lr_fraction": 0.0}, "final_lr_fraction"),
        ({"name": "none", "decay_shape": "linear"}, "decay_shape"),
    ],
)
def test_invalid_fields_are_rejected_by_name(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        Schedule(**fields)


def test_from_dict_rejects_unknown_and_missing_fields() -> None:
    with pytest.raises(ValueError, match=r"^warmup: not a schedule field"):
        Schedule.from_dict({"name": "cosine", "warmup": 5})
    with pytest.raises(ValueError, match=r"^name: missing"):
        Schedule.from_dict({"warmup_steps": 5})


@pytest.mark.parametrize(
    ("schedule", "total", "knobs", "field"),
    [
        ("cosine", None, {}, "total_steps"),
        ("cosine", 0, {}, "total_steps"),
        ("linear", 12.5, {}, "total_steps"),
        ("cosine", 100, {"warmup_steps": 101}, "warmup_steps"),
        ("constant", 10, {"warmup_steps": 11}, "warmup_steps"),
        ("wsd", 100, {"warmup_steps": 90}, "decay_fraction"),
        (Schedule("cosine"), 100, {"warmup_steps": 3}, "warmup_steps"),
        (42, 100, {}, "schedule"),
    ],
)
def test_build_scheduler_rejects_what_does_not_fit(
    schedule: Any, total: Any, knobs: dict[str, Any], field: str
) -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match=f"^{field}: "):
        build_scheduler(opt, schedule, total, **knobs)
    assert opt.param_groups[0]["lr"] == 0.1 and "initial_lr" not in opt.param_groups[0]


def test_schedule_free_optimizers_are_recognised_and_switched_for_evaluation() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    adamw = optimizers.create("adamw", [p])
    free = optimizers.create("schedulefree_sgd", [p], lr=0.1)
    assert not optimizers.is_schedule_free(adamw)
    assert optimizers.is_schedule_free(free)
    for _ in range(2):  # after one step x = y = z (the first average is z itself)
        p.grad = torch.ones(3)
        free.step()
    y = p.detach().clone()
    with optimizers.evaluation_mode(free):
        assert not free.train_mode  # type: ignore[attr-defined]
        assert not torch.equal(p, y)  # x, not y
    assert free.train_mode  # type: ignore[attr-defined]
    torch.testing.assert_close(p.detach(), y)
    with optimizers.evaluation_mode(adamw):  # other optimizers: nothing happens
        pass


def test_a_schedule_says_what_it_is() -> None:
    assert Schedule("cosine", warmup_fraction=0.05).describe() == (
        "5% warm-up, then cosine decay to 0")
    assert Schedule("linear", warmup_fraction=0.06, final_lr_fraction=0.1).describe() == (
        "6% warm-up, then linear decay to 10% of the peak")
    assert Schedule("wsd", warmup_steps=2000, decay_shape="1-sqrt").describe() == (
        "2000-step warm-up, then the peak held until the last 20% of the steps, then a 1-sqrt "
        "decay to 0")
    assert Schedule("constant").describe() == "a constant lr, no warm-up"
    assert Schedule("inverse_sqrt", warmup_steps=4000).describe() == (
        "4000-step warm-up, then decay as 1/sqrt(step)")
    assert Schedule("none").describe() == "no schedule: the lr stays as set"


def test_build_scheduler_takes_the_records_fields_as_json() -> None:
    fields: dict[str, Any] = {"name": "wsd", "warmup_steps": 5, "warmup_fraction": None,
                              "final_lr_fraction": 0.1, "decay_fraction": 0.3,
                              "decay_shape": "cosine"}
    as_json = json.loads(json.dumps(fields))
    assert lrs_per_step(as_json, 50) == lrs_per_step(Schedule(**fields), 50)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match=r"^warmup_steps: pass either"):
        build_scheduler(opt, as_json, 50, warmup_steps=3)
    with pytest.raises(ValueError, match=r"^warmup: not a schedule field"):
        build_scheduler(opt, {"name": "cosine", "warmup": 3}, 50)
    # 'none' needs no horizon and leaves every lr alone
    scheduler = build_scheduler(opt, {"name": "none"})
    for _ in range(3):
        opt.step()
        scheduler.step()
    assert opt.param_groups[0]["lr"] == 0.1
