"""The prior: ``recommend(task)`` ranks optimizers and gives each a hyperparameter prior.

This is the one place that turns a ``TaskDescription`` into a ``Recommendation`` (the service adds
``id`` and ``created_at``). The rules themselves are data, in ``tuner.rules`` (thresholds, base
weights, the ``RULES`` table and the evidence constants); this module applies them, in four steps:

1. rules: ``BASE_WEIGHTS`` times every applicable rule's factor, normalised over every registered
   optimizer into the rules' probabilities; hyperparameters start from the registry's defaults
   and search space and are changed by the rules' adjustments, then clamped into
   ``HYPERPARAMETER_BOUNDS`` with ``low <= default <= high``;
2. evidence (``tuner.evidence``): every record of the evidence pool (default: the published
   trainings; the source does not matter) whose task is similar enough (``similarity`` above
   ``SIMILARITY_FLOOR``) gets a weight in (0, 1]. Each optimizer's score is multiplied by
   ``exp(EVIDENCE_SCORE_RATE * E)``, ``E`` the summed weight of the similar records that used it,
   and renormalised (a Bayesian update of the rules' scores, one tempered observation per
   record). A candidate's lr default moves towards the weighted geometric mean of the lrs its
   records used (records of its lr group count ``LR_GROUP_DISCOUNT``), each first carried to this
   task by the rules' own laws (``lr * rules_lr(this task) / rules_lr(record's task)``), by
   ``m = w / (w + EVIDENCE_LR_PSEUDOCOUNT)`` of the way in log; its range moves with it;
3. memory: parameters and gradients at the task's precision plus fp32 optimizer state, per device,
   sharded over ``num_devices`` (ZeRO-3/FSDP, stated as an assumption); ``fits`` is null without a
   budget. Every candidate that fits ranks above every one that does not, and scores follow;
4. schedule: the first row of ``SCHEDULE_RULES`` that applies to the task and optimizer gives the
   lr schedule whose peak the candidate's lr is (``schedule``); then the similar published
   trainings' schedules may change its name (``_schedule_evidence``). A schedule-free optimizer
   gets ``none`` and, when the horizon is stated, its own warm-up (``warmup_steps``);
5. rationale: the optimizer's ``when_to_use``, what the lr means (the peak of which schedule),
   then one line per rule or evidence step that changed its score or a value, naming the
   change, then the schedule's line; references: the optimizer's, then those rules'.

Pure and deterministic; per-optimizer base data is cached, as are the rules' lrs for the
evidence's tasks; values are only computed for the returned candidates.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field

import optimizers
from optimizers.registry import (
    HYPERPARAMETER_BOUNDS,
    HyperparameterPrior,
    OptimizerSpec,
    SearchRange,
)
from optimizers.schedules import SCHEDULE_NAMES, Schedule, ScheduleName
from tuner.evidence.records import (
    Evidence,
    EvidencePool,
    EvidenceRecord,
    Scored,
    published_pool,
)
from tuner.rules import (
    BASE_REFERENCE,
    BASE_WEIGHTS,
    DEFAULT_BASE_WEIGHT,
    EVIDENCE_LR_AGREEMENT,
    EVIDENCE_LR_HALF_WIDTH,
    EVIDENCE_LR_MARGIN,
    EVIDENCE_LR_PSEUDOCOUNT,
    EVIDENCE_PER_CANDIDATE,
    EVIDENCE_SCHEDULE_PSEUDOCOUNT,
    EVIDENCE_SCORE_RATE,
    LR_GROUP_DISCOUNT,
    MEMORY_PENALTY,
    RULES,
    WARMUP_FRACTION,
    Derive,
    MemoryUse,
    Rule,
    Scale,
    SetRange,
    lr_group,
    memory_use,
    open_ended_warmup_steps,
    schedule_rule,
)
from tuner.task import TaskDescription

__all__ = [
    "Candidate",
    "Evidence",
    "HyperparameterPrior",
    "MemoryEstimate",
    "Recommendation",
    "recommend",
    "rules_lr",
]

# --------------------------------------------------------------------------------------------
# Response models
# --------------------------------------------------------------------------------------------


class MemoryEstimate(BaseModel):
    """Bytes per device: ``total`` = parameters + gradients (task precision) + fp32 state,
    sharded over the task's devices (see the candidate's memory rationale)."""

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
    evidence: list[Evidence] = Field(
        default_factory=list,
        description="The most similar trainings that used this optimizer (or, for the lr, one "
                    "of its lr group), most similar first.",
    )
    schedule: Schedule = Field(
        description="The lr schedule the lr belongs to: lr.default is its peak. Build it with "
                    "optimizers.build_scheduler(optimizer, schedule, total_steps); 'none' for "
                    "schedule-free optimizers (their own warm-up is the warmup_steps "
                    "hyperparameter).",
    )


class Recommendation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: TaskDescription
    candidates: list[Candidate]


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------

_Priors = dict[str, HyperparameterPrior]


@dataclass(frozen=True)
class _Base:
    """What a spec contributes before any rule (cached per registered spec)."""

    spec: OptimizerSpec
    weight: float
    hyperparameters: tuple[tuple[str, HyperparameterPrior], ...]
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
        hps.append((hp, _finalize(hp, r, default, r.low, r.high)))
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


def _finalize(hp: str, scale: SearchRange, default: float, low: float,
              high: float) -> HyperparameterPrior:
    """``scale``'s range with these values, clamped into validity (positive on a log scale,
    below 1 when searched as 1 - value) and widened so that ``low <= default <= high``."""
    lo, hi = _inside(hp)
    if scale.log:
        lo = max(lo, math.ulp(0.0))
        if scale.complement:
            hi = min(hi, math.nextafter(1.0, 0.0))
    default, low, high = (min(hi, max(lo, v)) for v in (default, low, high))
    return scale.starting_at(default, min(low, default), max(high, default))


def _describe(hp: str, before: HyperparameterPrior, after: HyperparameterPrior) -> str:
    return (f"{hp} {before.default:.3g} -> {after.default:.3g} "
            f"in [{after.low:.3g}, {after.high:.3g}]")


def _set(priors: _Priors, hp: str, values: tuple[float, float, float]) -> str | None:
    """Set ``hp``'s prior to ``values`` = (default, low, high), finalized; the change, if any."""
    before = priors.get(hp)
    if before is None:
        return None
    after = _finalize(hp, before, *values)
    if after == before:
        return None
    priors[hp] = after
    return _describe(hp, before, after)


