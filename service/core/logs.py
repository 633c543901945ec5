"""The one logging setup of optpilot's processes (``serve``, ``worker`` and each worker process).

:func:`setup_logging` sends every record of the process (optpilot's, uvicorn's, Optuna's) to
stderr through one handler: JSON lines when stderr is not a terminal (for log collectors), a
readable line otherwise; ``OPTPILOT_LOG_FORMAT=json|text`` and ``OPTPILOT_LOG_LEVEL`` override.

Job and trial ids: :func:`log_context` sets them in context variables (workers set them around
each trial), and :class:`ContextFilter` copies them onto every record, so each line a worker
writes during a trial carries ``job_id`` and ``trial``, whoever logged it::

    {"ts": "2025-01-01T12:00:00.123Z", "level": "INFO", "logger": "service.runners.worker",
     "msg": "job 3f.. trial 4 on cpu", "process": 4242, "component": "worker",
     "device": "cpu", "job_id": "3f..", "trial": 4}
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

from service.core import jsonsafe

FORMAT_ENV = "OPTPILOT_LOG_FORMAT"
LEVEL_ENV = "OPTPILOT_LOG_LEVEL"
CONTEXT_FIELDS = ("job_id", "trial")

_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("optpilot_job_id",
                                                                      default=None)
_trial: contextvars.ContextVar[int | None] = contextvars.ContextVar("optpilot_trial",
                                                                     default=None)
_UNSET: Any = object()

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is kept.
# (uvicorn's ``color_message`` repeats the message with terminal colour codes.)
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message", "where", *CONTEXT_FIELDS}


@contextmanager
def log_context(*, job_id: str | None = _UNSET, trial: int | None = _UNSET) -> Iterator[None]:
    """Within the block, records carry ``job_id`` and/or ``trial`` (those given)."""
    tokens: list[tuple[contextvars.ContextVar[Any], contextvars.Token[Any]]] = []
    if job_id is not _UNSET:
        tokens.append((_job_id, _job_id.set(job_id)))
    if trial is not _UNSET:
        tokens.append((_trial, _trial.set(trial)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def current_context() -> dict[str, Any]:
    return {"job_id": _job_id.get(), "trial": _trial.get()}


class ContextFilter(logging.Filter):
    """Adds ``job_id`` and ``trial`` (None outside a trial) and the process's static fields."""

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in current_context().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        for name, value in self.static.items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def _utc(created: float) -> str:
    moment = datetime.fromtimestamp(created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, process, job_id, trial, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _utc(record.created), "level": record.levelname, "logger": record.name,
            "msg": record.getMessage(), "process": record.process,
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_"):
                entry[name] = value
        for name in CONTEXT_FIELDS:
            entry[name] = getattr(record, name, None)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # NaN/inf become null: every line stays strict JSON.
        return json.dumps(jsonsafe.sanitize(entry), default=str, ensure_ascii=False,
                          allow_nan=False)


class TextFormatter(logging.Formatter):
    """``12:00:00 INFO service.runners.worker [job 3f.. trial 4] message`` for a terminal."""

    def __init__(self, component: str | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(where)s %(message)s",
                         datefmt="%H:%M:%S")
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        bits = []
        if self.component:
            bits.append(self.component)
        job, trial = getattr(record, "job_id", None), getattr(record, "trial", None)
        if job is not None:
            bits.append(f"job {job}")
        if trial is not None:
            bits.append(f"trial {trial}")
        record.where = f" [{' '.join(bits)}]" if bits else ""
        return super().format(record)


def wants_json(stream: TextIO) -> bool:
    choice = os.environ.get(FORMAT_ENV, "").strip().lower()
    if choice in ("json", "text"):
        return choice == "json"
    isatty = getattr(stream, "isatty", None)
    try:
        return not (callable(isatty) and isatty())
    except (ValueError, OSError):  # a closed stream
        return True


def setup_logging(component: str | None = None, *, level: int | str | None = None,
                  json_lines: bool | None = None, stream: TextIO | None = None,
                  **static: Any) -> logging.Handler:
    """Route all logging of this process to one stderr handler (replacing earlier ones).

    ``component`` (e.g. ``"api"``, ``"worker"``) and ``static`` fields (e.g. ``device="cpu"``)
    go on every record. ``json_lines`` None: JSON unless ``stream`` is a terminal. Returns the
    handler (tests read it).
    """
    stream = stream if stream is not None else sys.stderr
    as_json = wants_json(stream) if json_lines is None else json_lines
    if level is None:
        level = os.environ.get(LEVEL_ENV, "INFO").strip().upper() or "INFO"
    handler = logging.StreamHandler(stream)
    fields = {**({"component": component} if component else {}), **static}
    handler.addFilter(ContextFilter(fields))
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter(
        " ".join(str(v) for v in fields.values()) or None))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if getattr(old, "_optpilot", False):
            old.close()
    handler._optpilot = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries that print through handlers of their own go through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "optuna"):
        lib = logging.getLogger(name)
        for old in list(lib.handlers):
            lib.removeHandler(old)
        lib.propagate = True
        if name.startswith("uvicorn"):  # uvicorn.run(log_level=...) sets its own afterwards
            lib.setLevel(logging.NOTSET)
    _quiet_optuna()
    return handler


def _quiet_optuna() -> None:
    """Optuna adds its own stderr handler on first use; make it propagate to ours instead."""
    if "optuna" not in sys.modules:
        try:
            import optuna
        except ImportError:  # pragma: no cover - optuna is a dependency
            return
    else:
        optuna = sys.modules["optuna"]
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
