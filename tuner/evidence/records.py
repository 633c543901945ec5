"""Evidence records: past trainings a recommendation can lean on, whatever their source.

An ``EvidenceRecord`` is one training: its task description and what it used (optimizer, peak lr,
outcome), with where it comes from: ``source="published"`` and a citation for a paper's training,
``source="job"`` and a job id for one of the service's finished tuning jobs. The prior treats
both alike: a record's influence depends only on its similarity to the task
(``tuner.evidence.similarity``), never on its source.

An ``EvidencePool`` is a set of records with their similarity keys computed once;
``published_pool()`` is the shipped table of published trainings as a pool (the default evidence
of ``tuner.prior.recommend``). ``Evidence`` is what a recommendation shows per candidate: one
record, its similarity to the task and the weight it carried.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Literal, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from tuner.evidence.published import PublishedTraining, published_trainings
from tuner.evidence.similarity import (
    SIMILARITY_FLOOR,
    SIZE_WIDTHS,
    UNKNOWN_SIZE,
    TaskKey,
    categorical_similarity,
    size_factor,
    size_reach,
    size_similarity,
    weight,
)
from tuner.task import TaskDescription

EvidenceSource = Literal["published", "job"]


@dataclass(frozen=True)
class EvidenceRecord:
    """One past training: its task and what it used.

    ``record_id`` is unique within a pool (a table row id, a job id). A published record has a
    ``citation`` (paper and the table or section the values stand in); a job record a
    ``job_id``. ``outcome`` says what is known about how it went. ``schedule`` names the lr
    schedule its lr is the peak of, as its source calls it (``cosine``, ``step``, ...; None when
    unknown), with the final lr fraction when stated.

    A job record also says how its optimizer stood in its job (``standing``: 1 for the job's
    winner, down to 0 for its worst optimizer; published records are 1, the authors' choice)
    and the best configuration it reached (``hyperparameters``, which a new job may try
    first)."""

    source: EvidenceSource
    record_id: str
    label: str
    task: TaskDescription
    optimizer: str
    lr: float | None
    outcome: str
    citation: str | None = None
    job_id: str | None = None
    schedule: str | None = None
    final_lr_fraction: float | None = None
    standing: float = 1.0
    hyperparameters: Mapping[str, float] | None = None
    schedule_fields: Mapping[str, Any] | None = None  # a job's best schedule, as recorded
    # What the prior derives from the record alone, kept with it on first use (the rules' lr
    # on its own task: tuner.prior): a pool's records cost a lookup per request, not a rules
    # evaluation. Not part of the record (no init, repr or comparison).
    memo: dict[str, float | None] = field(default_factory=dict, init=False, repr=False,
                                          compare=False)

    def __post_init__(self) -> None:
        if (self.source == "published") != (self.citation is not None) or (
            (self.source == "job") != (self.job_id is not None)
        ):
            raise ValueError(f"{self.record_id}: a published record needs a citation and a job "
                             "record a job id (and neither the other)")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"{self.record_id}: lr must be positive, got {self.lr}")
        if not 0.0 <= self.standing <= 1.0:
            raise ValueError(f"{self.record_id}: standing must be in [0, 1], got "
                             f"{self.standing}")


class Evidence(BaseModel):
    """One record behind a candidate: what it used and how similar its task is to this one."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    source: EvidenceSource
    citation: str | None = Field(default=None, description="Published: paper and location.")
    job_id: str | None = Field(default=None, description="Job: the tuning job's id.")
    label: str = Field(description="What was trained.")
    similarity: float = Field(ge=0.0, le=1.0, description="Similarity of its task to this one.")
    weight: float = Field(ge=0.0, le=1.0, description="The weight it carried (0: none).")
    optimizer: str
    lr: float | None = Field(default=None, description="The peak lr it used.")
    batch_size: int | None = None
    outcome: str
    lr_for_task: float | None = Field(
        default=None,
        description="Its lr carried to this task by the rules' size and batch laws.",
    )
    schedule: str | None = Field(
        default=None, description="The lr schedule it used (cosine, linear, step, ...), if known.")
    standing: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="Job: how this optimizer stood in its job (1: the winner, 0: the worst).")