def _scale(priors: _Priors, hp: str, factor: float) -> str | None:
    p = priors.get(hp)
    if p is None:
        return None
    change = _set(priors, hp, (p.default * factor, p.low * factor, p.high * factor))
    return f"{change} (x{factor:.3g})" if change else None


def _effects(
    rule: Rule, task: TaskDescription, name: str, priors: dict[str, _Priors], derived: bool
) -> list[str]:
    """Apply ``rule``'s (non-derived or derived) adjustments to optimizer ``name``."""
    out: list[str] = []
    mine = priors[name]
    for adj in rule.adjust:
        if name not in adj.optimizers or isinstance(adj, Derive) != derived:
            continue
        change: str | None
        if isinstance(adj, Scale):
            f = adj.factor(task)
            for hp in adj.hyperparameters:
                change = _scale(mine, hp, f)
                if change:
                    out.append(change)
        elif isinstance(adj, SetRange):
            change = _set(mine, adj.hyperparameter, adj.value(task))
            if change:
                out.append(change)
        else:
            source = priors.get(adj.source, {}).get(adj.hyperparameter)
            if source is not None:
                values = (source.default * adj.default, source.low * adj.low,
                          source.high * adj.high)
                change = _set(mine, adj.hyperparameter, values)
                if change:
                    out.append(change)
    return out


