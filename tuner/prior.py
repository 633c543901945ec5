"""The prior: ``recommend(task)`` ranks optimizers and gives each a hyperparameter prior.

This is the one place that turns a ``TaskDescription`` into a ``Recommendation`` (DESIGN.md's
response contract; the service adds ``id`` and ``created_at``). The rules themselves are data, in
``tuner.rules`` (thresholds, base weights and the ``RULES`` table); this module applies them:

* score: ``BASE_WEIGHTS`` times every applicable rule's factor, normalised over every registered
  optimizer (so the returned scores sum to at most 1), ranked by score then name;
* hyperparameters: the registry's defaults and search space, changed by the rules' adjustments,
  then clamped into ``HYPERPARAMETER_BOUNDS`` with ``low <= default <= high``;
* memory: parameters and gradients at the task's precision plus fp32 optimizer state, per device
  under plain data parallelism (nothing sharded); ``fits`` is null without a budget;
* rationale: the optimizer's ``when_to_use``, then one line per rule that changed its score or a
  value, naming the change; references: the optimizer's, then those rules'.

Pure and deterministic; per-optimizer base data (ranges, rule factors) is cached and values are
only computed for the returned candidates: about 0.1 ms a call with top_k=3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

import optimizers
from optimizers.registry import HYPERPARAMETER_BOUNDS, OptimizerSpec
from tuner.rules import (
    BASE_REFERENCE,
    BASE_WEIGHTS,
    DEFAULT_BASE_WEIGHT,
    RULES,
    Derive,
    MemoryUse,
    Rule,
    Scale,
    SetRange,
    memory_use,
)
from tuner.task import TaskDescription

__all__ = [
    "Candidate",
    "HyperparameterPrior",
    "MemoryEstimate",
    "Recommendation",
    "recommend",
]

# --------------------------------------------------------------------------------------------
# Response models
# --------------------------------------------------------------------------------------------


class HyperparameterPrior(BaseModel):
    """Where to start (``default``) and where to search (``low``..``high``) for one hyperparameter.

    ``complement`` means the range is searched on ``1 - value`` (betas, momentum)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    default: float
    low: float
    high: float
    log: bool
    complement: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> HyperparameterPrior:
        if not self.low <= self.default <= self.high:
            raise ValueError(f"need low <= default <= high, got {self.low}, {self.default}, "
                             f"{self.high}")
        if self.log and (self.low <= 0 or (self.complement and self.high >= 1)):
            raise ValueError("a log range must stay positive")
        return self