class Scored(NamedTuple):
    """A record of a pool with its similarity and weight for one task (a tuple: a query makes
    one per similar record)."""

    record: EvidenceRecord
    similarity: float
    weight: float


_SIZES: Final = tuple(SIZE_WIDTHS)
_PARAMETERS, _BATCH, _LAYERS, _DATASET = (
    _SIZES.index(n) for n in ("num_parameters", "batch_size", "num_layers", "dataset_size"))
_WIDTH_PARAMETERS, _WIDTH_BATCH, _WIDTH_LAYERS, _WIDTH_DATASET = (
    SIZE_WIDTHS[_SIZES[i]] for i in (_PARAMETERS, _BATCH, _LAYERS, _DATASET))
# The bounds of EvidencePool.scored are loosened by this much (relative, and in decades) so that
# rounding never leaves out a record the exact similarity keeps.
_SLACK: Final = 1e-9

# The records of one task (a job's optimizers share theirs): one similarity serves them all.
_Member = tuple[TaskKey, tuple[EvidenceRecord, ...]]
_T = TypeVar("_T")
_Window = tuple[float, float]  # _window's (reach, limit)
# The buckets a query of given categories, batch size and depth looks in (EvidencePool._plan):
# kept per pool for this many such combinations (requests repeat a few), then started afresh.
_PLANS_KEPT: Final = 4096


@dataclass(frozen=True)
class _Bucket:
    """Records of one category group with the same batch size and depth, sorted by log10 of
    their parameters (with their datasets' log10 sizes, None when unknown)."""

    log_parameters: tuple[float, ...]
    log_datasets: tuple[float | None, ...]
    members: tuple[_Member, ...]

    def near(self, here: float, dataset: float | None, window: _Window) -> list[_Member]:
        """The members whose parameters' and dataset's factors can lift a similarity bounded
        by the window's ceiling above the floor."""
        reach, limit = window
        low = bisect.bisect_left(self.log_parameters, here - reach)
        high = bisect.bisect_right(self.log_parameters, here + reach)
        if dataset is None:
            return list(self.members[low:high])
        # Both Gaussians at once: (dp / wp)^2 + (dd / wd)^2 < 2 ln(ceiling / floor).
        out = []
        for i in range(low, high):
            theirs = self.log_datasets[i]
            if theirs is not None:
                x = (self.log_parameters[i] - here) / _WIDTH_PARAMETERS
                y = (theirs - dataset) / _WIDTH_DATASET
                if x * x + y * y > limit:
                    continue
            out.append(self.members[i])
        return out


# A bucket to look in, with the bound its categories, batch and depth leave, and its window.
_Look = tuple[float, _Bucket, _Window]


def _window(ceiling: float) -> _Window:
    """What ``_Bucket.near`` needs of a ceiling: the parameters' reach (log10) and the bound on
    the two Gaussians' summed squares."""
    reach = size_reach(ceiling, SIMILARITY_FLOOR, _WIDTH_PARAMETERS) + _SLACK
    return reach, (reach / _WIDTH_PARAMETERS) ** 2 + _SLACK


@dataclass(frozen=True)
class _Axis(Generic[_T]):
    """Children by one size (log10; sorted), and the child of the records that do not know it."""

    logs: tuple[float, ...]
    children: tuple[_T, ...]
    unknown: _T | None
    width: float

    def near(self, value: float | None, ceiling: float) -> list[tuple[float, _T]]:
        """The children a similarity bounded by ``ceiling`` can still reach the floor in, each
        with the bound once this size's factor is in."""
        out: list[tuple[float, _T]] = []
        if value is None:
            if self.unknown is not None:
                out.append((ceiling, self.unknown))
            bound = ceiling * UNKNOWN_SIZE
            if bound > SIMILARITY_FLOOR:
                out += [(bound, child) for child in self.children]
            return out
        if self.unknown is not None and ceiling * UNKNOWN_SIZE > SIMILARITY_FLOOR:
            out.append((ceiling * UNKNOWN_SIZE, self.unknown))
        reach = size_reach(ceiling, SIMILARITY_FLOOR, self.width) + _SLACK
        low = bisect.bisect_left(self.logs, value - reach)
        high = bisect.bisect_right(self.logs, value + reach)
        for i in range(low, high):
            bound = ceiling * size_factor(value, self.logs[i], self.width) * (1.0 + _SLACK)
            if bound > SIMILARITY_FLOOR:
                out.append((bound, self.children[i]))
        return out