@dataclass(frozen=True)
class _RulesResult:
    """The rules applied to one task: unnormalised weights and, per optimizer, the fired rows
    that touch it (in table order)."""

    task: TaskDescription
    weights: dict[str, float]
    rows: dict[str, tuple[int, ...]]

    def values(self, names: Iterable[str]) -> tuple[dict[str, _Priors], dict[tuple[str, int],
                                                                             list[str]]]:
        """Hyperparameter priors for ``names`` (and the optimizers they derive values from),
        with each row's changes in words."""
        bases = {spec.name: _base(spec) for spec in optimizers.specs()}
        needed = dict.fromkeys(names)
        for name in list(needed):
            for i in self.rows[name]:
                for adj in RULES[i].adjust:
                    if isinstance(adj, Derive) and name in adj.optimizers and adj.source in bases:
                        needed.setdefault(adj.source)
        priors = {name: dict(bases[name].hyperparameters) for name in needed}
        effects: dict[tuple[str, int], list[str]] = {}
        for derived in (False, True):
            for name in needed:
                for i in self.rows[name]:
                    out = effects.setdefault((name, i), [])
                    factor = bases[name].factors[i]
                    if not derived and factor != 1.0:
                        out.append(f"score x{factor:g}")
                    out += _effects(RULES[i], self.task, name, priors, derived)
        return priors, effects


def _apply_rules(task: TaskDescription) -> _RulesResult:
    fired = [i for i, rule in enumerate(RULES) if rule.applies(task)]
    weights: dict[str, float] = {}
    rows: dict[str, tuple[int, ...]] = {}
    for spec in optimizers.specs():
        b = _base(spec)
        weight = b.weight
        mine: list[int] = []
        for i in fired:
            if not b.touches[i]:
                continue
            only_for = RULES[i].only_for
            if only_for is not None and not only_for(task, spec):
                continue
            weight *= b.factors[i]
            mine.append(i)
        weights[spec.name] = weight
        rows[spec.name] = tuple(mine)
    return _RulesResult(task, weights, rows)


@functools.lru_cache(maxsize=16_384)
def rules_lr(task: TaskDescription, optimizer: str) -> float | None:
    """The rules' lr default for ``optimizer`` on ``task`` (no evidence); None without an lr.

    Carries an lr between tasks: what the rules' size, batch and fine-tuning laws say changes
    from one task to the other."""
    priors, _ = _apply_rules(task).values([optimizer])
    lr = priors[optimizer].get("lr")
    return None if lr is None else lr.default


# --------------------------------------------------------------------------------------------
# Evidence
# --------------------------------------------------------------------------------------------


def carried_lr(task: TaskDescription, record: EvidenceRecord) -> float | None:
    """The record's lr carried to ``task`` by the rules' laws (None without an lr)."""
    return _carried_lr(rules_lr(task, record.optimizer), record)


def _carried_lr(here: float | None, record: EvidenceRecord) -> float | None:
    """The record's lr carried to a task whose rules' lr is ``here``: times the ratio of the
    rules' lrs between the two tasks."""
    if record.lr is None or here is None:
        return None
    there = _own_rules_lr(record)
    return None if there is None else record.lr * here / there


def _own_rules_lr(record: EvidenceRecord) -> float | None:
    """``rules_lr`` of the record's own task and optimizer, kept with the record (``memo``):
    computed once per record, not once per request (a large history's records would otherwise
    crowd ``rules_lr``'s cache and re-run the rules)."""
    memo = record.memo
    if "rules_lr" not in memo:
        memo["rules_lr"] = rules_lr(record.task, record.optimizer)
    return memo["rules_lr"]


_Model = TypeVar("_Model", bound=BaseModel)


