"""The trial runner turns every way a trial can end into a recorded Optuna state."""

from __future__ import annotations

import math
import time
from typing import ClassVar

import optuna
import pytest
import torch
from optuna.trial import TrialState

from tuner.space import SearchPlan
from tuner.task import TaskDescription
from tuner.trial import run_trial
from tuner.workloads import Reporter, TrialConfig, Workload

PLAN = SearchPlan.build(
    [("adam", 0.6, {"lr": {"default": 1e-2, "low": 1e-3, "high": 1e-1, "log": True}}),
     ("sgd_momentum", 0.3, {"lr": {"default": 0.1, "low": 1e-2, "high": 1.0, "log": True},
                            "momentum": {"default": 0.9, "low": 0.5, "high": 0.99,
                                         "log": True, "complement": True}})],
    n_trials=20,
)


class ToyWorkload(Workload):
    """What this module's test workloads share: a one-parameter task and a plain metric."""

    summary: ClassVar[str] = "test workload"
    task: ClassVar[TaskDescription] = TaskDescription(model_family="other", num_parameters=1)
    metric: ClassVar[str] = "value"


class Scripted(ToyWorkload):
    """Reports the given values, then does what ``ending`` says."""

    name: ClassVar[str] = "scripted"
    default_epochs: ClassVar[int] = 3

    def __init__(self, values: list[float], ending: str = "return", sleep: float = 0.0) -> None:
        self.values = values
        self.ending = ending
        self.sleep = sleep
        self.configs: list[TrialConfig] = []

    def run(self, config: TrialConfig, report: Reporter) -> float:
        self.configs.append(config)
        for epoch, value in enumerate(self.values):
            time.sleep(self.sleep)
            report(epoch, value)
        if self.ending == "raise":
            raise KeyError("boom")
        if self.ending == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return self.values[-1] if self.values else math.nan


def study() -> optuna.Study:
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))


def test_completed_trial_records_value_optimizer_and_hyperparameters() -> None:
    s = study()
    wl = Scripted([3.0, 2.0, 1.0])
    outcome = run_trial(s, PLAN, wl, seed=5, device="cpu")
    trial = s.trials[0]
    assert outcome.state == TrialState.COMPLETE and trial.value == 1.0
    assert trial.intermediate_values == {0: 3.0, 1: 2.0, 2: 1.0}
    assert trial.user_attrs["optimizer"] == outcome.optimizer in PLAN.names
    hps = trial.user_attrs["hyperparameters"]
    assert wl.configs[0].hyperparameters == hps
    run_trial(s, PLAN, wl, seed=5, device="cpu")
    assert [c.seed for c in wl.configs] == [5, 5]  # common random numbers across trials
    rng = PLAN.candidate(outcome.optimizer or "").tuned["lr"]
    assert rng.low <= hps["lr"] <= rng.high


def test_nan_metric_ends_as_diverged_and_the_study_goes_on() -> None:
    s = study()
    run_trial(s, PLAN, Scripted([1.0, math.inf]))
    run_trial(s, PLAN, Scripted([math.nan]))
    run_trial(s, PLAN, Scripted([]))  # returned nan without reporting anything
    run_trial(s, PLAN, Scripted([0.5]))
    states = [t.state for t in s.trials]
    assert states == [TrialState.PRUNED] * 3 + [TrialState.COMPLETE]
    assert [t.user_attrs["reason"] for t in s.trials[:3]] == ["diverged"] * 3
    # nan at the diverging epoch: samplers rank it below every other outcome
    iv = [t.intermediate_values for t in s.trials[:3]]
    assert iv[0][0] == 1.0 and math.isnan(iv[0][1]) and len(iv[0]) == 2
    assert list(iv[1]) == [0] and math.isnan(iv[1][0])
    assert list(iv[2]) == [0] and math.isnan(iv[2][0])
    assert s.best_value == 0.5


class Quadratic(ToyWorkload):
    """Diverges (nan at its first report) when lr > 0.1; else returns (log10 lr + 2) ** 2."""

    name: ClassVar[str] = "quadratic"
    default_epochs: ClassVar[int] = 1

    def run(self, config: TrialConfig, report: Reporter) -> float:
        lr = config.hyperparameters["lr"]
        value = math.nan if lr > 0.1 else (math.log10(lr) + 2) ** 2
        report(0, value)
        return value


def test_tpe_learns_to_avoid_a_region_that_diverges_at_once() -> None:
    """Diverged trials are visible to the sampler: TPE's later proposals leave the diverging
    region (lr > 0.1, half of the log range), which it could not if they ended FAIL."""
    plan = SearchPlan.build(
        [("adam", 1.0, {"lr": {"default": 1e-3, "low": 1e-4, "high": 1e2, "log": True}})],
        n_trials=60, lr_headroom=1.0,
    )
    s = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1, n_startup_trials=10),
                            pruner=optuna.pruners.NopPruner())
    for _ in range(60):
        run_trial(s, plan, Quadratic())
    late = s.trials[30:]
    diverged = sum(t.user_attrs.get("reason") == "diverged" for t in late)
    assert diverged <= 8  # uniform sampling: about 15; diverged trials left FAIL: all 30
    assert s.best_value is not None and s.best_value < 0.05


