"""The history's file format: one finished job a line, as JSON (``optpilot history export``).

Each line is ``JobOutcome.to_json()`` written by :func:`dump_line`: compact JSON, keys in the
order ``to_json`` gives them, floats with every bit (Python's shortest round-trip form, not the
15 digits of the API's JSON answers), no NaN or infinity. :func:`load_lines` reads a file of
them back, strictly: every line is checked before any outcome is returned, and a file with one
bad line is refused as a whole (:class:`ExportFileError`, naming each bad line and field).

What a line must hold (unknown fields are errors, at every level):

* ``job_id``: 1-64 characters, letters, digits, ``_ . : -``, starting with a letter or digit;
  no two lines of a file with the same one;
* ``namespace`` (default ``default``): as ``tuner.evidence.history.NAMESPACE_PATTERN``;
* ``task``: a task description (``tuner.task.TaskDescription``);
* ``workload``: a name or null; ``metric``: 1-128 characters; ``direction``: ``minimize`` or
  ``maximize``; ``trials_used``: a whole number 0..10^9;
* ``per_optimizer``: ``{name: {completed, best_value, best_hyperparameters, best_schedule}}``:
  ``completed`` a whole number 0..10^9, ``best_value`` finite or null, hyperparameters finite
  numbers by name, schedules as ``optimizers.Schedule.to_dict()`` writes them (or null).
  Optimizer names need not be registered here: a job may have tried one this server lacks,
  and recommendations pass over it;
* ``best_schedule`` (a schedule or null) and ``finished_at`` (ISO 8601 or null).

Blank lines are skipped; line numbers count every line from 1, blank ones included, as an
editor does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from optimizers.schedules import DecayShape, Schedule, ScheduleName
from tuner.evidence.history import (
    DEFAULT_NAMESPACE,
    HistoryError,
    JobOutcome,
    OptimizerResult,
    check_namespace,
)
from tuner.task import TaskDescription

MAX_COUNT = 10**9
MAX_STEPS = 10**13
MAX_REPORTED = 50
"""At most this many problems are listed (the first ones, in line order)."""

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
TEXT_PATTERN = r"^[^\u0000-\u001f\u007f]+$"  # one line of printable text


def _namespace(value: str) -> str:
    try:
        return check_namespace(value)
    except HistoryError:  # its message quotes the value; problems never echo the input
        raise ValueError("use 1-64 lower-case letters, digits, '.', '_' or '-', starting with "
                         "a letter or digit") from None


Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _ScheduleLine(_Strict):
    """A schedule as ``optimizers.Schedule.to_dict()`` writes it; its rules across fields are
    ``Schedule``'s own."""

    name: ScheduleName
    warmup_steps: Annotated[int, Field(ge=0, le=MAX_STEPS)] | None = None
    warmup_fraction: Finite | None = None
    final_lr_fraction: Finite | None = None
    decay_fraction: Finite | None = None
    decay_shape: DecayShape | None = None

    @model_validator(mode="after")
    def _valid(self) -> _ScheduleLine:
        Schedule(**self.model_dump())  # ValueError naming the field
        return self

    def fields(self) -> dict[str, Any]:
        """The fields the line gave, in ``Schedule``'s order (as ``to_dict`` writes them: an
        export read back is exported the same)."""
        return self.model_dump(exclude_unset=True)


class _OptimizerLine(_Strict):
    completed: Count
    best_value: Finite | None = None
    best_hyperparameters: dict[Name, Finite] = {}
    best_schedule: _ScheduleLine | None = None


class _OutcomeLine(_Strict):
    job_id: Annotated[str, StringConstraints(pattern=JOB_ID_PATTERN)]
    namespace: Annotated[str, AfterValidator(_namespace)] = DEFAULT_NAMESPACE
    task: TaskDescription
    workload: Name | None = None
    metric: Annotated[str, StringConstraints(max_length=128, pattern=TEXT_PATTERN)]
    direction: Literal["minimize", "maximize"]
    trials_used: Count
    per_optimizer: dict[Name, _OptimizerLine]
    best_schedule: _ScheduleLine | None = None
    finished_at: datetime | None = None

    def outcome(self) -> JobOutcome:
        def fields(schedule: _ScheduleLine | None) -> dict[str, Any] | None:
            return None if schedule is None else schedule.fields()

        return JobOutcome(
            job_id=self.job_id, task=self.task, metric=self.metric, direction=self.direction,
            trials_used=self.trials_used, namespace=self.namespace, workload=self.workload,
            per_optimizer=tuple(
                OptimizerResult(name, r.completed, r.best_value, r.best_hyperparameters,
                                fields(r.best_schedule))
                for name, r in self.per_optimizer.items()),
            best_schedule=fields(self.best_schedule), finished_at=self.finished_at)


@dataclass(frozen=True)
class LineProblem:
    """What is wrong with one line: ``field`` is the path inside the line's object (empty for
    the line as a whole), ``kind`` a machine-readable type (``json_invalid``, ``missing``,
    ``duplicate``, pydantic's types)."""

    line: int
    field: tuple[str | int, ...]
    message: str
    kind: str

    def __str__(self) -> str:
        where = ".".join(str(p) for p in self.field)
        return f"line {self.line}: {where}: {self.message}" if where else \
            f"line {self.line}: {self.message}"


class ExportFileError(ValueError):
    """A history file (or request body) with bad lines; ``problems`` lists them, in line order
    (at most ``MAX_REPORTED``); ``total`` counts every one."""

    def __init__(self, problems: list[LineProblem], total: int) -> None:
        self.problems = problems
        self.total = total
        more = f" (and {total - 1} more)" if total > 1 else ""
        super().__init__(f"{problems[0]}{more}")


def dump_line(data: JobOutcome | Mapping[str, Any]) -> str:
    """One line of the file (without its newline): an outcome, or a ``to_json()`` dict."""
    value = data.to_json() if isinstance(data, JobOutcome) else data
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _problems(line: int, exc: ValidationError) -> list[LineProblem]:
    out = []
    for error in exc.errors(include_url=False, include_input=False):
        kind = error["type"]
        message = error["msg"]
        if kind == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "malformed JSON")
            message = f"invalid JSON: {reason}"
        out.append(LineProblem(line, tuple(error["loc"]), message, kind))
    return out


def load_lines(lines: Iterable[str | bytes]) -> list[JobOutcome]:
    """Every outcome of a file's lines, in order; :class:`ExportFileError` listing the bad
    lines (bad JSON or UTF-8, a missing, unknown or invalid field, a job id seen on an earlier
    line) when there is any: then nothing is returned."""
    outcomes: list[JobOutcome] = []
    problems: list[LineProblem] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                problems.append(LineProblem(number, (), "invalid JSON: not UTF-8 text",
                                            "json_invalid"))
                continue
        if not raw.strip():
            continue
        try:
            line = _OutcomeLine.model_validate_json(raw)
            outcome = line.outcome()
        except ValidationError as exc:
            problems += _problems(number, exc)
            continue
        except HistoryError as exc:
            problems.append(LineProblem(number, (), str(exc), "value_error"))
            continue
        seen = first_line.setdefault(outcome.job_id, number)
        if seen != number:
            problems.append(LineProblem(number, ("job_id",),
                                        f"the same job_id as line {seen}",
                                        "duplicate"))
            continue
        outcomes.append(outcome)
    if problems:
        raise ExportFileError(problems[:MAX_REPORTED], len(problems))
    return outcomes