def _trusted(cls: type[_Model], **values: Any) -> _Model:
    """``cls(**values)`` without validation, for values built from validated parts: every field
    given (none left to its default), as ``model_construct`` would make it at a quarter of its
    cost (it is most of a recommendation's time with many similar past jobs)."""
    model = cls.__new__(cls)
    object.__setattr__(model, "__dict__", values)
    object.__setattr__(model, "__pydantic_fields_set__", set(values))
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model


def _cite(scored: Scored, lr_for_task: float | None) -> Evidence:
    r = scored.record
    return _trusted(
        Evidence,
        source=r.source, citation=r.citation, job_id=r.job_id, label=r.label,
        similarity=round(scored.similarity, 4), weight=round(scored.weight, 4),
        optimizer=r.optimizer, lr=r.lr, batch_size=r.task.batch_size, outcome=r.outcome,
        lr_for_task=lr_for_task, schedule=r.schedule,
        standing=round(r.standing, 4) if r.source == "job" else None,
    )


def _used(record: EvidenceRecord) -> str:
    batch = f", batch {record.task.batch_size}" if record.task.batch_size else ""
    lr = f" at lr {record.lr:.3g}" if record.lr is not None else ""
    if record.source == "job":
        return (f"{record.label} (job {record.job_id}) used {record.optimizer}{lr}{batch}: "
                f"{record.outcome}")
    return f"{record.label} ({record.citation}) used {record.optimizer}{lr}{batch}"


@dataclass(frozen=True)
class _EvidenceScores:
    """The evidence step on scores: each optimizer's evidence weight ``E`` (the summed weights
    of the similar records that used it, each times its standing: 1 for a published choice or a
    job's winner, less for an optimizer that lost in its job) multiplies its score by
    ``exp(EVIDENCE_SCORE_RATE * E)``.

    Read as a Bayesian update: every similar record is an observation of which optimizer was
    chosen (or won) for a task like this one, tempered by its weight; the rules' scores are the
    prior. Optimizers nobody similar used keep their rules' order among themselves."""

    scored: list[Scored]
    total_weight: float
    weight_of: dict[str, float]
    count: dict[str, int]
    by_lr_group: dict[str, list[Scored]]  # the records of each lr group, most similar first

    @classmethod
    def of(cls, scored: list[Scored], names: Iterable[str]) -> _EvidenceScores:
        known = set(names)
        scored = [s for s in scored if s.record.optimizer in known]
        weight_of: dict[str, float] = {}
        count: dict[str, int] = {}
        by_lr_group: dict[str, list[Scored]] = {}
        for s in scored:
            name = s.record.optimizer
            weight_of[name] = weight_of.get(name, 0.0) + s.weight * s.record.standing
            count[name] = count.get(name, 0) + 1
            by_lr_group.setdefault(lr_group(name), []).append(s)
        return cls(scored, math.fsum(s.weight for s in scored), weight_of, count, by_lr_group)

    @functools.cached_property
    def schedules(self) -> _ScheduleVotes:
        return _ScheduleVotes.of(self.scored)

    def factor(self, name: str) -> float:
        return math.exp(EVIDENCE_SCORE_RATE * self.weight_of.get(name, 0.0))

    def line(self, name: str, before: float, after: float) -> str:
        used = self.count.get(name, 0)
        e = self.weight_of.get(name, 0.0)
        return (f"evidence: {len(self.scored)} similar training(s) (total weight "
                f"{self.total_weight:.2f}); {used} used {name}, weight E = {e:.2f}: score "
                f"x exp({EVIDENCE_SCORE_RATE:g} E) = x{self.factor(name):.3g}, then "
                f"renormalised [score {before:.3g} -> {after:.3g}]")