def test_exception_fails_the_trial_with_its_traceback() -> None:
    s = study()
    outcome = run_trial(s, PLAN, Scripted([1.0], ending="raise"))
    trial = s.trials[0]
    assert outcome.state == TrialState.FAIL
    assert trial.user_attrs["reason"] == "error: KeyError: 'boom'"
    assert "raise KeyError" in trial.user_attrs["traceback"]


def test_cuda_out_of_memory_fails_with_its_own_reason() -> None:
    s = study()
    outcome = run_trial(s, PLAN, Scripted([1.0], ending="oom"))
    assert outcome.state == TrialState.FAIL
    assert s.trials[0].user_attrs["reason"] == "cuda_oom"


def test_per_trial_timeout_is_honoured_at_the_next_report() -> None:
    s = study()
    started = time.monotonic()
    outcome = run_trial(s, PLAN, Scripted([1.0] * 50, sleep=0.02), timeout_s=0.1)
    assert time.monotonic() - started < 0.5
    assert outcome.state == TrialState.PRUNED and outcome.reason == "timeout"
    assert len(s.trials[0].intermediate_values) < 50


def test_cancellation_is_polled_at_every_report() -> None:
    s = study()
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) >= 2

    outcome = run_trial(s, PLAN, Scripted([1.0] * 10), should_stop=should_stop)
    assert outcome.state == TrialState.FAIL and outcome.reason == "cancelled"
    assert len(s.trials[0].intermediate_values) == 2


def test_pruner_decision_prunes_the_trial() -> None:
    s = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=5.0))
    outcome = run_trial(s, PLAN, Scripted([1.0, 10.0, 1.0]))
    assert outcome.state == TrialState.PRUNED and outcome.reason == "pruned"
    assert s.trials[0].intermediate_values == {0: 1.0, 1: 10.0}


def test_plan_namespaces_parameters_and_searches_betas_as_complement() -> None:
    s = study()
    for _ in range(30):
        run_trial(s, PLAN, Scripted([1.0]))
    for t in s.trials:
        name = t.params["optimizer"]
        assert all(k == "optimizer" or k.startswith(f"{name}.") for k in t.params)
        if name == "sgd_momentum" and "sgd_momentum.one_minus_momentum" in t.params:
            mom = t.user_attrs["hyperparameters"]["momentum"]
            assert mom == pytest.approx(1 - t.params["sgd_momentum.one_minus_momentum"])
            assert 0.5 <= mom <= 0.99


def test_budget_policy_tunes_more_hyperparameters_with_more_trials() -> None:
    priors = {"lr": {"default": 1e-3, "low": 1e-4, "high": 1e-2},
              "beta1": {"default": 0.9, "low": 0.5, "high": 0.98, "complement": True},
              "eps": {"default": 1e-8, "low": 1e-10, "high": 1e-6},
              "weight_decay": {"default": 0.01, "low": 5e-3, "high": 1.0}}
    small = SearchPlan.build([("adamw", 1.0, priors)], n_trials=5)
    medium = SearchPlan.build([("adamw", 1.0, priors)], n_trials=20)
    large = SearchPlan.build([("adamw", 1.0, priors)], n_trials=60)
    # the Tuning Playbook's order (its budget policy), decoupled decay or not
    assert list(small.candidates[0].tuned) == ["lr"]
    assert list(medium.candidates[0].tuned) == ["lr", "beta1"]
    assert list(large.candidates[0].tuned) == ["lr", "beta1", "weight_decay"]
    assert small.candidates[0].defaults["weight_decay"] == 0.01
    adam = SearchPlan.build([("adam", 1.0, priors)], n_trials=20)
    assert list(adam.candidates[0].tuned) == ["lr", "beta1"]


def test_warm_start_order_top_default_upper_rung_other_defaults_lower_rung() -> None:
    points = PLAN.warm_start(20)
    assert [(p["optimizer"], p[f"{p['optimizer']}.lr"]) for p in points] == [
        ("adam", pytest.approx(1e-2)),
        ("adam", pytest.approx(3e-2)), ("sgd_momentum", pytest.approx(0.3)),
        ("sgd_momentum", pytest.approx(0.1)),
        ("adam", pytest.approx(1e-2 / 3)), ("sgd_momentum", pytest.approx(0.1 / 3)),
    ]
    assert len(points) <= 10
    assert SearchPlan.from_json(PLAN.to_json()) == PLAN
    assert len(PLAN.warm_start(2)) == 1


