"""Workloads: the registry, entry-point loading, and every built-in's training contract."""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from typing import Any

import optuna
import pytest
import torch

from tuner.task import TaskDescription
from tuner.workloads import (
    ENTRY_POINT_GROUP,
    Reporter,
    TrialConfig,
    Workload,
    WorkloadRegistry,
    get_workload,
    workload_names,
    workloads,
)
from tuner.workloads import registry as registry_module
from tuner.workloads.builtin import BUILTIN_WORKLOADS, Rosenbrock
from tuner.workloads.training import (
    WARMUP_FRACTION,
    WORKLOAD_SCHEDULE,
    SupervisedWorkload,
    count_parameters,
)

BUILTIN_NAMES = tuple(cls.name for cls in BUILTIN_WORKLOADS)
EXPECTED_NAMES = (
    "rosenbrock", "digits-mlp", "digits-cnn", "diabetes-mlp", "sequence-lstm",
    "tiny-transformer", "sparse-logistic",
)


class Recorder:
    """A reporter that keeps every (epoch, value) it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []

    def __call__(self, epoch: int, value: float) -> None:
        self.calls.append((epoch, value))

    @property
    def values(self) -> list[float]:
        return [v for _, v in self.calls]


def run(name: str, optimizer: str = "adam", hp: dict[str, float] | None = None, *,
        seed: int = 0, epochs: int | None = None) -> tuple[float, Recorder]:
    recorder = Recorder()
    config = TrialConfig(optimizer, hp or {}, seed=seed, epochs=epochs)
    return get_workload(name).run(config, recorder), recorder


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread, as a CPU trial worker runs: these models are far too small to gain
    from more, and extra threads only fight other processes for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# the built-in catalog


def test_builtin_names_and_order() -> None:
    assert BUILTIN_NAMES == EXPECTED_NAMES
    assert workload_names()[: len(BUILTIN_NAMES)] == BUILTIN_NAMES
    assert tuple(w.name for w in workloads()) == workload_names()
    assert all(isinstance(w, Workload) for w in workloads())


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_builtin_descriptions_are_honest(name: str) -> None:
    w = get_workload(name)
    assert get_workload(name) is w
    assert isinstance(w.task, TaskDescription)
    assert w.direction == "minimize"
    assert w.default_epochs >= 1
    assert w.summary and "\n" not in w.summary
    if isinstance(w, SupervisedWorkload):
        assert w.task.num_parameters == count_parameters(w.build_model())
        assert w.task.dataset_size == len(w.dataset().train)
        assert w.task.batch_size == w.batch_size
    else:
        assert isinstance(w, Rosenbrock)
        assert w.task.num_parameters == w.dims
        assert (w.task.model_family, w.task.task_type, w.metric) == ("other", "other", "objective")


def test_builtin_task_kinds() -> None:
    assert get_workload("sequence-lstm").task.model_family == "rnn"
    lm = get_workload("tiny-transformer").task
    assert (lm.model_family, lm.task_type) == ("transformer", "language_modeling")
    assert get_workload("sparse-logistic").task.sparse_features
    assert get_workload("diabetes-mlp").task.task_type == "regression"
    assert get_workload("diabetes-mlp").metric == "val_mse"
    assert get_workload("digits-cnn").task.model_family == "cnn"


@pytest.mark.parametrize("name", [n for n in EXPECTED_NAMES if n != "rosenbrock"])
def test_data_do_not_depend_on_the_trial(name: str) -> None:
    w = get_workload(name)
    assert isinstance(w, SupervisedWorkload)
    a, b = w.make_dataset(), w.make_dataset()
    for x, y in zip((*a.train.inputs, a.train.target, *a.val.inputs, a.val.target),
                    (*b.train.inputs, b.train.target, *b.val.inputs, b.val.target), strict=True):
        assert torch.equal(x, y)
    assert w.dataset() is w.dataset()


# --------------------------------------------------------------------------------------------
# the training contract of every built-in


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_reports_every_epoch_and_returns_the_last(name: str) -> None:
    final, rec = run(name, epochs=2)
    assert [e for e, _ in rec.calls] == [0, 1]
    assert all(math.isfinite(v) for v in rec.values)
    assert final == rec.values[-1]


def test_default_budget_is_used_without_epochs() -> None:
    final, rec = run("rosenbrock")
    assert [e for e, _ in rec.calls] == list(range(Rosenbrock.default_epochs))
    assert final == rec.values[-1]


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_deterministic_for_a_seed(name: str) -> None:
    first = run(name, seed=3, epochs=1)[1].values
    again = run(name, seed=3, epochs=1)[1].values
    other = run(name, seed=4, epochs=1)[1].values
    assert first == again
    assert first != other


@pytest.mark.parametrize(
    ("name", "good"),
    [
        ("rosenbrock", {"lr": 1e-2}),
        ("digits-mlp", {"lr": 3e-3}),
        ("digits-cnn", {"lr": 3e-3}),
        ("diabetes-mlp", {"lr": 1e-3}),
        ("sequence-lstm", {"lr": 1e-2}),
        ("tiny-transformer", {"lr": 1e-2}),
        ("sparse-logistic", {"lr": 3e-3}),
    ],
)
def test_good_settings_beat_terrible_ones(name: str, good: dict[str, float]) -> None:
    good_value, _ = run(name, "adam", good)
    bad_value, _ = run(name, "sgd", {"lr": 1e-6})
    print(f"{name}: adam {good} -> {good_value:.4f}; sgd lr=1e-6 -> {bad_value:.4f}")
    assert good_value < 0.75 * bad_value


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_huge_learning_rate_is_reported_not_raised(name: str) -> None:
    final, rec = run(name, "sgd", {"lr": 100.0}, epochs=2)
    assert [e for e, _ in rec.calls] == list(range(len(rec.calls)))
    assert 1 <= len(rec.calls) <= 2
    if math.isnan(final):
        # divergence stops training at once: the non-finite epoch is the last report
        assert math.isnan(rec.values[-1])
        assert all(math.isfinite(v) for v in rec.values[:-1])
    else:
        assert len(rec.calls) == 2 and final == rec.values[-1]


def test_divergence_stops_at_the_first_nonfinite_epoch() -> None:
    final, rec = run("rosenbrock", "sgd", {"lr": 0.1})  # the Hessian's scale is ~1e3: blows up
    assert math.isnan(final)
    assert len(rec.calls) == 1 and rec.calls[0][0] == 0 and math.isnan(rec.calls[0][1])


class Stop(Exception):
    pass


@pytest.mark.parametrize("name", ["rosenbrock", "digits-mlp"])
@pytest.mark.parametrize("error", [Stop, optuna.TrialPruned])
def test_reporter_exception_stops_the_run(name: str, error: type[Exception]) -> None:
    seen: list[int] = []

    def report(epoch: int, value: float) -> None:
        seen.append(epoch)
        if epoch == 1:
            raise error("enough")

    reporter: Reporter = report
    with pytest.raises(error, match="enough"):
        get_workload(name).run(TrialConfig("adam", {}, epochs=5), reporter)
    assert seen == [0, 1]


def test_invalid_optimizer_settings_raise_value_error() -> None:
    with pytest.raises(ValueError, match="no-such-opt"):
        run("digits-mlp", "no-such-opt", epochs=1)
    with pytest.raises(ValueError, match="momentum"):
        run("digits-mlp", "adam", {"momentum": 0.9}, epochs=1)
    with pytest.raises(ValueError, match="lr"):
        run("rosenbrock", "adam", {"lr": -1.0}, epochs=1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"device": "nonsense"}, "device"),
        ({"device": ""}, "device"),
        ({"optimizer": ""}, "optimizer"),
    ],
)
def test_trial_config_validation(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"optimizer": "adam", "hyperparameters": {}, **kwargs}
    with pytest.raises(ValueError, match=field):
        TrialConfig(**args)  # type: ignore[arg-type]


def test_trial_config_keeps_its_own_hyperparameters() -> None:
    hp = {"lr": 1e-3}
    config = TrialConfig("adam", hp, device="cuda:1")
    hp["lr"] = 1.0
    assert config.hyperparameters == {"lr": 1e-3}
    with pytest.raises(TypeError):
        config.hyperparameters["lr"] = 2.0  # type: ignore[index]
    assert config == TrialConfig("adam", {"lr": 1e-3}, device="cuda:1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_runs_on_cuda(name: str) -> None:
    rec = Recorder()
    final = get_workload(name).run(TrialConfig("adamw", {}, device="cuda", epochs=2), rec)
    assert math.isfinite(final) and final == rec.values[-1]


def test_default_budget_wall_time_on_one_thread() -> None:
    timings: dict[str, float] = {}
    for w in workloads()[: len(BUILTIN_NAMES)]:
        w.run(TrialConfig("adam", {}, epochs=1), lambda epoch, value: None)  # data, kernels
        start = time.perf_counter()
        value = w.run(TrialConfig("adam", {}), lambda epoch, value: None)
        timings[w.name] = time.perf_counter() - start
        print(f"{w.name:17s} {w.default_epochs:3d} epochs  {timings[w.name]:5.2f} s  "
              f"{w.metric}={value:.4f}")
    assert all(seconds < 10.0 for seconds in timings.values()), timings


# --------------------------------------------------------------------------------------------
# the registry


def test_unknown_name_is_a_value_error_listing_the_known_ones() -> None:
    with pytest.raises(ValueError, match="no-such-workload") as info:
        get_workload("no-such-workload")
    assert "digits-mlp" in str(info.value)
    with pytest.raises(ValueError, match="json:dumps"):
        get_workload("json:dumps")  # names are never imported


class PluginWorkload(Workload):
    name = "plugin-class"
    summary = "A test plugin."
    task = TaskDescription(model_family="other", task_type="other", num_parameters=1)
    metric = "value"
    default_epochs = 2

    def run(self, config: TrialConfig, report: Reporter) -> float:
        for epoch in range(self.resolve_epochs(config)):
            report(epoch, 1.0 / (epoch + 1))
        return 1.0 / self.resolve_epochs(config)


class PluginInstance(PluginWorkload):
    name = "plugin-instance"
    direction = "maximize"


PLUGIN_INSTANCE = PluginInstance()


class ClashingWorkload(PluginWorkload):
    name = "rosenbrock"


class BadEpochs(PluginWorkload):
    name = "bad-epochs"
    default_epochs = 0


class BadName(PluginWorkload):
    name = "has space"


class NoMetric(Workload):
    name = "no-metric"
    summary = "x"
    task = TaskDescription(model_family="other", num_parameters=1)
    default_epochs = 1

    def run(self, config: TrialConfig, report: Reporter) -> float:
        return 0.0


class BrokenInit(PluginWorkload):
    name = "broken-init"

    def __init__(self) -> None:
        raise RuntimeError("cannot start")


def ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


def fresh() -> WorkloadRegistry:
    return WorkloadRegistry(BUILTIN_WORKLOADS, group=None)


def test_register_class_instance_and_duplicates() -> None:
    reg = fresh()
    assert reg.register(PluginWorkload) is PluginWorkload
    assert reg.register(PLUGIN_INSTANCE) is PLUGIN_INSTANCE
    assert reg.get("plugin-instance") is PLUGIN_INSTANCE
    assert isinstance(reg.get("plugin-class"), PluginWorkload)
    reg.register(PluginWorkload)  # the same workload again: a no-op
    assert reg.names() == (*BUILTIN_NAMES, "plugin-class", "plugin-instance")
    with pytest.raises(ValueError, match="already registered"):
        reg.register(ClashingWorkload)
    assert isinstance(reg.get("rosenbrock"), Rosenbrock)


@pytest.mark.parametrize(
    ("item", "error", "match"),
    [
        (BadEpochs, ValueError, "default_epochs"),
        (BadName, ValueError, "name"),
        (NoMetric, ValueError, "metric"),
        (Workload, TypeError, "abstract"),
        (object(), TypeError, "Workload"),
        (len, TypeError, "Workload"),
    ],
)
def test_register_rejects_invalid_workloads(item: object, error: type[Exception],
                                            match: str) -> None:
    reg = fresh()
    with pytest.raises(error, match=match):
        reg.register(item)  # type: ignore[type-var]
    assert reg.names() == BUILTIN_NAMES


def test_entry_points_load_good_ones_and_skip_broken_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    here = __name__
    eps = [
        ep("plugin-class", f"{here}:PluginWorkload"),
        ep("plugin-instance", f"{here}:PLUGIN_INSTANCE"),
        ep("missing-module", "optpilot_test_no_such_module:Thing"),
        ep("missing-attr", f"{here}:DoesNotExist"),
        ep("not-a-workload", "json:dumps"),
        ep("abstract", "tuner.workloads.base:Workload"),
        ep("bad-epochs", f"{here}:BadEpochs"),
        ep("broken-init", f"{here}:BrokenInit"),
        ep("rosenbrock", f"{here}:ClashingWorkload"),
    ]
    reg = fresh()
    with caplog.at_level(logging.WARNING, logger=registry_module.__name__):
        added = reg.load_entry_points(eps)
    assert added == ("plugin-class", "plugin-instance")
    assert reg.get("plugin-instance") is PLUGIN_INSTANCE
    assert reg.get("plugin-instance").direction == "maximize"
    assert isinstance(reg.get("rosenbrock"), Rosenbrock)  # built-ins win
    warned = "\n".join(r.getMessage() for r in caplog.records)
    for skipped in ("missing-module", "missing-attr", "not-a-workload", "abstract",
                    "bad-epochs", "broken-init"):
        assert f"skipping workload entry point {skipped!r}" in warned
    assert "clashes with a built-in workload" in warned
    assert not any(name in warned for name in ("'plugin-class'", "'plugin-instance'"))
    # and the loaded plugin works through the same contract
    rec = Recorder()
    assert reg.get("plugin-class").run(TrialConfig("adam", {}), rec) == 0.5
    assert rec.calls == [(0, 1.0), (1, 0.5)]


def test_entry_points_are_discovered_lazily_and_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        calls.append(group)
        return [ep("plugin-class", f"{__name__}:PluginWorkload")]

    monkeypatch.setattr(registry_module, "entry_points", fake_entry_points)
    reg = WorkloadRegistry(BUILTIN_WORKLOADS)
    assert calls == []
    assert "plugin-class" in reg.names()
    assert isinstance(reg.get("plugin-class"), PluginWorkload)
    reg.workloads()
    assert calls == [ENTRY_POINT_GROUP]


def test_failing_discovery_never_breaks_the_registry(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*, group: str) -> list[EntryPoint]:
        raise OSError("unreadable metadata")

    monkeypatch.setattr(registry_module, "entry_points", broken)
    reg = WorkloadRegistry(BUILTIN_WORKLOADS)
    with caplog.at_level(logging.WARNING, logger=registry_module.__name__):
        assert reg.names() == BUILTIN_NAMES
    assert "entry points" in caplog.text


def test_plugin_registering_itself_at_import_is_not_a_clash() -> None:
    reg = fresh()
    reg.register(PluginWorkload)
    assert reg.load_entry_points([ep("plugin-class", f"{__name__}:PluginWorkload")]) == ()
    assert isinstance(reg.get("plugin-class"), PluginWorkload)


def test_entry_point_name_differing_from_the_workload_name_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = fresh()
    with caplog.at_level(logging.WARNING, logger=registry_module.__name__):
        added = reg.load_entry_points([ep("alias", f"{__name__}:PluginWorkload")])
    assert added == ("plugin-class",)  # the workload's own name is the handle
    assert "'alias'" in caplog.text and "'plugin-class'" in caplog.text
    with pytest.raises(ValueError, match="alias"):
        reg.get("alias")


# --------------------------------------------------------------------------------------------
# the lr schedule of the supervised workloads


def warmup_cosine(step: int, total: int) -> float:
    return WORKLOAD_SCHEDULE.factor(step, total)


def test_warmup_cosine_shape() -> None:
    total = 200
    factors = [warmup_cosine(s, total) for s in range(total)]
    warmup = round(total * WARMUP_FRACTION)
    assert factors[0] == pytest.approx(1 / warmup)
    assert factors[warmup - 1] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(factors[:warmup]))
    assert all(a >= b for a, b in itertools.pairwise(factors[warmup - 1:]))
    assert 0 < factors[-1] < 1e-3
    assert warmup_cosine(0, 1) == 1.0  # one step: at the peak


def test_lr_schedule_sets_every_learning_rate_of_every_group() -> None:
    import optimizers

    w = torch.nn.Linear(4, 4)
    muon = optimizers.create("muon", [w.weight, w.bias], lr=0.02, aux_lr=3e-4)
    scheduler = optimizers.build_scheduler(muon, WORKLOAD_SCHEDULE, total_steps=100)
    for _ in range(50):
        muon.step()  # no gradients: only the schedule moves
        scheduler.step()
    factor = warmup_cosine(50, 100)
    assert muon.param_groups[0]["lr"] == pytest.approx(0.02 * factor)
    assert muon.param_groups[0]["aux_lr"] == pytest.approx(3e-4 * factor)
    groups: list[dict[str, Any]] = [{"params": [w.weight], "lr": 1e-2}, {"params": [w.bias]}]
    adam = optimizers.create("adam", groups, lr=1e-3)
    scheduler = optimizers.build_scheduler(adam, WORKLOAD_SCHEDULE, total_steps=10)
    assert adam.param_groups[1]["lr"] == pytest.approx(1e-3 * warmup_cosine(0, 10))
    for _ in range(9):
        adam.step()
        scheduler.step()
    # peaks are kept, not compounded
    assert [g["lr"] for g in adam.param_groups] == pytest.approx(
        [1e-2 * warmup_cosine(9, 10), 1e-3 * warmup_cosine(9, 10)])


def capture_optimizers(monkeypatch: pytest.MonkeyPatch) -> list[torch.optim.Optimizer]:
    """The optimizers the workloads build from now on (built by the real registry)."""
    import optimizers

    made: list[torch.optim.Optimizer] = []
    create = optimizers.create

    def recording_create(name: str, params: Any, **hp: float) -> torch.optim.Optimizer:
        made.append(create(name, params, **hp))
        return made[-1]

    monkeypatch.setattr(optimizers, "create", recording_create)
    return made


def test_schedule_free_trains_without_a_schedule_and_is_evaluated_at_x(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tuner.workloads.training import build_seeded

    made = capture_optimizers(monkeypatch)
    value, _ = run("digits-mlp", "schedulefree_adamw", {"lr": 5e-3, "warmup_steps": 10},
                   epochs=2)
    value_adam, _ = run("digits-mlp", "adam", {"lr": 5e-3}, epochs=2)
    free, adam = made
    assert free.param_groups[0]["lr"] == 5e-3 and "initial_lr" not in free.param_groups[0]
    assert adam.param_groups[0]["initial_lr"] == 5e-3 and adam.param_groups[0]["lr"] == 0.0
    assert free.train_mode  # type: ignore[attr-defined]  # switched back after evaluating
    # the reported value is the model's loss at x, not at y (where the parameters are now)
    workload = get_workload("digits-mlp")
    assert isinstance(workload, SupervisedWorkload)
    model = build_seeded(0, workload.build_model).eval()
    val = workload.dataset().val

    def loss_with(params: list[torch.Tensor]) -> float:
        with torch.no_grad():
            for p, q in zip(model.parameters(), params, strict=True):
                p.copy_(q)
            return float(workload.loss(model(*val.inputs), val.target))

    at_y = loss_with(free.param_groups[0]["params"])
    free.eval()  # type: ignore[attr-defined]
    at_x = loss_with(free.param_groups[0]["params"])
    assert value == pytest.approx(at_x, rel=1e-6) and at_x != pytest.approx(at_y, rel=1e-6)
    assert math.isfinite(value) and math.isfinite(value_adam)


def test_rosenbrock_reports_a_schedule_free_optimizer_at_x(monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.workloads.builtin import rosenbrock

    made = capture_optimizers(monkeypatch)
    value, _ = run("rosenbrock", "schedulefree_sgd", {"lr": 1e-4}, epochs=1)
    (free,) = made
    x = free.param_groups[0]["params"][0]
    at_y = math.log10(1 + float(rosenbrock(x.detach())))
    free.eval()  # type: ignore[attr-defined]
    at_x = math.log10(1 + float(rosenbrock(x.detach())))
    assert value == pytest.approx(at_x, rel=1e-9) and at_x != pytest.approx(at_y, rel=1e-6)


def test_sequence_labels_are_noisy_at_the_stated_rate() -> None:
    from tuner.workloads.builtin import SequenceLSTM

    w = SequenceLSTM()
    data = w.make_dataset()
    tokens, labels = data.train.inputs[0], data.train.target
    a, b = w.pattern
    clean = ((tokens[:, :-1] == a) & (tokens[:, 1:] == b)).any(dim=1).long()
    flipped = float((clean != labels).float().mean())
    assert abs(flipped - w.label_noise) < 0.02


def capture_lrs(monkeypatch: pytest.MonkeyPatch) -> list[list[float]]:
    """Per optimizer the workloads build from now on, the lr of its first group at each step
    (read by a torch step pre-hook, so it is the lr the step uses)."""
    import optimizers

    seen: list[list[float]] = []
    create = optimizers.create

    def recording_create(name: str, params: Any, **hp: float) -> torch.optim.Optimizer:
        opt = create(name, params, **hp)
        lrs: list[float] = []
        seen.append(lrs)
        opt.register_step_pre_hook(lambda o, args, kwargs: lrs.append(o.param_groups[0]["lr"]))
        return opt

    monkeypatch.setattr(optimizers, "create", recording_create)
    return seen


@pytest.mark.parametrize(("name", "steps"), [("digits-mlp", 2 * 45), ("rosenbrock", 100)])
def test_a_workload_trains_with_the_trials_schedule(monkeypatch: pytest.MonkeyPatch, name: str,
                                                    steps: int) -> None:
    import optimizers

    seen = capture_lrs(monkeypatch)
    wsd = optimizers.Schedule("wsd", warmup_fraction=0.1, decay_fraction=0.3,
                              decay_shape="1-sqrt", final_lr_fraction=0.1)
    lr = 1e-3
    for schedule in (wsd, None):
        config = TrialConfig("adam", {"lr": lr}, epochs=2 if name == "digits-mlp" else 1,
                             schedule=schedule)
        assert math.isfinite(get_workload(name).run(config, Recorder()))
    with_wsd, without = seen
    assert len(with_wsd) == steps
    assert with_wsd == pytest.approx([lr * wsd.factor(s, steps) for s in range(steps)])
    assert with_wsd[-1] > 0.1 * lr  # the last step still moves; the final fraction is after it
    # no schedule: what the workload always did (warm-up + cosine; Rosenbrock constant)
    default = get_workload(name).default_schedule
    expected = [lr * (default.factor(s, steps) if default else 1.0) for s in range(steps)]
    assert without == pytest.approx(expected)


def test_schedule_free_gets_a_schedule_only_when_the_trial_names_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import optimizers

    seen = capture_lrs(monkeypatch)
    linear = optimizers.Schedule("linear", warmup_steps=5)
    for schedule in (None, optimizers.Schedule("none"), linear):
        run_config = TrialConfig("schedulefree_adamw", {"lr": 2e-3}, epochs=1, schedule=schedule)
        get_workload("digits-mlp").run(run_config, Recorder())
    default, none, named = seen
    assert set(default) == set(none) == {2e-3}
    assert named == pytest.approx([2e-3 * linear.factor(s, 45) for s in range(45)])


def test_trial_config_takes_a_schedule_or_its_fields() -> None:
    import optimizers

    fields = {"name": "cosine", "warmup_steps": 3, "final_lr_fraction": 0.1}
    config = TrialConfig("adam", {}, schedule=fields)  # type: ignore[arg-type]
    assert config.schedule == optimizers.Schedule("cosine", warmup_steps=3, final_lr_fraction=0.1)
    with pytest.raises(ValueError, match=r"^schedule: "):
        TrialConfig("adam", {}, schedule="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^warmup: not a schedule field"):
        TrialConfig("adam", {}, schedule={"name": "cosine", "warmup": 3})  # type: ignore[arg-type]