def _blend(rule_p: Mapping[str, float], weight_of: Mapping[str, float]) -> dict[str, float]:
    """The evidence step on scores: the rules' probabilities ``rule_p`` times
    ``exp(EVIDENCE_SCORE_RATE * E)``, ``E = weight_of[name]`` (0 for an optimizer nobody
    similar used), renormalised.

    One function so that ``bench/recommend_accuracy.py --crossval`` can put other blend forms
    in its place and measure them on the published table."""
    boosted = {name: p * math.exp(EVIDENCE_SCORE_RATE * weight_of.get(name, 0.0))
               for name, p in rule_p.items()}
    total = math.fsum(boosted.values())
    return {name: b / total for name, b in boosted.items()}


def _lr_evidence(
    name: str, priors: _Priors, ev: _EvidenceScores
) -> tuple[list[Evidence], list[str]]:
    """Move ``name``'s lr prior (the rules' values) towards its similar records' carried lrs
    (its own and its lr group's); the evidence entries and the rationale lines."""
    lr = priors.get("lr")
    here = None if lr is None else lr.default
    entries: list[Evidence] = []
    closest: Scored | None = None
    logs: list[tuple[float, float]] = []  # (weight, log carried lr)
    measured: list[tuple[float, float]] = []  # (weight, carried lr) of this optimizer's own
    related = ev.by_lr_group.get(lr_group(name), [])
    # most similar first; among equally similar ones, this optimizer's own first
    for s in sorted(related, key=lambda s: (-s.similarity, s.record.optimizer != name)):
        r = s.record
        closest = closest or s
        carried = _carried_lr(here, r)
        if len(entries) < EVIDENCE_PER_CANDIDATE:
            entries.append(_cite(s, carried))
        w = s.weight * (1.0 if r.optimizer == name else LR_GROUP_DISCOUNT)
        if carried is not None and w > 0:
            logs.append((w, math.log(carried)))
        if carried is not None and r.optimizer == name:
            measured.append((s.weight, carried))
    lines: list[str] = []
    if closest is not None:
        lines.append(f"closest {closest.record.source}: {_used(closest.record)} (similarity "
                     f"{closest.similarity:.2f})")
    if logs and lr is not None:
        total = math.fsum(w for w, _ in logs)
        target = math.exp(math.fsum(w * x for w, x in logs) / total)
        m = total / (total + EVIDENCE_LR_PSEUDOCOUNT)
        factor = math.exp(m * (math.log(target) - math.log(lr.default)))
        change = _scale(priors, "lr", factor)
        if change:
            lines.append(
                f"lr from evidence: {len(logs)} similar training(s)' lrs carried to this task by "
                f"the rules' laws, weighted geometric mean {target:.3g} (weight {total:.2f}, "
                f"move m = w/(w+{EVIDENCE_LR_PSEUDOCOUNT:g}) = {m:.2f} of the way in log) "
                f"[{change}]")
    if measured and lr is not None:
        line = _lr_range_from_evidence(priors, measured)
        if line:
            lines.append(line)
    return entries, lines


def _lr_range_from_evidence(priors: _Priors, measured: list[tuple[float, float]]) -> str | None:
    """Reshape the lr range with the similar records' lrs of this optimizer carried to the task
    (``(weight, lr)``): widened to ``EVIDENCE_LR_MARGIN`` beyond any that lies outside it,
    narrowed towards ``EVIDENCE_LR_HALF_WIDTH`` decades around the default when they agree
    (``tuner.rules``)."""
    p = priors["lr"]
    total = math.fsum(w for w, _ in measured)
    logs = [(w, math.log10(x)) for w, x in measured]
    mean = math.fsum(w * x for w, x in logs) / total
    spread = math.sqrt(math.fsum(w * (x - mean) ** 2 for w, x in logs) / total)
    low_seen = min(x for _, x in measured) / EVIDENCE_LR_MARGIN
    high_seen = max(x for _, x in measured) * EVIDENCE_LR_MARGIN
    low, high = min(p.low, low_seen), max(p.high, high_seen)
    how = []
    if low < p.low or high > p.high:
        how.append("one lies outside the range: widened to cover it")
    if total >= 1.0 and spread <= EVIDENCE_LR_AGREEMENT:
        m = total / (total + EVIDENCE_LR_PSEUDOCOUNT)
        band = 10.0 ** EVIDENCE_LR_HALF_WIDTH
        narrow_low, narrow_high = p.default / band, p.default * band
        if narrow_low > low:
            low = min(low_seen, low ** (1.0 - m) * narrow_low ** m)
        if narrow_high < high:
            high = max(high_seen, high ** (1.0 - m) * narrow_high ** m)
        how.append(f"they agree (spread {spread:.2f} decades, weight {total:.2f}): narrowed "
                   f"m = {m:.2f} of the way to +-{EVIDENCE_LR_HALF_WIDTH:g} decades")
    change = _set(priors, "lr", (p.default, low, high))
    if not change:
        return None
    return (f"lr range from {len(measured)} similar training(s)' lrs carried to this task: "
            f"{'; '.join(how)} [{change}]")