def test_one_prior_type_from_registry_through_prior_and_plan() -> None:
    """The registry's search ranges are ``SearchRange``s; the prior's hyperparameters and the
    plan's tuned ranges are ``HyperparameterPrior``s, the same range with a default."""
    import optimizers
    from optimizers import HyperparameterPrior, SearchRange
    from tuner.prior import recommend
    from tuner.tuning import plan_from_recommendation

    assert issubclass(HyperparameterPrior, SearchRange)
    assert all(type(r) is SearchRange
               for spec in optimizers.specs() for r in spec.search_space.values())
    rec = recommend(TaskDescription(model_family="mlp", num_parameters=5_000_000))
    plan = plan_from_recommendation(rec, n_trials=60)
    for cand, planned in zip(rec.candidates, plan.candidates, strict=True):
        for hp, prior in cand.hyperparameters.items():
            assert isinstance(prior, HyperparameterPrior)
            assert planned.defaults[hp] == prior.default
            assert optimizers.get(cand.optimizer).search_space[hp].log == prior.log
        assert all(isinstance(r, HyperparameterPrior) for r in planned.tuned.values())
    with pytest.raises(ValueError, match="low <= default <= high"):
        HyperparameterPrior(1e-4, 1e-2, default=1.0)


def test_plans_stored_before_the_shared_range_type_still_load() -> None:
    stored = ('[{"name": "adam", "score": 0.6, "defaults": {"lr": 0.01}, "tuned": {"lr": '
              '{"default": 0.01, "low": 0.001, "high": 0.1, "log": true, "complement": false}}}]')
    plan = SearchPlan.from_json(stored)
    assert plan.candidates[0].tuned["lr"].default == 0.01
    assert SearchPlan.from_json(plan.to_json()) == plan


# -- schedules in the plan -----------------------------------------------------------------

ADAMW_PRIORS = {"lr": {"default": 1e-3, "low": 1e-4, "high": 1e-2},
                "beta1": {"default": 0.9, "low": 0.5, "high": 0.98, "complement": True},
                "weight_decay": {"default": 0.1, "low": 5e-3, "high": 1.0},
                "eps": {"default": 1e-8, "low": 1e-10, "high": 1e-6},
                "beta2": {"default": 0.999, "low": 0.99, "high": 0.9999, "complement": True}}


def test_schedule_knobs_join_the_space_after_the_optimizers_own_only_at_large_budgets() -> None:
    from optimizers import Schedule

    cosine = Schedule("cosine", warmup_fraction=0.01, final_lr_fraction=0.1)
    plans = {n: SearchPlan.build([("adamw", 1.0, ADAMW_PRIORS, cosine)], n_trials=n)
             for n in (5, 20, 60, 99, 100)}
    for n in (5, 20, 60, 99):
        planned = plans[n].candidates[0]
        assert planned.schedule == cosine and not planned.schedule_tuned
    assert list(plans[60].candidates[0].tuned) == ["lr", "beta1", "weight_decay"]
    large = plans[100].candidates[0]
    assert list(large.tuned) == ["lr", "beta1", "weight_decay", "eps", "beta2"]
    assert {k: (r.low, r.default, r.high, r.log) for k, r in large.schedule_tuned.items()} == {
        "warmup_fraction": (0.0, 0.01, 0.1, False),
        "final_lr_fraction": (0.0, 0.1, 0.1, False)}
    assert large.decay_shapes == ()
    # WSD's shape is a knob; a warm-up in steps and 'none' have no fraction to tune
    wsd = Schedule("wsd", warmup_steps=100, decay_shape="1-sqrt")
    planned = SearchPlan.build([("adamw", 1.0, ADAMW_PRIORS, wsd)], n_trials=100).candidates[0]
    assert list(planned.schedule_tuned) == ["final_lr_fraction"]
    assert planned.decay_shapes == ("linear", "cosine", "1-sqrt")
    free = SearchPlan.build([("schedulefree_adamw", 1.0, {}, Schedule("none"))],
                            n_trials=500).candidates[0]
    assert not free.schedule_tuned and not free.decay_shapes


def test_a_trial_trains_and_records_the_schedule_it_samples() -> None:
    from optimizers import Schedule

    wsd = Schedule("wsd", warmup_fraction=0.02, decay_shape="linear")
    plan = SearchPlan.build([("adamw", 1.0, ADAMW_PRIORS, wsd)], n_trials=100)
    assert SearchPlan.from_json(plan.to_json()) == plan
    s = study()
    for params in plan.warm_start(100):
        s.enqueue_trial(params)
    wl = Scripted([1.0])
    outcomes = [run_trial(s, plan, wl, device="cpu") for _ in range(6)]
    assert outcomes[0].schedule == wsd  # the warm start: the candidate's own schedule
    shapes = set()
    for outcome, config, trial in zip(outcomes, wl.configs, s.trials, strict=True):
        assert outcome.schedule is not None and config.schedule == outcome.schedule
        assert trial.user_attrs["schedule"] == outcome.schedule.to_dict()
        assert 0.0 <= (outcome.schedule.warmup_fraction or 0.0) <= 0.1
        assert trial.params["adamw.schedule.warmup_fraction"] == outcome.schedule.warmup_fraction
        shapes.add(outcome.schedule.decay_shape)
    assert len(shapes) > 1  # the cool-down shape is searched


def test_plans_without_schedules_give_trials_without_one() -> None:
    s = study()
    wl = Scripted([1.0])
    outcome = run_trial(s, PLAN, wl, device="cpu")
    assert outcome.schedule is None and wl.configs[0].schedule is None
    assert "schedule" not in s.trials[0].user_attrs