class MemoryEstimate(BaseModel):
    """Bytes per device: ``total`` = parameters + gradients (task precision) + fp32 state."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state_bytes: int = Field(ge=0)
    total_bytes: int = Field(ge=0)
    fits: bool | None


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    optimizer: str
    score: float = Field(ge=0.0, le=1.0)
    hyperparameters: dict[str, HyperparameterPrior]
    memory: MemoryEstimate
    rationale: list[str] = Field(min_length=1)
    references: list[str] = Field(min_length=1)


class Recommendation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: TaskDescription
    candidates: list[Candidate]


# --------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------

# name -> (default, low, high, log, complement); lists so adjustments can update them in place.
_Priors = dict[str, list[float]]


@dataclass(frozen=True)
class _Base:
    """What a spec contributes before any rule (cached per registered spec)."""

    spec: OptimizerSpec
    weight: float
    hyperparameters: tuple[tuple[str, float, float, float, bool, bool], ...]
    line: str
    references: tuple[str, ...]
    # Aligned with RULES: the row's score factor for this optimizer, and whether the row can
    # touch it at all (score or value).
    factors: tuple[float, ...]
    touches: tuple[bool, ...]


_BASE_CACHE: dict[str, _Base] = {}


def _base(spec: OptimizerSpec) -> _Base:
    cached = _BASE_CACHE.get(spec.name)
    if cached is not None and cached.spec is spec:
        return cached
    tuned = [hp for hp in spec.tuning_order if hp in spec.search_space]
    tuned += [hp for hp in spec.search_space if hp not in tuned]
    hps = []
    notes: list[str] = []
    for hp in tuned:
        r = spec.search_space[hp]
        default = spec.defaults[hp]
        if r.log and default <= 0:
            # 0 ("off", e.g. weight decay) has no place on a log scale: start at the low end.
            notes.append(f"{hp} default {default:g} is off the log scale, so the prior starts "
                         f"at the range's low end {r.low:.3g}")
            default = r.low
        default, low, high = _finalize(hp, default, r.low, r.high, r.log, r.complement)
        hps.append((hp, default, low, high, r.log, r.complement))
    line = spec.when_to_use + "".join(f" ({note})" for note in notes)
    refs = tuple(dict.fromkeys((*spec.references, BASE_REFERENCE)))
    base = _Base(
        spec, BASE_WEIGHTS.get(spec.name, DEFAULT_BASE_WEIGHT), tuple(hps), line, refs,
        factors=tuple(rule.weight(spec.name) for rule in RULES),
        touches=tuple(rule.targets(spec.name) for rule in RULES),
    )
    _BASE_CACHE[spec.name] = base
    return base


def _inside(hp: str) -> tuple[float, float]:
    """The closed interval of valid values for ``hp`` (open bounds nudged one ulp inside)."""
    bound = HYPERPARAMETER_BOUNDS.get(hp)
    if bound is None:
        return -math.inf, math.inf
    lo = bound.low if bound.low_inclusive else math.nextafter(bound.low, math.inf)
    hi = bound.high if bound.high_inclusive else math.nextafter(bound.high, -math.inf)
    return lo, hi


def _finalize(
    hp: str, default: float, low: float, high: float, log: bool, complement: bool
) -> tuple[float, float, float]:
    """Clamp into validity (positive on a log scale, below 1 when searched as 1 - value) and
    widen the range so that ``low <= default <= high``."""
    lo, hi = _inside(hp)
    if log:
        lo = max(lo, math.ulp(0.0))
        if complement:
            hi = min(hi, math.nextafter(1.0, 0.0))
    default, low, high = (min(hi, max(lo, v)) for v in (default, low, high))
    return default, min(low, default), max(high, default)


def _describe(hp: str, before: list[float], after: list[float]) -> str:
    return (f"{hp} {before[0]:.3g} -> {after[0]:.3g} "
            f"in [{after[1]:.3g}, {after[2]:.3g}]")


def _apply(
    priors: dict[str, _Priors], name: str, hp: str, values: tuple[float, float, float],
) -> str | None:
    """Set ``name``'s ``hp`` prior to ``values`` (finalized); return the change, if any."""
    entry = priors[name].get(hp)
    if entry is None:
        return None
    default, low, high = _finalize(hp, *values, bool(entry[3]), bool(entry[4]))
    if (default, low, high) == tuple(entry[:3]):
        return None
    before = list(entry)
    entry[0], entry[1], entry[2] = default, low, high
    return _describe(hp, before, entry)


def _effects(
    rule: Rule, task: TaskDescription, name: str, priors: dict[str, _Priors], derived: bool
) -> list[str]:
    """Apply ``rule``'s (non-derived or derived) adjustments to optimizer ``name``."""
    out: list[str] = []
    for adj in rule.adjust:
        if name not in adj.optimizers or isinstance(adj, Derive) != derived:
            continue
        if isinstance(adj, Scale):
            f = adj.factor(task)
            for hp in adj.hyperparameters:
                entry = priors[name].get(hp)
                if entry is not None:
                    change = _apply(priors, name, hp, (entry[0] * f, entry[1] * f, entry[2] * f))
                    if change:
                        out.append(f"{change} (x{f:.3g})")
        elif isinstance(adj, SetRange):
            change = _apply(priors, name, adj.hyperparameter, adj.value(task))
            if change:
                out.append(change)
        else:
            source = priors.get(adj.source, {}).get(adj.hyperparameter)
            if source is not None:
                values = (source[0] * adj.default, source[1] * adj.low, source[2] * adj.high)
                change = _apply(priors, name, adj.hyperparameter, values)
                if change:
                    out.append(change)
    return out