# --------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------


def lr_meaning(schedule: Schedule) -> str:
    """What a candidate's lr is, given its schedule."""
    if schedule.name == "none":
        return ("lr is used as given: constant after the optimizer's own warm-up "
                "(warmup_steps), no lr schedule")
    if schedule.name == "constant":
        return f"lr is the constant lr of the schedule: {schedule.describe()}"
    where = " (reached at the end of the warm-up)" if schedule.name == "inverse_sqrt" else ""
    return f"lr is the peak{where} of its schedule: {schedule.describe()}"


def _schedule_free_warmup(task: TaskDescription, priors: _Priors) -> str | None:
    """A schedule-free optimizer's own warm-up: ``WARMUP_FRACTION`` of a stated horizon, the
    open-ended warm-up when it is unknown; nothing when it is not stated."""
    if isinstance(task.training_steps, int):
        steps = round(WARMUP_FRACTION * task.training_steps)
        why = f"{WARMUP_FRACTION:.0%} of the {task.training_steps} training steps"
    elif task.horizon_unknown:
        steps = open_ended_warmup_steps(task)
        why = "the open-ended warm-up (2000 steps, at most 5 epochs)"
    else:
        return None
    priors["warmup_steps"] = HyperparameterPrior(low=0.0, high=float(max(2 * steps, 1)),
                                                 log=False, default=float(steps))
    return f"warmup_steps {steps}: {why}, the optimizer's own linear warm-up"


_DECAYING = ("cosine", "linear", "wsd")


@dataclass(frozen=True)
class _ScheduleVotes:
    """What the similar trainings say of schedules, counted once per request: per schedule
    optpilot can build, the summed weight and number of the trainings that used it and, per
    final lr fraction stated, their weight."""

    votes: dict[str, float]
    counts: dict[str, int]
    finals: dict[str, dict[float, float]]

    @classmethod
    def of(cls, scored: Iterable[Scored]) -> _ScheduleVotes:
        votes: dict[str, float] = {}
        counts: dict[str, int] = {}
        finals: dict[str, dict[float, float]] = {}
        for s in scored:
            name = s.record.schedule
            if name not in SCHEDULE_NAMES:
                continue
            votes[name] = votes.get(name, 0.0) + s.weight
            counts[name] = counts.get(name, 0) + 1
            final = s.record.final_lr_fraction
            if final is not None:
                by_value = finals.setdefault(name, {})
                by_value[final] = by_value.get(final, 0.0) + s.weight
        return cls(votes, counts, finals)