def _log_parameters(key: TaskKey) -> float:
    value = key.log_sizes[_PARAMETERS]
    if value is None:  # num_parameters is a required field of TaskDescription
        raise ValueError("evidence: a record's task needs num_parameters")
    return value


def _axis(by: dict[float | None, _T], width: float) -> _Axis[_T]:
    known = sorted(v for v in by if v is not None)
    return _Axis(tuple(known), tuple(by[v] for v in known), by.get(None), width)


def _index(records: list[tuple[EvidenceRecord, TaskKey]]) -> _Axis[_Axis[_Bucket]]:
    """A category group's records by batch size, then depth, then parameters; records of the
    same task are one member."""
    by_task: dict[TaskKey, list[EvidenceRecord]] = {}
    for record, key in records:
        by_task.setdefault(key, []).append(record)
    by_size: dict[float | None, dict[float | None, list[_Member]]] = {}
    for key, same in by_task.items():
        by_size.setdefault(key.log_sizes[_BATCH], {}).setdefault(
            key.log_sizes[_LAYERS], []).append((key, tuple(same)))
    batches: dict[float | None, _Axis[_Bucket]] = {}
    for batch, by_layers in by_size.items():
        buckets: dict[float | None, _Bucket] = {}
        for layers, bucket in by_layers.items():
            bucket.sort(key=lambda m: _log_parameters(m[0]))
            buckets[layers] = _Bucket(tuple(_log_parameters(k) for k, _ in bucket),
                                      tuple(k.log_sizes[_DATASET] for k, _ in bucket),
                                      tuple(bucket))
        batches[batch] = _axis(buckets, _WIDTH_LAYERS)
    return _axis(batches, _WIDTH_BATCH)


