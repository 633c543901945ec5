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

import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tuner.evidence.published import PublishedTraining, published_trainings
from tuner.evidence.similarity import (
    TaskKey,
    categorical_similarity,
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


@dataclass(frozen=True)
class Scored:
    """A record of a pool with its similarity and weight for one task."""

    record: EvidenceRecord
    similarity: float
    weight: float


class EvidencePool:
    """Records with their similarity keys (computed once), grouped by their categories (family,
    task type, fine-tuning kind, sparse features) so that a query skips whole groups that cannot
    reach ``SIMILARITY_FLOOR``; iterable, sized, immutable."""

    __slots__ = ("_groups", "_keys", "_records")

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
        self._groups = tuple((members[0][1], tuple(members)) for members in groups.values())

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

    def scored(self, task: TaskDescription) -> list[Scored]:
        """Every record with a positive weight for ``task``, most similar first."""
        key = TaskKey.of(task)
        out: list[Scored] = []
        for representative, members in self._groups:
            bound = categorical_similarity(key, representative)
            if weight(bound) <= 0.0:
                continue  # the size factors are at most 1: nothing here can weigh
            for record, record_key in members:
                s = bound * size_similarity(key, record_key)
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