def _schedule_evidence(rules: Schedule, said: _ScheduleVotes) -> tuple[Schedule, str | None]:
    """The rules' schedule, or the one the similar trainings used when their weight for it
    outweighs the rules' (``EVIDENCE_SCHEDULE_PSEUDOCOUNT`` plus the trainings that agree).

    Every similar training counts, whatever its optimizer (a schedule follows the kind of
    training more than the optimizer); those whose schedule optpilot cannot build (step,
    plateau, exponential decay) do not vote. A new name keeps the rules' warm-up; its final lr
    fraction is the one its trainings state most (weight), else the rules' (0 without one)."""
    votes, counts, finals = said.votes, said.counts, said.finals
    if not votes:
        return rules, None
    held = EVIDENCE_SCHEDULE_PSEUDOCOUNT + votes.get(rules.name, 0.0)
    name = max(votes, key=lambda n: (votes[n], n))
    if name == rules.name or votes[name] <= held:
        return rules, None
    final: float | None = None
    if name in _DECAYING:
        stated = finals.get(name)
        final = (max(stated, key=lambda v: (stated[v], v)) if stated
                 else rules.final_lr_fraction or 0.0)
    schedule = Schedule(cast(ScheduleName, name), warmup_steps=rules.warmup_steps,
                        warmup_fraction=rules.warmup_fraction, final_lr_fraction=final)
    line = (f"schedule from evidence: {counts[name]} similar training(s) used {name} (weight "
            f"{votes[name]:.2f}) against the rules' {rules.name} (weight "
            f"{EVIDENCE_SCHEDULE_PSEUDOCOUNT:g} + {votes.get(rules.name, 0.0):.2f}) "
            f"[{schedule.describe()}]")
    return schedule, line


def _schedule(task: TaskDescription, spec: OptimizerSpec, priors: _Priors,
              ev: _EvidenceScores) -> tuple[Schedule, list[str], str]:
    """The candidate's schedule, its rationale lines and its reference."""
    rule = schedule_rule(task, spec)
    schedule = rule.schedule(task)
    lines = [f"schedule: {rule.rationale.format(t=task)} [{schedule.describe()}]"]
    if rule.evidence_may_change:
        schedule, line = _schedule_evidence(schedule, ev.schedules)
        if line is not None:
            lines.append(line)
    if spec.schedule_free and "warmup_steps" in spec.defaults:
        warmup = _schedule_free_warmup(task, priors)
        if warmup is not None:
            lines.append(warmup)
    return schedule, lines, rule.reference


# --------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------


def _line(rule: Rule, task: TaskDescription, mem: MemoryUse, effects: list[str]) -> str:
    text = rule.rationale.format(t=task, mem=mem)
    return f"{text} [{'; '.join(effects)}]"


def _memory_line(task: TaskDescription, mem: MemoryUse) -> str:
    budget = task.memory_budget_gb
    verdict = ("no budget given" if budget is None else
               f"{'fits' if mem.fits else 'does not fit'} the {budget:g} GB budget")
    return (f"memory: {mem.total_gb:.3g} GB per device, {verdict} (params + grads in "
            f"{task.precision}, fp32 state; {mem.layout}; activations not counted)")


def _pool(evidence: EvidencePool | Iterable[EvidenceRecord] | None) -> EvidencePool:
    if evidence is None:
        return published_pool()
    if isinstance(evidence, EvidencePool):
        return evidence
    return EvidencePool(evidence)


@dataclass(frozen=True)
class _Ranking:
    """Scores over the whole catalog: the rules' probabilities, blended with evidence, then
    demoted when they do not fit while others do."""

    rule_p: dict[str, float]
    blended: dict[str, float]
    final: dict[str, float]
    failing: frozenset[str]  # names that do not fit the memory budget
    demote: float  # the factor a failing candidate's score took (1: none)

    def top(self, k: int) -> list[str]:
        """Every fitting candidate first, then by score."""
        return sorted(self.final, key=lambda n: (n in self.failing, -self.final[n], n))[:k]


