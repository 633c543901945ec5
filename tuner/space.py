"""The one place that turns a prior (ranked candidates) into an Optuna search space.

The space is define-by-run: a categorical ``optimizer`` choice, then that optimizer's tuned
hyperparameters under namespaced names (``adamw.lr``) so conditional spaces stay valid as the
catalog grows. How many hyperparameters are tuned follows the trial budget (Google's Deep
Learning Tuning Playbook), in each optimizer's ``tuning_order`` (the registry's: lr
first, then beta1 for the Adam family, momentum for SGD); the rest stay at the prior's default.
Betas and momentum are searched on ``1 - value`` (``adamw.one_minus_beta1``) on a log scale.

Learning rate: the searched lr range reaches ``LR_HEADROOM`` times above the prior's high end.
The best constant lr of a model usually lies near its edge of stability (Cohen et al. 2021,
"Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability"; Google's Deep
Learning Tuning Playbook), so the side above the prior is the one worth extending: a diverged
trial costs one trial and the sampler learns from it (``tuner.trial``). Measured on optpilot's
seven built-in workloads (``bench/lr_sweep.py``), the best lr of the top-3 candidates lies within
a decade of the prior's default in most cases, above it more often than below. Fine-tuning keeps
the prior's range (a large lr destroys the pretrained weights).

Warm start: the first trials evaluate what the evidence says before the sampler explores
(Schmidt et al. 2021: several optimizers at their defaults are about as good as tuning one). First
the top candidate's default point; then the upper rung of an lr ladder (x3 the default, half a
decade up) on each of the top candidates, best-ranked first; then the other candidates' defaults;
then the lower rung (/3). The upper rung comes before the other defaults for the reason above:
measured on the built-in workloads (the top 3 at lr x1/3, 1, 3 and 10, median of 5 seeds), the
best x3 point beat the best default on 6 of 7, and on that grid the best of the first 5 trials
came within 2% of plain TPE's 50-trial best (``bench/tuning_efficiency.py``) on 5 of 7 in this
order against 4 of 7 with the defaults first.
With 3 candidates the warm start is 9 trials, at most half the budget. With a history, the
nearest past jobs' best configurations come first, then the rules' top default, then the nearest
one on the same ladder (its lr was carried by the rules' approximate laws: ``start_points``).

Schedules: each candidate carries the lr schedule of its recommendation (``Schedule``; a plan
stored before schedules has none, and its trials train with the workload's own schedule). The
schedule's knobs (warm-up fraction, final lr fraction, WSD's cool-down shape: ``SCHEDULE_KNOBS``)
join the tuned hyperparameters after the optimizer's ``SCHEDULE_KNOBS_AFTER`` most important
ones (lr, beta1 or momentum, weight decay), before eps and beta2. The Tuning Playbook tunes the
lr first and momentum second, and treats the schedule as fixed until those are tuned; once the
peak lr is tuned for a schedule it absorbs most of what the schedule's knobs change (a longer
warm-up or a higher final lr act through the effective lr). So the knobs are tuned only in the
largest budget tier (``tuned_count``: 100 trials per optimizer and more), where everything is.
Optuna names them ``adamw.schedule.warmup_fraction`` and so on; a trial's schedule is the
candidate's with the sampled knobs.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import optuna

import optimizers
from optimizers.registry import HYPERPARAMETER_BOUNDS, HyperparameterPrior
from optimizers.schedules import Schedule
from tuner.contract import OPTIMIZER_PARAM, SOURCE_RULES, history_source
from tuner.rules import FINAL_LR_FRACTION_RANGE, WARMUP_FRACTION_RANGE, WSD_DECAY_SHAPES

# Past jobs' best configurations a new job tries first (SearchPlan.start_points). Swept on
# bench/transfer.py's zoo of 16 generated tasks (leave one out, 5 seeds, 20 trials): 0, 1, 2 and 3
# gave best@5 8.9, 5.4, 6.2 and 6.8% better than the rules alone, and the same best@15 within the
# seeds' spread (0 once worse beyond it): no setting measurably better, so 2 stays.
HISTORY_STARTS = 2
COMPLEMENT_PREFIX = "one_minus_"
LR_HEADROOM = 3.0  # the searched lr range ends this many times above the prior's high end
# Warm-start lr multiples of the default: the first rung before the other candidates' defaults,
# the rest after them.
LR_LADDER = (3.0, 1 / 3)
LADDER_CANDIDATES = 3  # the top candidates that get an lr ladder
SCHEDULE_PREFIX = "schedule."
SCHEDULE_KNOBS = ("warmup_fraction", "final_lr_fraction", "decay_shape")
SCHEDULE_KNOBS_AFTER = 3  # the schedule's knobs come after this many of the optimizer's own


@dataclass(frozen=True)
class PlannedOptimizer:
    """One candidate of the plan: fixed values for every hyperparameter, ranges (each with its
    default) for the tuned; its lr schedule (None in plans stored before schedules), with
    ranges for the tuned numeric knobs and the cool-down shapes to choose from when the shape
    is tuned."""

    name: str
    score: float
    defaults: Mapping[str, float]
    tuned: Mapping[str, HyperparameterPrior]
    schedule: Schedule | None = None
    schedule_tuned: Mapping[str, HyperparameterPrior] = field(default_factory=dict)
    decay_shapes: tuple[str, ...] = ()


class HistoryStart(NamedTuple):
    """A past job's best configuration to try first: its optimizer and flat hyperparameters
    (the lr already carried to this task)."""

    job_id: str
    optimizer: str
    hyperparameters: Mapping[str, float]


class StartPoint(NamedTuple):
    """An enqueued point: Optuna parameters and where they came from (``tuner.contract``)."""

    params: dict[str, Any]
    source: str


class Suggestion(NamedTuple):
    """One trial's configuration: optimizer, flat hyperparameters (for ``optimizers.create``)
    and lr schedule (None: the workload's own)."""

    optimizer: str
    hyperparameters: dict[str, float]
    schedule: Schedule | None


def tuned_count(trials_per_optimizer: float) -> int | None:
    """How many hyperparameters to tune for an optimizer given its share of the budget (None:
    all of them, the schedule's knobs included)."""
    if trials_per_optimizer < 10:
        return 1
    if trials_per_optimizer < 25:
        return 2
    if trials_per_optimizer < 100:
        return 3
    return None


def schedule_knobs(schedule: Schedule) -> dict[str, HyperparameterPrior | tuple[str, ...]]:
    """The knobs of ``schedule`` worth tuning, each with its range (the cool-down shape with
    its choices): a warm-up given as a fraction, a decaying schedule's final lr fraction,
    WSD's shape. Ranges are ``WARMUP_FRACTION_RANGE`` and ``FINAL_LR_FRACTION_RANGE``, widened
    to hold the schedule's own value."""
    knobs: dict[str, HyperparameterPrior | tuple[str, ...]] = {}
    for knob, (low, high) in (("warmup_fraction", WARMUP_FRACTION_RANGE),
                              ("final_lr_fraction", FINAL_LR_FRACTION_RANGE)):
        value = getattr(schedule, knob)
        if value is not None:
            knobs[knob] = HyperparameterPrior(min(low, value), max(high, value), log=False,
                                              default=value)
    if schedule.decay_shape is not None:
        knobs["decay_shape"] = WSD_DECAY_SHAPES
    return knobs


@dataclass(frozen=True)
class SearchPlan:
    candidates: tuple[PlannedOptimizer, ...]

    @classmethod
    def build(
        cls,
        candidates: Sequence[
            tuple[str, float, Mapping[str, HyperparameterPrior | Mapping[str, Any]]]
            | tuple[str, float, Mapping[str, HyperparameterPrior | Mapping[str, Any]],
                    Schedule | None]],
        n_trials: int,
        lr_headroom: float = LR_HEADROOM,
    ) -> SearchPlan:
        """Plan from ``(optimizer, score, {hp: prior}[, schedule])`` tuples, ranked best first;
        a prior is a ``HyperparameterPrior`` (or its fields as a mapping). Hyperparameters
        without a prior keep the registry default; priors of hyperparameters outside the
        optimizer's search space (a schedule-free optimizer's ``warmup_steps``) are fixed
        values, never searched. The lr range is searched up to ``lr_headroom`` times above the
        prior's high end (1: as given)."""
        if not candidates:
            raise ValueError("optimizers: a search plan needs at least one candidate")
        if not lr_headroom >= 1.0:
            raise ValueError(f"lr_headroom: must be >= 1, got {lr_headroom}")
        share = n_trials / len(candidates)
        lr_max = HYPERPARAMETER_BOUNDS["lr"].high
        planned: list[PlannedOptimizer] = []
        for name, score, priors, *rest in candidates:
            schedule = rest[0] if rest else None
            spec = optimizers.get(name)
            defaults = dict(spec.defaults)
            ranges: dict[str, HyperparameterPrior] = {}
            for hp, given in priors.items():
                prior = (given if isinstance(given, HyperparameterPrior)
                         else HyperparameterPrior(**given))
                defaults[hp] = prior.default
                if hp == "lr" and not prior.complement:
                    prior = prior.starting_at(prior.default,
                                              high=max(prior.high,
                                                       min(prior.high * lr_headroom, lr_max)))
                ranges[hp] = prior
            ranges = {hp: r for hp, r in ranges.items() if hp in spec.search_space}
            order = [hp for hp in spec.tuning_order if hp in ranges]
            order += [hp for hp in ranges if hp not in order]
            knobs = schedule_knobs(schedule) if schedule is not None else {}
            at = SCHEDULE_KNOBS_AFTER
            order = order[:at] + [SCHEDULE_PREFIX + k for k in knobs] + order[at:]
            keep = order[: tuned_count(share)]
            tuned_knobs = {k: knobs[k] for k in knobs if SCHEDULE_PREFIX + k in keep}
            shapes = tuned_knobs.pop("decay_shape", ())
            planned.append(PlannedOptimizer(
                name, float(score), defaults, {hp: ranges[hp] for hp in keep if hp in ranges},
                schedule,
                {k: r for k, r in tuned_knobs.items() if isinstance(r, HyperparameterPrior)},
                tuple(shapes) if isinstance(shapes, tuple) else ()))
        return cls(tuple(planned))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.candidates)

    def candidate(self, name: str) -> PlannedOptimizer:
        for c in self.candidates:
            if c.name == name:
                return c
        raise ValueError(f"optimizer: {name!r} is not in this job's search plan")

    # -- sampling ---------------------------------------------------------------------------

    def suggest(self, trial: optuna.Trial) -> Suggestion:
        """Sample an optimizer, its flat hyperparameters (ready for ``optimizers.create``) and
        its lr schedule."""
        name = str(trial.suggest_categorical(OPTIMIZER_PARAM, list(self.names)))
        candidate = self.candidate(name)
        values = dict(candidate.defaults)
        for hp, rng in candidate.tuned.items():
            if rng.complement:
                low, high = 1.0 - rng.high, 1.0 - rng.low
                x = trial.suggest_float(f"{name}.{COMPLEMENT_PREFIX}{hp}", low, high, log=rng.log)
                values[hp] = 1.0 - x
            else:
                values[hp] = trial.suggest_float(f"{name}.{hp}", rng.low, rng.high, log=rng.log)
        schedule = candidate.schedule
        if schedule is not None:
            knobs: dict[str, Any] = {
                knob: trial.suggest_float(f"{name}.{SCHEDULE_PREFIX}{knob}", rng.low, rng.high,
                                          log=rng.log)
                for knob, rng in candidate.schedule_tuned.items()}
            if candidate.decay_shapes:
                knobs["decay_shape"] = trial.suggest_categorical(
                    f"{name}.{SCHEDULE_PREFIX}decay_shape", list(candidate.decay_shapes))
            if knobs:
                schedule = dataclasses.replace(schedule, **knobs)
        return Suggestion(name, values, schedule)

    def params_for(self, name: str, values: Mapping[str, float]) -> dict[str, Any]:
        """Optuna parameters (for ``enqueue_trial``) that reproduce ``values`` for ``name``,
        with the candidate's own schedule."""
        candidate = self.candidate(name)
        params: dict[str, Any] = {OPTIMIZER_PARAM: name}
        for hp, rng in candidate.tuned.items():
            value = min(max(values.get(hp, rng.default), rng.low), rng.high)
            if rng.complement:
                params[f"{name}.{COMPLEMENT_PREFIX}{hp}"] = 1.0 - value
            else:
                params[f"{name}.{hp}"] = value
        for knob, rng in candidate.schedule_tuned.items():
            params[f"{name}.{SCHEDULE_PREFIX}{knob}"] = rng.default
        if candidate.decay_shapes and candidate.schedule is not None:
            params[f"{name}.{SCHEDULE_PREFIX}decay_shape"] = candidate.schedule.decay_shape
        return params

    def warm_start(self, n_trials: int) -> list[dict[str, Any]]:
        """The rules' points to enqueue first (:meth:`start_points` without history)."""
        return [point.params for point in self.start_points(n_trials)]

    def start_points(self, n_trials: int, history: Sequence[HistoryStart] = (),
                     rules_top: str | None = None) -> list[StartPoint]:
        """Points to enqueue first, each with where it came from.

        First the best configurations of the most similar past jobs (``history``, nearest
        first, at most ``HISTORY_STARTS``; clamped into this plan's ranges); then the rules'
        top candidate's default (``rules_top``: the top candidate without history, when
        history moved another to the top), so a misleading history cannot lock the search out;
        then the nearest past job's configuration on the ``LR_LADDER`` (its lr x3 and /3);
        then the rules' ladder: the top candidate's default, the first ``LR_LADDER`` rung of the
        top ``LADDER_CANDIDATES``, the other defaults (best-ranked first), then the other rungs
        (rungs outside the range are clamped to it, repeats dropped).

        At most half the budget (and at least one point) is spent here.
        """
        usable = [h for h in history[:HISTORY_STARTS] if h.optimizer in self.names]
        points = [StartPoint(self.params_for(h.optimizer, h.hyperparameters),
                             history_source(h.job_id)) for h in usable]
        if rules_top is not None and rules_top in self.names:
            top = self.candidate(rules_top)
            points.append(StartPoint(self.params_for(top.name, top.defaults), SOURCE_RULES))
        if usable:  # the nearest one's lr, carried by laws that are approximate, on a ladder
            nearest = usable[0]
            lr = nearest.hyperparameters.get("lr")
            if lr is not None:
                points += [StartPoint(self.params_for(nearest.optimizer,
                                                      {**nearest.hyperparameters,
                                                       "lr": lr * factor}),
                                      history_source(nearest.job_id))
                           for factor in LR_LADDER]
        defaults = [self.params_for(c.name, c.defaults) for c in self.candidates]
        rungs = [self._lr_rung(factor) for factor in LR_LADDER]
        ladder = (defaults[:1] + rungs[0] + defaults[1:]
                  + [p for rung in rungs[1:] for p in rung])
        points += [StartPoint(p, SOURCE_RULES) for p in ladder]
        unique: list[StartPoint] = []
        for point in points:
            if all(point.params != u.params for u in unique):
                unique.append(point)
        return unique[:max(1, n_trials // 2)]

    def _lr_rung(self, factor: float) -> list[dict[str, Any]]:
        """The top candidates' defaults with the lr times ``factor`` (clamped to its range)."""
        points = []
        for c in self.candidates[:LADDER_CANDIDATES]:
            lr = c.tuned.get("lr")
            if lr is None:
                continue
            value = min(max(lr.default * factor, lr.low), lr.high)
            if not math.isclose(value, lr.default):
                points.append(self.params_for(c.name, {**c.defaults, "lr": value}))
        return points

    # -- persistence (study user attributes) ------------------------------------------------

    def to_json(self) -> str:
        return json.dumps([
            {"name": c.name, "score": c.score, "defaults": dict(c.defaults),
             "tuned": {hp: r.as_dict() for hp, r in c.tuned.items()},
             "schedule": None if c.schedule is None else c.schedule.to_dict(),
             "schedule_tuned": {k: r.as_dict() for k, r in c.schedule_tuned.items()},
             "decay_shapes": list(c.decay_shapes)}
            for c in self.candidates
        ])

    @classmethod
    def from_json(cls, text: str) -> SearchPlan:
        """A plan from :meth:`to_json`; plans stored before schedules load without one."""
        return cls(tuple(
            PlannedOptimizer(
                item["name"], item["score"], item["defaults"],
                {hp: HyperparameterPrior(**r) for hp, r in item["tuned"].items()},
                None if item.get("schedule") is None else Schedule.from_dict(item["schedule"]),
                {k: HyperparameterPrior(**r) for k, r in item.get("schedule_tuned", {}).items()},
                tuple(item.get("decay_shapes", ())))
            for item in json.loads(text)
        ))
