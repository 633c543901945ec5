"""Finished tuning jobs as evidence: what each optimizer reached on a task.

A ``JobOutcome`` is one finished job as the prior needs it, wherever it ran (a service worker, an
ask/tell client, ``tuner.tune``): its task, the metric and its direction, how many trials it
spent, and per optimizer the best value and configuration it reached. The service builds them
from its results table; ``optpilot history export`` writes them as JSON lines
(:meth:`JobOutcome.to_json` / :meth:`JobOutcome.from_json`) and ``import`` reads them back.

``namespace`` keeps the histories of teams that share a server apart: a recommendation only
learns from jobs of its own namespace.

:func:`job_records` turns outcomes into evidence records (``source="job"``), one per optimizer
that completed a trial, weighed like published trainings by the similarity of their tasks. Only
jobs with at least ``MIN_COMPLETED_TRIALS`` completed trials count: below that, which optimizer
"won" says more about the order the trials ran in than about the task.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tuner.contract import Direction, best_first, better
from tuner.evidence.records import EvidenceRecord
from tuner.task import TaskDescription

DEFAULT_NAMESPACE = "default"
MIN_COMPLETED_TRIALS = 5
NAMESPACE_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
"""Lower-case letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit; at most
64 characters (a team or project label, safe in URLs and file names)."""

_NAMESPACE = re.compile(NAMESPACE_PATTERN)


class HistoryError(ValueError):
    """A history entry that cannot be used (a malformed export line, a bad namespace)."""


def check_namespace(value: str) -> str:
    """``value`` if it is a valid namespace, else :class:`HistoryError` saying what is allowed."""
    if not isinstance(value, str) or not _NAMESPACE.fullmatch(value):
        raise HistoryError(f"namespace {value!r}: use 1-64 lower-case letters, digits, '.', '_' "
                           "or '-', starting with a letter or digit")
    return value


@dataclass(frozen=True)
class OptimizerResult:
    """One optimizer's part of a job: trials completed and the best it reached (None: none
    completed with a finite value)."""

    optimizer: str
    completed: int
    best_value: float | None
    best_hyperparameters: Mapping[str, float] = field(default_factory=dict)
    best_schedule: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.completed < 0:
            raise HistoryError(f"{self.optimizer}: completed must be >= 0")
        if self.best_value is not None and not math.isfinite(self.best_value):
            raise HistoryError(f"{self.optimizer}: best_value must be finite or null")


@dataclass(frozen=True)
class JobOutcome:
    """One finished job: its task, metric, trials spent and each optimizer's best."""

    job_id: str
    task: TaskDescription
    metric: str
    direction: Direction
    trials_used: int
    per_optimizer: tuple[OptimizerResult, ...]
    namespace: str = DEFAULT_NAMESPACE
    workload: str | None = None
    best_schedule: Mapping[str, Any] | None = None
    finished_at: datetime | None = None

    def __post_init__(self) -> None:
        if not self.job_id:
            raise HistoryError("job_id must not be empty")
        if self.direction not in ("minimize", "maximize"):
            raise HistoryError(f"direction must be minimize or maximize, got {self.direction!r}")
        if self.trials_used < 0:
            raise HistoryError("trials_used must be >= 0")
        check_namespace(self.namespace)
        names = [r.optimizer for r in self.per_optimizer]
        if len(set(names)) != len(names):
            raise HistoryError(f"job {self.job_id}: an optimizer appears twice")

    def better(self, a: float, b: float) -> bool:
        """Whether value ``a`` beats ``b`` under this job's direction."""
        return better(a, b, self.direction)

    @property
    def completed(self) -> int:
        return sum(r.completed for r in self.per_optimizer)

    @property
    def counts(self) -> bool:
        """Enough completed trials to learn from (``MIN_COMPLETED_TRIALS``)."""
        return self.completed >= MIN_COMPLETED_TRIALS

    def standings(self) -> dict[str, float]:
        """Each optimizer's best, normalised within the job: 1 for the winner, 0 for the worst
        (linear in the value between them); 1 for all when they tie or only one completed.
        Optimizers without a finite best are left out."""
        bests = {r.optimizer: r.best_value for r in self.per_optimizer
                 if r.best_value is not None}
        if not bests:
            return {}
        top = min(bests.values(), key=lambda v: best_first(v, self.direction))
        bottom = max(bests.values(), key=lambda v: best_first(v, self.direction))
        span = abs(bottom - top)
        return {name: 1.0 if span == 0 else 1.0 - abs(value - top) / span
                for name, value in bests.items()}

    @property
    def winner(self) -> OptimizerResult | None:
        standings = self.standings()
        ranked = sorted((r for r in self.per_optimizer if r.optimizer in standings),
                        key=lambda r: (-standings[r.optimizer], r.optimizer))
        return ranked[0] if ranked else None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (one line of ``optpilot history export``)."""
        return {
            "job_id": self.job_id,
            "namespace": self.namespace,
            "task": self.task.model_dump(mode="json", exclude_none=True),
            "workload": self.workload,
            "metric": self.metric,
            "direction": self.direction,
            "trials_used": self.trials_used,
            "per_optimizer": {
                r.optimizer: {"completed": r.completed, "best_value": r.best_value,
                              "best_hyperparameters": dict(r.best_hyperparameters),
                              "best_schedule": (dict(r.best_schedule) if r.best_schedule
                                                else None)}
                for r in self.per_optimizer
            },
            "best_schedule": dict(self.best_schedule) if self.best_schedule else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }

    @classmethod
    def from_json(cls, data: Any) -> JobOutcome:
        """The outcome :meth:`to_json` wrote; :class:`HistoryError` naming the field otherwise."""
        if not isinstance(data, Mapping):
            raise HistoryError("expected a JSON object")
        try:
            task = TaskDescription.model_validate(data["task"])
            per = data.get("per_optimizer", {})
            if not isinstance(per, Mapping):
                raise HistoryError("per_optimizer: expected an object")
            results = tuple(
                OptimizerResult(
                    optimizer=str(name), completed=int(entry.get("completed", 0)),
                    best_value=(None if entry.get("best_value") is None
                                else float(entry["best_value"])),
                    best_hyperparameters={str(k): float(v) for k, v in
                                          (entry.get("best_hyperparameters") or {}).items()},
                    best_schedule=_schedule_fields(entry.get("best_schedule")),
                )
                for name, entry in per.items()
            )
            finished = data.get("finished_at")
            return cls(
                job_id=str(data["job_id"]), task=task, metric=str(data["metric"]),
                direction=data["direction"], trials_used=int(data["trials_used"]),
                per_optimizer=results,
                namespace=str(data.get("namespace") or DEFAULT_NAMESPACE),
                workload=None if data.get("workload") is None else str(data["workload"]),
                best_schedule=data.get("best_schedule") or None,
                finished_at=datetime.fromisoformat(finished) if finished else None,
            )
        except HistoryError:
            raise
        except KeyError as exc:
            raise HistoryError(f"missing field {exc.args[0]!r}") from exc
        except (TypeError, ValueError, AttributeError) as exc:
            raise HistoryError(str(exc)) from exc


def _schedule_fields(value: Any) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise HistoryError("best_schedule: expected an object or null")
    return dict(value)


def _label(outcome: JobOutcome) -> str:
    if outcome.workload:
        return f"job on {outcome.workload}"
    task = outcome.task
    return f"{task.model_family} {task.task_type} job ({task.num_parameters:,} parameters)"


def job_records(outcomes: Iterable[JobOutcome]) -> list[EvidenceRecord]:
    """Evidence records of the outcomes that count (``JobOutcome.counts``): one per optimizer
    with a finite best, carrying its best lr and configuration and its standing in the job."""
    records: list[EvidenceRecord] = []
    for outcome in outcomes:
        if not outcome.counts:
            continue
        standings = outcome.standings()
        ranked = sorted(standings, key=lambda n: -standings[n])
        for result in outcome.per_optimizer:
            if result.optimizer not in standings or result.best_value is None:
                continue
            rank = ranked.index(result.optimizer) + 1
            place = "won" if rank == 1 else f"ranked {rank} of {len(ranked)}"
            lr = result.best_hyperparameters.get("lr")
            records.append(EvidenceRecord(
                source="job", record_id=f"{outcome.job_id}/{result.optimizer}",
                label=_label(outcome), task=outcome.task, optimizer=result.optimizer,
                lr=float(lr) if lr is not None and lr > 0 else None,
                outcome=(f"{place}: best {outcome.metric} {result.best_value:.4g} "
                         f"({outcome.direction}) in {result.completed} completed trials"),
                job_id=outcome.job_id,
                schedule=(None if not result.best_schedule
                          else str(result.best_schedule.get("name"))),
                standing=standings[result.optimizer],
                hyperparameters=dict(result.best_hyperparameters),
                schedule_fields=result.best_schedule,
            ))
    return records
