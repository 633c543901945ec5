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
With 3 candidates the warm start is 9 trials, at most half the budget.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

import optimizers
from optimizers.registry import HYPERPARAMETER_BOUNDS, HyperparameterPrior

OPTIMIZER_PARAM = "optimizer"
COMPLEMENT_PREFIX = "one_minus_"
LR_HEADROOM = 3.0  # the searched lr range ends this many times above the prior's high end
# Warm-start lr multiples of the default: the first rung before the other candidates' defaults,
# the rest after them.
LR_LADDER = (3.0, 1 / 3)
LADDER_CANDIDATES = 3  # the top candidates that get an lr ladder


@dataclass(frozen=True)
class PlannedOptimizer:
    """One candidate of the plan: fixed values for every hyperparameter, ranges (each with its
    default) for the tuned."""

    name: str
    score: float
    defaults: Mapping[str, float]
    tuned: Mapping[str, HyperparameterPrior]


def tuned_count(trials_per_optimizer: float) -> int:
    """How many hyperparameters to tune for an optimizer given its share of the budget."""
    if trials_per_optimizer < 10:
        return 1
    if trials_per_optimizer < 25:
        return 2
    if trials_per_optimizer < 100:
        return 3
    return 5


@dataclass(frozen=True)
class SearchPlan:
    candidates: tuple[PlannedOptimizer, ...]

    @classmethod
    def build(
        cls,
        candidates: Sequence[
            tuple[str, float, Mapping[str, HyperparameterPrior | Mapping[str, Any]]]],
        n_trials: int,
        lr_headroom: float = LR_HEADROOM,
    ) -> SearchPlan:
        """Plan from ``(optimizer, score, {hp: prior})`` triples, ranked best first; a prior is a
        ``HyperparameterPrior`` (or its fields as a mapping). Hyperparameters without a
        prior keep the registry default. The lr range is searched up to ``lr_headroom`` times
        above the prior's high end (1: as given)."""
        if not candidates:
            raise ValueError("optimizers: a search plan needs at least one candidate")
        if not lr_headroom >= 1.0:
            raise ValueError(f"lr_headroom: must be >= 1, got {lr_headroom}")
        share = n_trials / len(candidates)
        lr_max = HYPERPARAMETER_BOUNDS["lr"].high
        planned: list[PlannedOptimizer] = []
        for name, score, priors in candidates:
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
            order = [hp for hp in spec.tuning_order if hp in ranges]
            order += [hp for hp in ranges if hp not in order]
            keep = order[: tuned_count(share)]
            planned.append(PlannedOptimizer(name, float(score), defaults,
                                            {hp: ranges[hp] for hp in keep}))
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

    def suggest(self, trial: optuna.Trial) -> tuple[str, dict[str, float]]:
        """Sample an optimizer and its flat hyperparameters (ready for ``optimizers.create``)."""
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
        return name, values

    def params_for(self, name: str, values: Mapping[str, float]) -> dict[str, Any]:
        """Optuna parameters (for ``enqueue_trial``) that reproduce ``values`` for ``name``."""
        candidate = self.candidate(name)
        params: dict[str, Any] = {OPTIMIZER_PARAM: name}
        for hp, rng in candidate.tuned.items():
            value = min(max(values.get(hp, rng.default), rng.low), rng.high)
            if rng.complement:
                params[f"{name}.{COMPLEMENT_PREFIX}{hp}"] = 1.0 - value
            else:
                params[f"{name}.{hp}"] = value
        return params

    def warm_start(self, n_trials: int) -> list[dict[str, Any]]:
        """Points to enqueue first: the top candidate's default, the first ``LR_LADDER`` rung of
        the top ``LADDER_CANDIDATES``, the other defaults (best-ranked first), then the other
        rungs (rungs outside the range are clamped to it, repeats dropped).

        At most half the budget (and at least the top candidate's default) is spent here.
        """
        defaults = [self.params_for(c.name, c.defaults) for c in self.candidates]
        rungs = [self._lr_rung(factor) for factor in LR_LADDER]
        points = defaults[:1] + rungs[0] + defaults[1:] + [p for rung in rungs[1:] for p in rung]
        limit = max(1, n_trials // 2)
        unique: list[dict[str, Any]] = []
        for p in points:
            if p not in unique:
                unique.append(p)
        return unique[:limit]

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
             "tuned": {hp: r.as_dict() for hp, r in c.tuned.items()}}
            for c in self.candidates
        ])

    @classmethod
    def from_json(cls, text: str) -> SearchPlan:
        return cls(tuple(
            PlannedOptimizer(item["name"], item["score"], item["defaults"],
                             {hp: HyperparameterPrior(**r) for hp, r in item["tuned"].items()})
            for item in json.loads(text)
        ))