def _line(rule: Rule, task: TaskDescription, mem: MemoryUse, effects: list[str]) -> str:
    text = rule.rationale.format(t=task, mem=mem)
    return f"{text} [{'; '.join(effects)}]"


def _memory_line(task: TaskDescription, mem: MemoryUse) -> str:
    return (f"memory: {mem.total_gb:.3g} GB per device fits the {task.memory_budget_gb:g} GB "
            f"budget (params + grads in {task.precision}, fp32 state; plain data parallel over "
            f"{task.num_devices} device(s), nothing sharded; activations not counted)")


def recommend(task: TaskDescription, top_k: int = 3) -> Recommendation:
    """Rank every registered optimizer for ``task`` and return the ``top_k`` best as candidates.

    Raises ``ValueError`` unless ``1 <= top_k <= len(optimizers.names())``.
    """
    specs = optimizers.specs()
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(specs):
        raise ValueError(f"top_k: must be an integer in 1..{len(specs)}, got {top_k!r}")
    bases = {spec.name: _base(spec) for spec in specs}
    fired = [i for i, rule in enumerate(RULES) if rule.applies(task)]

    # Scores: every optimizer, since they are normalised over the whole catalog.
    weights: dict[str, float] = {}
    rows: dict[str, list[int]] = {}  # the fired rules that touch each optimizer, in table order
    for name, b in bases.items():
        weight = b.weight
        mine: list[int] = []
        for i in fired:
            if not b.touches[i]:
                continue
            only_for = RULES[i].only_for
            if only_for is not None and not only_for(task, b.spec):
                continue
            weight *= b.factors[i]
            mine.append(i)
        weights[name] = weight
        rows[name] = mine
    total = math.fsum(weights.values())
    ranked = sorted(weights, key=lambda n: (-weights[n], n))[:top_k]

    # Values: only for the returned candidates and the optimizers they derive values from.
    needed = dict.fromkeys(ranked)
    for name in ranked:
        for i in rows[name]:
            for adj in RULES[i].adjust:
                if isinstance(adj, Derive) and name in adj.optimizers and adj.source in bases:
                    needed.setdefault(adj.source)
    priors: dict[str, _Priors] = {
        name: {hp: [d, lo, hi, float(lg), float(c)]
               for hp, d, lo, hi, lg, c in bases[name].hyperparameters}
        for name in needed
    }
    effects: dict[tuple[str, int], list[str]] = {}
    for derived in (False, True):
        for name in needed:
            for i in rows[name]:
                out = effects.setdefault((name, i), [])
                if not derived and bases[name].factors[i] != 1.0:
                    out.append(f"score x{bases[name].factors[i]:g}")
                out += _effects(RULES[i], task, name, priors, derived)

    candidates: list[Candidate] = []
    for name in ranked:
        base = bases[name]
        mem = memory_use(task, base.spec)
        lines = [base.line]
        refs = list(base.references)
        for i in rows[name]:
            if effects[name, i]:
                rule = RULES[i]
                lines.append(_line(rule, task, mem, effects[name, i]))
                if rule.reference not in refs:
                    refs.append(rule.reference)
        if mem.fits:
            lines.append(_memory_line(task, mem))
        candidates.append(Candidate(
            optimizer=name,
            score=min(1.0, weights[name] / total),
            hyperparameters={
                hp: HyperparameterPrior(default=v[0], low=v[1], high=v[2], log=bool(v[3]),
                                        complement=bool(v[4]))
                for hp, v in priors[name].items()
            },
            memory=MemoryEstimate(state_bytes=mem.state_bytes, total_bytes=mem.total_bytes,
                                  fits=mem.fits),
            rationale=lines,
            references=refs,
        ))
    return Recommendation(task=task, candidates=candidates)