class EvidencePool:
    """Records with their similarity keys (computed once), grouped by their categories (family,
    task type, fine-tuning kind, sparse features) so that a query skips whole groups that cannot
    reach ``SIMILARITY_FLOOR``; iterable, sized, immutable.

    Within a group, records are indexed by batch size, then depth, then parameters (log10,
    sorted), so a query looks only at the batch sizes and depths whose Gaussian factors can
    still leave a similarity above the floor, and within those at the window of parameters that
    can (``similarity.size_reach``): the same records with the same similarities as scoring
    every record (``scored_plainly``), at a cost that grows with the records near the task
    rather than with the pool (a server's history of many jobs)."""

    __slots__ = ("_groups", "_keys", "_near", "_plans", "_records")

    def __init__(self, records: Iterable[EvidenceRecord]) -> None:
        self._records = tuple(records)
        ids = [r.record_id for r in self._records]
        if len(set(ids)) != len(ids):
            raise ValueError("evidence: record ids must be unique within a pool")
        self._keys = tuple(TaskKey.of(r.task) for r in self._records)
        self._group()

    def _group(self) -> None:
        groups: dict[tuple[str, str, str, bool], list[tuple[EvidenceRecord, TaskKey]]] = {}
        for record, key in zip(self._records, self._keys, strict=True):
            groups.setdefault(key.categories, []).append((record, key))
        self._groups = tuple((records[0][1], _index(records)) for records in groups.values())
        self._near: dict[tuple[str, str, str, bool],
                         tuple[tuple[float, _Axis[_Axis[_Bucket]]], ...]] = {}
        self._plans: dict[tuple[tuple[str, str, str, bool], float | None, float | None],
                          tuple[_Look, ...]] = {}

    def _groups_near(self, key: TaskKey) -> tuple[tuple[float, _Axis[_Axis[_Bucket]]], ...]:
        """The groups whose categories leave ``key`` a positive weight, each with that bound
        (kept per categories: a pool holds few)."""
        near = self._near.get(key.categories)
        if near is None:
            near = tuple((bound, index) for representative, index in self._groups
                         if weight(bound := categorical_similarity(key, representative)) > 0.0)
            self._near[key.categories] = near
        return near

    def __iter__(self) -> Iterator[EvidenceRecord]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def without(self, record_id: str) -> EvidencePool:
        """The pool less one record (leave-one-out)."""
        pool = EvidencePool.__new__(EvidencePool)
        keep = [i for i, r in enumerate(self._records) if r.record_id != record_id]
        pool._records = tuple(self._records[i] for i in keep)
        pool._keys = tuple(self._keys[i] for i in keep)
        pool._group()
        return pool

    def _plan(self, key: TaskKey) -> tuple[_Look, ...]:
        """The buckets a task of ``key``'s categories, batch size and depth can find similar
        records in, each with the bound the categories, batch and depth leave and its window;
        what a query does before it looks at parameters and datasets, kept per combination."""
        batch, layers = key.log_sizes[_BATCH], key.log_sizes[_LAYERS]
        at = (key.categories, batch, layers)
        plan = self._plans.get(at)
        if plan is None:
            found: list[_Look] = []
            for bound, index in self._groups_near(key):
                for by_batch, depths in index.near(batch, bound * (1.0 + _SLACK)):
                    for ceiling, bucket in depths.near(layers, by_batch):
                        found.append((bound, bucket, _window(ceiling)))
            plan = tuple(found)
            if len(self._plans) >= _PLANS_KEPT:
                self._plans.clear()
            self._plans[at] = plan
        return plan

    def scored(self, task: TaskDescription) -> list[Scored]:
        """Every record with a positive weight for ``task``, most similar first."""
        key = TaskKey.of(task)
        here = _log_parameters(key)
        dataset = key.log_sizes[_DATASET]
        out: list[Scored] = []
        # The size factors are at most 1: groups whose categories alone weigh nothing are
        # skipped, and each size bounds what the others can still reach.
        for bound, bucket, window in self._plan(key):
            for record_key, records in bucket.near(here, dataset, window):
                s = bound * size_similarity(key, record_key)
                w = weight(s)
                if w > 0.0:
                    out += [Scored(record, s, w) for record in records]
        out.sort(key=lambda x: (-x.similarity, x.record.record_id))
        return out

    def scored_plainly(self, task: TaskDescription) -> list[Scored]:
        """``scored`` by scoring every record of the pool, with no group or window skipped:
        what ``scored`` must equal (kept for the tests)."""
        key = TaskKey.of(task)
        out: list[Scored] = []
        for record, record_key in zip(self._records, self._keys, strict=True):
            s = categorical_similarity(key, record_key) * size_similarity(key, record_key)
            w = weight(s)
            if w > 0.0:
                out.append(Scored(record, s, w))
        out.sort(key=lambda x: (-x.similarity, x.record.record_id))
        return out


EMPTY_POOL = EvidencePool(())


def published_record_task(row: PublishedTraining) -> TaskDescription:
    """A published row's task with everything the row knows (the fine-tuning kind and frozen
    parameters too, beyond the plain ``fine_tuning`` flag)."""
    fields = row.task_fields()
    if row.fine_tuning is not None:
        fields["fine_tuning"] = row.fine_tuning
    if row.frozen_parameters is not None:
        fields["frozen_parameters"] = row.frozen_parameters
    return TaskDescription.model_validate(fields)


@functools.cache
def published_pool() -> EvidencePool:
    """The shipped table of published trainings as evidence (built once per process)."""
    return EvidencePool(
        EvidenceRecord(
            source="published", record_id=row.id, label=row.model,
            task=published_record_task(row), optimizer=row.optimizer, lr=row.lr,
            outcome="published", citation=f"{row.citation}, {row.where}",
            schedule=row.schedule, final_lr_fraction=row.final_lr_fraction,
        )
        for row in published_trainings()
    )