def _rank(task: TaskDescription, rules: _RulesResult, ev: _EvidenceScores,
          specs: Sequence[OptimizerSpec]) -> _Ranking:
    names = [spec.name for spec in specs]
    rule_total = math.fsum(rules.weights.values())
    rule_p = {name: rules.weights[name] / rule_total for name in names}
    blended = _blend(rule_p, ev.weight_of)
    score = dict(blended)
    # Memory: every candidate that fits ranks above every one that does not.
    failing = frozenset() if task.memory_budget_gb is None else frozenset(
        spec.name for spec in specs if memory_use(task, spec).fits is False)
    fitting_scores = [score[n] for n in names if n not in failing]
    failing_scores = [score[n] for n in names if n in failing]
    demote = 1.0
    if fitting_scores and failing_scores and \
            max(failing_scores) >= MEMORY_PENALTY * min(fitting_scores):
        demote = MEMORY_PENALTY * min(fitting_scores) / max(failing_scores)
        for n in failing:
            score[n] *= demote
    total = math.fsum(score.values())
    return _Ranking(rule_p, blended, {n: score[n] / total for n in names}, failing, demote)


def _candidate(name: str, task: TaskDescription, rules: _RulesResult, priors: _Priors,
               effects: dict[tuple[str, int], list[str]], ev: _EvidenceScores,
               ranking: _Ranking) -> Candidate:
    """One ranked optimizer with its values, schedule, evidence and the words for each."""
    base = _base(optimizers.get(name))
    mem = memory_use(task, base.spec)
    schedule, schedule_lines, schedule_ref = _schedule(task, base.spec, priors, ev)
    lines = [base.line, lr_meaning(schedule)]
    refs = list(base.references)
    for i in rules.rows[name]:
        if effects[name, i]:
            rule = RULES[i]
            lines.append(_line(rule, task, mem, effects[name, i]))
            if rule.reference not in refs:
                refs.append(rule.reference)
    if ev.scored:
        lines.append(ev.line(name, ranking.rule_p[name], ranking.blended[name]))
    entries, lr_lines = _lr_evidence(name, priors, ev)
    lines += lr_lines
    if mem.fits is False and ranking.demote != 1.0:
        lines.append(f"does not fit while others do: ranked below every candidate that fits "
                     f"[score x{ranking.demote:.3g}]")
    lines += schedule_lines
    if schedule_ref not in refs:
        refs.append(schedule_ref)
    if mem.fits or (mem.fits is None and task.num_devices > 1):
        lines.append(_memory_line(task, mem))
    return _trusted(
        Candidate,
        optimizer=name,
        score=min(1.0, ranking.final[name]),
        hyperparameters=priors,
        memory=_trusted(
            MemoryEstimate, state_bytes=mem.state_bytes, total_bytes=mem.total_bytes,
            fits=mem.fits),
        rationale=lines,
        references=refs,
        evidence=entries,
        schedule=schedule,
    )


def recommend(
    task: TaskDescription,
    top_k: int = 3,
    evidence: EvidencePool | Iterable[EvidenceRecord] | None = None,
) -> Recommendation:
    """Rank every registered optimizer for ``task`` and return the ``top_k`` best as candidates.

    ``evidence`` is the pool of past trainings that may move scores and lrs: None for the
    shipped published trainings, an empty pool for the rules alone, or any records (published
    or the service's own jobs, weighed alike by similarity).

    Raises ``ValueError`` unless ``1 <= top_k <= len(optimizers.names())``.
    """
    specs = optimizers.specs()
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(specs):
        raise ValueError(f"top_k: must be an integer in 1..{len(specs)}, got {top_k!r}")
    pool = _pool(evidence)
    rules = _apply_rules(task)
    ev = _EvidenceScores.of(pool.scored(task) if len(pool) else [],
                            [spec.name for spec in specs])
    ranking = _rank(task, rules, ev, specs)
    ranked = ranking.top(top_k)
    priors, effects = rules.values(ranked)  # values and words for the returned ones only
    return _trusted(Recommendation, task=task, candidates=[
        _candidate(name, task, rules, priors[name], effects, ev, ranking) for name in ranked])
