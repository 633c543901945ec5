"""Where the rules were wrong: each rule of ``tuner.rules.RULES`` held against finished jobs.

:func:`rule_insights` takes a history (``JobOutcome``s; only those that count,
``JobOutcome.counts``, are used) and returns, per rule, how its advice fared on the jobs it
fired on. The definitions:

* **fired on**: the jobs whose task the rule ``applies`` to (``jobs``).
* **top pick**: the optimizer the rule's ``weights`` favour most: among the optimizers it
  multiplies by more than 1, the one ranked first when the rule alone is applied to
  ``BASE_WEIGHTS`` (highest base weight x factor; ties by name). So ``convolutional`` picks
  SGD with momentum (1.5 x 6) and ``reinforcement_learning`` Adam (3 x 3, above RMSProp's
  0.5 x 4). Rules that favour no optimizer (the lr laws, ``lion_from_adamw``, the memory
  penalty) have none.
* **winner**: ``JobOutcome.winner``, the optimizer with the job's best value. ``decided``
  counts the jobs with one.
* ``top_pick_won``: the share of the decided jobs it fired on whose winner is its top pick
  (null without a top pick or a decided job). ``top_pick_tried``: of those jobs, how many ran
  the top pick at all (a pick never tried cannot win).
* ``median_lr_ratio``: the median, over the jobs it fired on, of the winner's best lr divided by
  ``tuner.prior.rules_lr(task, winner)``, the lr the rules (all of them, no evidence) give the
  winner on that task: above 1, the tuned lr lay above the rules' default. For a rule that
  sets lrs itself (an lr law, ``lion_from_adamw``, fine-tuning's bands), only the jobs won by
  an optimizer whose lr it sets count: a job won by another says nothing about that law. Jobs
  whose winner has no lr (or is not registered here) are left out; ``lr_jobs`` counts the
  rest. With an even count, the median is the geometric mean of the middle two (ratios are
  compared in log).
* ``examples``: up to ``EXAMPLES`` job ids, those where the rule disagreed most first: its top
  pick lost, then the largest ``|log lr ratio|``, then the newest.

The rows come in the order "where the rules disagree most with the history" first: rules that
fired before those that never did; then the lowest ``top_pick_won`` (a rule without a top pick
counts as 1, so only its lrs can put it first); then the largest ``|log median_lr_ratio|``;
then more jobs; then table order.

The ``prior`` row holds the rules together: its per-job top pick is the rules-alone top-1,
``tuner.prior.recommend(task, top_k=1, evidence=())`` (memory fit included), over every job
that counts.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import optimizers
from tuner.evidence.history import JobOutcome
from tuner.prior import recommend, rules_lr
from tuner.rules import BASE_WEIGHTS, DEFAULT_BASE_WEIGHT, RULES, Rule, Scale
from tuner.task import TaskDescription

EXAMPLES = 5
PRIOR_ROW = "prior"


def lr_targets(rule: Rule) -> frozenset[str] | None:
    """The optimizers whose lr ``rule`` sets or scales; None when it sets no lr."""
    touched = [a.optimizers for a in rule.adjust
               if "lr" in (a.hyperparameters if isinstance(a, Scale) else (a.hyperparameter,))]
    return frozenset().union(*touched) if touched else None


def top_pick(rule: Rule) -> str | None:
    """The optimizer ``rule`` favours most (module docstring), None when it favours none."""
    favoured = [(BASE_WEIGHTS.get(name, DEFAULT_BASE_WEIGHT) * factor, name)
                for name, factor in rule.weights.items() if name != "*" and factor > 1.0]
    if not favoured:
        return None
    return min(favoured, key=lambda pair: (-pair[0], pair[1]))[1]


@dataclass(frozen=True)
class InsightRow:
    """One rule (or ``prior``, the rules together) against the jobs it fired on."""

    rule: str
    top_pick: str | None  # None for a rule that favours no optimizer, and for the prior row
    jobs: int
    decided: int
    top_pick_won: float | None
    top_pick_tried: int | None
    median_lr_ratio: float | None
    lr_jobs: int
    examples: tuple[str, ...]


@dataclass(frozen=True)
class RuleInsights:
    jobs: int  # outcomes that count
    ignored: int  # outcomes with too few completed trials to count
    prior: InsightRow
    rules: tuple[InsightRow, ...]  # disagreeing most first


@dataclass(frozen=True)
class _Job:
    outcome: JobOutcome
    order: int  # position in the history, oldest 0
    winner: str | None
    tried: frozenset[str]
    lr_ratio: float | None


def _lr_ratio(outcome: JobOutcome, winner: str | None, known: frozenset[str]) -> float | None:
    if winner is None or winner not in known:
        return None
    result = next(r for r in outcome.per_optimizer if r.optimizer == winner)
    lr = result.best_hyperparameters.get("lr")
    rules = rules_lr(outcome.task, winner)
    if lr is None or rules is None or not (math.isfinite(lr) and lr > 0 and rules > 0):
        return None
    return float(lr) / rules


def _jobs(outcomes: Iterable[JobOutcome]) -> tuple[list[_Job], int]:
    known = frozenset(optimizers.names())
    jobs: list[_Job] = []
    ignored = 0
    for outcome in outcomes:
        if not outcome.counts:
            ignored += 1
            continue
        best = outcome.winner
        winner = best.optimizer if best is not None else None
        tried = frozenset(r.optimizer for r in outcome.per_optimizer if r.best_value is not None)
        jobs.append(_Job(outcome, len(jobs) + ignored, winner, tried,
                         _lr_ratio(outcome, winner, known)))
    return jobs, ignored


def _distance(ratio: float | None) -> float:
    return 0.0 if ratio is None else abs(math.log(ratio))


def _median_ratio(ratios: Sequence[float]) -> float | None:
    return math.exp(statistics.median(math.log(r) for r in ratios)) if ratios else None


def _row(name: str, fixed_pick: str | None, jobs: Sequence[_Job],
         pick_of: Callable[[_Job], str | None] | None = None,
         lr_of: frozenset[str] | None = None) -> InsightRow:
    """The row of a rule whose top pick is ``fixed_pick``, or, with ``pick_of``, one whose
    pick depends on the job (the prior's); ``lr_of``: the winners whose lr ratios count (None:
    every winner's)."""
    seen = [(j, fixed_pick if pick_of is None else pick_of(j),
             j.lr_ratio if lr_of is None or j.winner in lr_of else None) for j in jobs]
    has_pick = any(pick is not None for _, pick, _ in seen)
    decided = [(j, pick) for j, pick, _ in seen if j.winner is not None]
    won = sum(1 for j, pick in decided if pick is not None and j.winner == pick)
    ratios = [ratio for _, _, ratio in seen if ratio is not None]
    ranked = sorted(seen, key=lambda s: (s[1] is not None and s[0].winner == s[1],
                                         -_distance(s[2]), -s[0].order))
    return InsightRow(
        rule=name, top_pick=fixed_pick, jobs=len(jobs), decided=len(decided),
        top_pick_won=won / len(decided) if has_pick and decided else None,
        top_pick_tried=(sum(1 for j, pick in decided if pick in j.tried) if has_pick
                        else None),
        median_lr_ratio=_median_ratio(ratios),
        lr_jobs=len(ratios),
        examples=tuple(s[0].outcome.job_id for s in ranked[:EXAMPLES]))


def _disagreement(row: InsightRow, index: int) -> tuple[bool, float, float, int, int]:
    won = 1.0 if row.top_pick_won is None else row.top_pick_won
    return (row.jobs == 0, won, -_distance(row.median_lr_ratio), -row.jobs, index)


def rule_insights(outcomes: Iterable[JobOutcome]) -> RuleInsights:
    """Every rule's row (the rows disagreeing most with the history first) and the prior's."""
    jobs, ignored = _jobs(outcomes)
    prior_top: dict[TaskDescription, str] = {}

    def rules_alone(job: _Job) -> str:
        task = job.outcome.task
        if task not in prior_top:
            prior_top[task] = recommend(task, top_k=1, evidence=()).candidates[0].optimizer
        return prior_top[task]

    rows = [_row(rule.name, top_pick(rule), [j for j in jobs if rule.applies(j.outcome.task)],
                 lr_of=lr_targets(rule))
            for rule in RULES]
    order = sorted(range(len(rows)), key=lambda i: _disagreement(rows[i], i))
    return RuleInsights(jobs=len(jobs), ignored=ignored,
                        prior=_row(PRIOR_ROW, None, jobs, rules_alone),
                        rules=tuple(rows[i] for i in order))
