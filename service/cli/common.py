"""What every ``optpilot`` command shares: the one-line error, output, number parsing, the task
description flags, the parser's help format."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from rich.console import Console

Handler = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def make_console() -> Console:
    """Rich output; when piped, wide enough that tables do not fold every cell."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=160)
    return console


def count(text: str) -> int:
    """Integers written as 120000000, 1.2e8 or 120_000_000."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not math.isfinite(value) or value != int(value):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def fine_tuning_kind(text: str) -> str:
    if text not in ("full", "parameter_efficient"):
        raise argparse.ArgumentTypeError(
            f"expected full or parameter_efficient, got {text!r}")
    return text


def training_steps(text: str) -> int | str:
    """A number of steps (as ``count`` reads it) or ``unknown``."""
    if text == "unknown":
        return text
    try:
        return count(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of steps or 'unknown', got {text!r}") from None


def names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def namespace(text: str) -> str:
    """A history namespace (``tuner.evidence.history.check_namespace``)."""
    from tuner.evidence.history import HistoryError, check_namespace

    try:
        return check_namespace(text)
    except HistoryError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_history_flags(p: argparse.ArgumentParser, *, off_switch: bool = True) -> None:
    p.add_argument("--namespace", type=namespace,
                   help="whose finished jobs to learn from (default: the default namespace)")
    if off_switch:
        p.add_argument("--no-history", action="store_true",
                       help="learn from no past job (the rules and published trainings only)")


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "input"
        parts.append(f"{field}: {err['msg']}")
    return "; ".join(parts)


TASK_FLAGS: dict[str, str] = {
    "family": "model_family", "task_type": "task_type", "params": "num_parameters",
    "layers": "num_layers", "dataset_size": "dataset_size", "batch_size": "batch_size",
    "sparse": "sparse_features", "fine_tuning": "fine_tuning",
    "frozen_params": "frozen_parameters", "devices": "num_devices",
    "memory_gb": "memory_budget_gb", "precision": "precision",
    "training_steps": "training_steps",
}


def task_from_args(args: argparse.Namespace) -> Any:
    from tuner.task import TaskDescription

    fields = {field: getattr(args, flag) for flag, field in TASK_FLAGS.items()
              if getattr(args, flag, None) is not None and getattr(args, flag) is not False}
    try:
        return TaskDescription(**fields)
    except ValidationError as exc:
        raise CliError(validation_message(exc)) from None


def schedule_text(schedule: Any) -> str:
    """A schedule (``optimizers.Schedule``, its fields, or None) in words."""
    import optimizers
    from service.report.render import schedule_text as text

    return text(schedule.to_dict() if isinstance(schedule, optimizers.Schedule) else schedule)


def database_url(db: str | None) -> str:
    """``--db`` as a SQLAlchemy URL: a URL as is, a path as a SQLite file; else the settings'."""
    if db is None:
        from service.core.settings import Settings

        return Settings().database_url
    if "://" in db:
        return db
    from pathlib import Path

    return f"sqlite:///{Path(db).expanduser().resolve()}"


def display_url(url: str) -> str:
    """A database URL fit to print: its password hidden."""
    from sqlalchemy import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "the database"


def add_source_flags(p: argparse.ArgumentParser, db_help: str) -> None:
    """``--url URL | --db DB``: ask a running server (the default), or read the database."""
    source = p.add_mutually_exclusive_group()
    source.add_argument("--url", help="API base URL (default: $OPTPILOT_URL or "
                        "http://127.0.0.1:8000); the key comes from $OPTPILOT_API_KEY")
    source.add_argument("--db", help=db_help)


def add_task_flags(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("task description")
    g.add_argument("--family", required=required,
                   help="model family: linear, mlp, cnn, rnn, transformer, gnn, other")
    g.add_argument("--task-type", help="classification (default), regression, "
                   "language_modeling, generation, reinforcement_learning, other")
    g.add_argument("--params", type=count, required=required,
                   help="trainable parameters, e.g. 1.2e8")
    g.add_argument("--layers", type=count, help="depth")
    g.add_argument("--dataset-size", type=count, help="training examples")
    g.add_argument("--batch-size", type=count, help="global batch size")
    g.add_argument("--sparse", action="store_true", help="sparse features / embeddings")
    g.add_argument("--fine-tuning", nargs="?", const=True, type=fine_tuning_kind,
                   metavar="KIND",
                   help="starts from pretrained weights; KIND: full or parameter_efficient "
                   "(adapters, LoRA); alone: full unless --frozen-params exceeds --params")
    g.add_argument("--frozen-params", type=count,
                   help="pretrained parameters kept frozen (with --fine-tuning), e.g. 7e9")
    g.add_argument("--devices", type=count, help="accelerators used together")
    g.add_argument("--memory-gb", type=float, help="accelerator memory per device (GB)")
    g.add_argument("--precision", help="fp32 (default), bf16, fp16")
    g.add_argument("--training-steps", type=training_steps, metavar="N|unknown",
                   help="training horizon in optimizer steps, or 'unknown' for open-ended "
                   "training (schedule-free optimizers and WSD schedules then come first)")


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it has none or already names it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (action.option_strings and default is not None and default is not False
                and default != argparse.SUPPRESS and "default" not in text):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("optpilot")
    except PackageNotFoundError:
        return "unknown"
