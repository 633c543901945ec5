"""The ``optpilot`` command line.

Local commands need no server: ``optimizers``, ``workloads``, ``recommend``, ``tune``. Service
commands: ``serve`` (API + local workers + SQLite, the embedded default), ``worker``, ``db``.
Remote commands talk to a running API (``--url``, default ``$OPTPILOT_URL`` or
http://127.0.0.1:8000; key from ``$OPTPILOT_API_KEY``): ``jobs list|show|watch|cancel|launch``,
``results``. Bad input, and any error answer or unreachable server, ends with a one-line message
on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

Handler = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _console() -> Console:
    """Rich output; when piped, wide enough that tables do not fold every cell."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=160)
    return console


def _count(text: str) -> int:
    """Integers written as 120000000, 1.2e8 or 120_000_000."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not math.isfinite(value) or value != int(value):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def _fine_tuning_kind(text: str) -> str:
    if text not in ("full", "parameter_efficient"):
        raise argparse.ArgumentTypeError(
            f"expected full or parameter_efficient, got {text!r}")
    return text


def _training_steps(text: str) -> int | str:
    """A number of steps (as ``_count`` reads it) or ``unknown``."""
    if text == "unknown":
        return text
    try:
        return _count(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of steps or 'unknown', got {text!r}") from None


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "input"
        parts.append(f"{field}: {err['msg']}")
    return "; ".join(parts)


# -- optimizers / workloads -----------------------------------------------------------------


def cmd_optimizers(args: argparse.Namespace) -> int:
    import optimizers

    if args.json:
        print(json.dumps([
            {"name": s.name, "family": s.family, "when_to_use": s.when_to_use,
             "defaults": dict(s.defaults), "state_bytes_per_param": s.state_bytes_per_param,
             "search_space": {k: v.as_dict() for k, v in s.search_space.items()},
             "references": list(s.references)}
            for s in optimizers.specs()
        ], indent=2))
        return 0
    table = Table(title="optpilot optimizers")
    for col in ("name", "family", "state B/param", "defaults", "when to use"):
        table.add_column(col)
    for s in optimizers.specs():
        defaults = ", ".join(f"{k}={v:g}" for k, v in s.defaults.items())
        table.add_row(s.name, s.family, f"{s.state_bytes_per_param:g}", defaults, s.when_to_use)
    _console().print(table)
    return 0


def cmd_workloads(args: argparse.Namespace) -> int:
    from tuner.workloads import workloads

    items = workloads()
    if args.json:
        print(json.dumps([
            {"name": w.name, "summary": w.summary, "metric": w.metric, "direction": w.direction,
             "default_epochs": w.default_epochs, "task": w.task.model_dump(mode="json")}
            for w in items
        ], indent=2))
        return 0
    table = Table(title="optpilot workloads")
    for col in ("name", "family", "task", "metric", "epochs", "summary"):
        table.add_column(col)
    for w in items:
        table.add_row(w.name, w.task.model_family, w.task.task_type,
                      f"{w.metric} ({w.direction})", str(w.default_epochs), w.summary)
    _console().print(table)
    return 0


# -- recommend ------------------------------------------------------------------------------

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
        raise CliError(_validation_message(exc)) from None


def render_recommendation(recommendation: Any, console: Console) -> None:
    for rank, c in enumerate(recommendation.candidates, 1):
        fits = {True: ", fits the budget", False: ", DOES NOT FIT the budget", None: ""}
        console.print(f"[bold]{rank}. {c.optimizer}[/bold]  score {c.score:.2f}  "
                      f"(optimizer state {c.memory.state_bytes / 1e9:.3g} GB, total "
                      f"{c.memory.total_bytes / 1e9:.3g} GB{fits[c.memory.fits]})")
        table = Table(box=None, padding=(0, 2), show_header=True, header_style="dim")
        for col in ("hyperparameter", "default", "low", "high", "scale"):
            table.add_column(col)
        for hp, p in c.hyperparameters.items():
            scale = ("log" if p.log else "linear") + (" of 1-x" if p.complement else "")
            table.add_row(hp, f"{p.default:.4g}", f"{p.low:.4g}", f"{p.high:.4g}", scale)
        console.print(table)
        console.print(escape(f"   schedule: {schedule_text(c.schedule)}"))
        for line in c.rationale:
            console.print(f"   - {escape(line)}")
        for e in c.evidence:
            source = e.citation if e.source == "published" else f"job {e.job_id}"
            lr = "-" if e.lr is None else f"{e.lr:.3g}"
            carried = "" if e.lr_for_task is None else f" (here: {e.lr_for_task:.3g})"
            batch = f", batch {e.batch_size}" if e.batch_size else ""
            console.print(escape(f"   evidence ({e.source}, similarity {e.similarity:.2f}): "
                                 f"{e.label}: {e.optimizer} lr {lr}{carried}{batch}; {source}"),
                          style="dim")
        console.print(escape(f"   references: {'; '.join(c.references)}"), style="dim")
        console.print()


def schedule_text(schedule: Any) -> str:
    """A schedule (``optimizers.Schedule``, its fields, or None) in words."""
    import optimizers
    from service.report.render import schedule_text as text

    return text(schedule.to_dict() if isinstance(schedule, optimizers.Schedule) else schedule)


def cmd_recommend(args: argparse.Namespace) -> int:
    from tuner.prior import recommend

    task = task_from_args(args)
    try:
        recommendation = recommend(task, top_k=args.top_k,
                                   evidence=() if args.no_evidence else None)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(recommendation.model_dump_json(indent=2))
    else:
        render_recommendation(recommendation, _console())
    return 0


# -- tune -----------------------------------------------------------------------------------


def render_summary(summary: Any, console: Console, title: str = "Per-optimizer summary") -> None:
    table = Table(title=title)
    for col in ("optimizer", "trials", "completed", "pruned", "failed", "best value",
                "best hyperparameters"):
        table.add_column(col)
    for name, s in sorted(summary.per_optimizer.items(),
                          key=lambda kv: (kv[1].best_value is None, kv[1].best_value or 0.0)):
        hps = ", ".join(f"{k}={v:.3g}" for k, v in s.best_hyperparameters.items())
        table.add_row(name, str(s.trials), str(s.completed), str(s.pruned), str(s.failed),
                      _fmt(s.best_value), hps)
    console.print(table)


def cmd_tune(args: argparse.Namespace) -> int:
    import optuna
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tuner.tuning import tune
    from tuner.workloads import get_workload

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(args.threads)
    try:
        workload = get_workload(args.workload)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.trials < 1 or args.trials > 100_000:
        raise CliError("--trials: must be between 1 and 100000")
    task = task_from_args(args) if args.family else None
    console = _console()
    # Drawn once tune() has checked every input: a bad argument is one error line, no bar.
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("best {task.fields[best]}"), TimeElapsedColumn(),
                        console=console, transient=False, disable=args.json)
    bar = progress.add_task(f"tuning {workload.name}", total=args.trials, best="-")

    def on_trial(outcome: Any, summary: Any) -> None:
        best = _fmt(summary.best_value)
        if summary.best_optimizer:
            best += f" ({summary.best_optimizer})"
        progress.update(bar, advance=1, best=best)

    started = False

    def on_start() -> None:
        nonlocal started
        started = True
        progress.start()

    try:
        result = tune(workload, n_trials=args.trials, task=task, storage=args.storage,
                      study_name=args.study_name, optimizer_names=args.optimizers,
                      seed=args.seed, pruner=args.pruner, epochs=args.epochs,
                      device=args.device, timeout_s=args.timeout, callback=on_trial,
                      on_start=on_start)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    finally:
        if started:
            progress.stop()
    summary = result.summary
    if args.json:
        print(json.dumps({
            "workload": workload.name, "metric": workload.metric, "direction": summary.direction,
            "best_value": summary.best_value, "best_optimizer": summary.best_optimizer,
            "best_hyperparameters": summary.best_hyperparameters,
            "best_schedule": summary.best_schedule,
            "completed": summary.completed, "pruned": summary.pruned, "failed": summary.failed,
            "per_optimizer": {k: vars(v) for k, v in summary.per_optimizer.items()},
        }, indent=2))
        return 0
    console.print(f"\n[bold]Best {workload.metric}[/bold] ({summary.direction}): "
                  f"{_fmt(summary.best_value)} with [bold]{summary.best_optimizer}[/bold]")
    if summary.best_optimizer:
        hps = ", ".join(f"{k}={v:.4g}" for k, v in summary.best_hyperparameters.items())
        console.print(f"  optimizers.create({summary.best_optimizer!r}, model.parameters(), "
                      f"{hps})")
        if summary.best_schedule:
            console.print(escape(f"  schedule {schedule_text(summary.best_schedule)}"))
    console.print(f"Trials: {summary.completed} completed, {summary.pruned} pruned, "
                  f"{summary.failed} failed")
    render_summary(summary, console)
    return 0


# -- service: serve / worker / db -----------------------------------------------------------


def database_url(db: str | None) -> str:
    """``--db`` as a SQLAlchemy URL: a URL as is, a path as a SQLite file; else the settings'."""
    if db is None:
        from service.core.settings import Settings

        return Settings().database_url
    if "://" in db:
        return db
    from pathlib import Path

    return f"sqlite:///{Path(db).expanduser().resolve()}"


def _worker_config(args: argparse.Namespace, url: str) -> Any:
    from service.runners.worker import WorkerConfig

    return WorkerConfig(database_url=url, poll_interval_s=args.poll_interval,
                        heartbeat_interval_s=args.heartbeat_interval,
                        grace_period_s=args.grace_period, threads=args.threads,
                        max_trials=getattr(args, "max_trials", None))


def _devices(args: argparse.Namespace) -> list[str]:
    from service.runners.worker import parse_devices

    try:
        if args.devices is None and getattr(args, "workers", None) is not None:
            return ["cpu"] * args.workers
        return parse_devices(args.devices)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` for the API, taken before anything starts, so a busy
    port is one clear error and no worker is left behind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (another "
                       "server running? choose another --port)") from None
    sock.listen(2048)  # uvicorn's backlog; a client that connects meanwhile waits, not refused
    return sock


@contextmanager
def _stop_signals(on_signal: Callable[[int], None]) -> Iterator[None]:
    """SIGTERM and SIGINT call ``on_signal(count)`` (1 for the first) while in the block."""
    count = 0

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal count
        count += 1
        on_signal(count)

    previous = {signum: signal.signal(signum, handler)
                for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn
    from sqlalchemy import make_url

    from service.app import create_app
    from service.core.db import prepare
    from service.core.logs import setup_logging
    from service.core.settings import Settings
    from service.runners.supervisor import Supervisor

    url = database_url(args.db)
    if args.workers is not None and args.workers < 0:
        raise CliError("--workers: must be 0 or more")
    devices = [] if args.workers == 0 else _devices(args)
    sock = _listen(args.host, args.port)
    try:
        setup_logging("api")
        prepare(url)  # the schema once, before any worker: workers would race to create it
        supervisor = Supervisor(_worker_config(args, url), devices,
                                stop_timeout_s=args.stop_timeout)
        server = uvicorn.Server(uvicorn.Config(create_app(Settings(database_url=url)),
                                               log_level="info", log_config=None))

        def on_signal(count: int) -> None:
            # uvicorn handles the signals while it serves and raises them again when it has
            # stopped; they end here, so the workers are stopped below, not orphaned.
            server.should_exit = True
            if count > 1:
                supervisor.hurry()

        with _stop_signals(on_signal):
            supervisor.start()
            try:
                print(f"optpilot: API on http://{args.host}:{args.port} (docs at /docs), "
                      f"{len(devices)} worker(s) on {', '.join(devices) or 'none'}, database "
                      f"{make_url(url).render_as_string(hide_password=True)}", file=sys.stderr)
                server.run(sockets=[sock])
            finally:
                supervisor.stop()
    finally:
        sock.close()
    if not server.started:
        raise CliError("the API did not start (see the log above)")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import threading

    from service.core.logs import setup_logging
    from service.runners.supervisor import Supervisor
    from service.runners.worker import worker_main

    setup_logging("worker")
    url = database_url(args.db)
    devices = _devices(args)
    config = _worker_config(args, url)
    if len(devices) == 1:  # run in this process: signals and exit status are the worker's
        from dataclasses import replace

        worker_main(replace(config, device=devices[0]))
        return 0
    supervisor = Supervisor(config, devices, stop_timeout_s=args.stop_timeout)
    stop = threading.Event()

    def on_signal(count: int) -> None:
        stop.set()
        if count > 1:
            supervisor.hurry()

    with _stop_signals(on_signal):
        supervisor.start()
        try:
            while not stop.wait(0.5) and not supervisor.finished():
                pass
        finally:
            supervisor.stop()
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from service.core.db import current_revision, head_revision, prepare, read_only_engine

    url = database_url(args.db)
    if args.action == "upgrade":
        prepare(url)  # the service's migrations and Optuna's tables
    try:
        engine = read_only_engine(url)  # `current` creates and changes nothing
    except FileNotFoundError as exc:
        raise CliError(f"no database at {exc} (`optpilot db upgrade` creates it)") from None
    try:
        print(f"database revision {current_revision(engine)} (head {head_revision()})")
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        raise CliError(f"cannot read the database: {str(cause).splitlines()[0]}") from None
    finally:
        engine.dispose()
    return 0


def _add_worker_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", help="cuda:0,cuda:1 or cpu (default: every GPU, else one CPU)")
    p.add_argument("--threads", type=int, help="torch threads per worker (default: 1)")
    p.add_argument("--poll-interval", type=float, default=0.5, help="seconds between job polls")
    p.add_argument("--heartbeat-interval", type=int, default=10,
                   help="seconds between heartbeats")
    p.add_argument("--grace-period", type=int, default=60,
                   help="seconds without heartbeat before a trial is failed and retried")
    p.add_argument("--stop-timeout", type=float, default=30.0,
                   help="on SIGTERM/Ctrl-C, seconds a supervised worker (serve, or worker with "
                   "several devices) may take to finish its trial before handing it back")


# -- against a running server: jobs, results ------------------------------------------------

ACTIVE_JOB_STATUSES = ("queued", "running")


@contextmanager
def _server(args: argparse.Namespace) -> Iterator[Any]:
    """An API client for ``--url``; its errors become one-line CLI errors."""
    from service.client import ConnectionFailed, OptpilotClient, OptpilotError

    client = OptpilotClient(args.url, retries=2, backoff_s=0.25)
    try:
        with client:
            yield client
    except ConnectionFailed as exc:
        raise CliError(f"cannot reach the API at {client.base_url} ({exc.detail}); is "
                       "`optpilot serve` running? (--url or OPTPILOT_URL)") from None
    except OptpilotError as exc:
        hint = " (set OPTPILOT_API_KEY)" if exc.status == 401 else ""
        raise CliError(f"{exc}{hint}") from None


def _size(count: int) -> str:
    """Parameter counts as 5k, 124M, 1.5B."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return str(count)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _best(job: dict[str, Any]) -> str:
    best = job.get("best")
    if not best:
        return "-"
    return f"{_fmt(best['value'])} ({best['optimizer']})"


def _hps(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, int | float) else f"{k}={v}"
                     for k, v in values.items())


def _progress_line(job: dict[str, Any]) -> str:
    p = job["progress"]
    line = (f"{p['finished']}/{p['total']} finished ({p['completed']} completed, "
            f"{p['pruned']} pruned, {p['failed']} failed), {p['running']} running")
    if p["waiting"]:
        line += f", {p['waiting']} waiting"
    if p.get("cancelled"):
        line += f", {p['cancelled']} never run (job stopped)"
    if p["retried"]:
        line += f", {p['retried']} retried"
    return line


def render_job(job: dict[str, Any], console: Console) -> None:
    task = job["task"]
    what = (f"workload {job['workload']}" if job["workload"] else
            f"client-evaluated ({task['model_family']}, {_size(task['num_parameters'])} "
            "parameters)")
    console.print(f"[bold]job {job['id']}[/bold]  {job['status']}  {what}  "
                  f"pruner {job['pruner']}")
    console.print(f"progress: {_progress_line(job)}")
    best = job.get("best")
    if best:
        trial = f" (trial {best['trial']})" if best.get("trial") is not None else ""
        console.print(f"best: {_fmt(best['value'])} with [bold]{best['optimizer']}[/bold]"
                      f"{trial}  {_hps(best['hyperparameters'])}")
        if best.get("schedule"):
            console.print(escape(f"      schedule {schedule_text(best['schedule'])}"))
    if job.get("error"):
        console.print(f"error: {job['error']}")
    if job["per_optimizer"]:
        table = Table(title="Per-optimizer summary")
        for col in ("optimizer", "trials", "completed", "pruned", "failed", "best value",
                    "best hyperparameters"):
            table.add_column(col)
        rows = sorted(job["per_optimizer"].items(),
                      key=lambda kv: (kv[1]["best_value"] is None, kv[1]["best_value"] or 0.0))
        for name, o in rows:
            table.add_row(name, str(o["trials"]), str(o["completed"]), str(o["pruned"]),
                          str(o["failed"]), _fmt(o["best_value"]),
                          _hps(o["best_hyperparameters"]))
        console.print(table)


def cmd_jobs_list(args: argparse.Namespace) -> int:
    with _server(args) as client:
        page = client.list_jobs(status=args.status, workload=args.workload, limit=args.limit,
                                offset=args.offset)
    if args.json:
        _print_json(page)
        return 0
    table = Table(title=f"jobs ({len(page['items'])} of {page['total']})")
    for col in ("id", "status", "workload", "trials", "best", "created"):
        table.add_column(col)
    for job in page["items"]:
        p = job["progress"]
        table.add_row(job["id"], job["status"], job["workload"] or "(client)",
                      f"{p['finished']}/{p['total']}", _best(job), job["created_at"][:19])
    _console().print(table)
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    with _server(args) as client:
        job = client.get_job(args.job_id)
        trials = client.job_trials(args.job_id) if args.trials else None
    if args.json:
        _print_json(job if trials is None else {**job, "trials": trials})
        return 0
    console = _console()
    render_job(job, console)
    if trials is not None:
        table = Table(title="Trials")
        for col in ("#", "state", "value", "optimizer", "hyperparameters", "schedule",
                    "reason"):
            table.add_column(col)
        for t in trials:
            table.add_row(str(t["number"]), t["state"] + (" (retried)" if t["retried"] else ""),
                          _fmt(t["value"]), t["optimizer"] or "-", _hps(t["hyperparameters"]),
                          escape(schedule_text(t.get("schedule"))),
                          t["reason"] or "")
        console.print(table)
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    with _server(args) as client:
        job = client.cancel_job(args.job_id)
    if args.json:
        _print_json(job)
    else:
        print(f"job {job['id']} {job['status']} ({_progress_line(job)})")
    return 0


def watch_job(client: Any, job_id: str, interval_s: float, console: Console,
              quiet: bool = False) -> dict[str, Any]:
    """Poll a job with a live progress bar (best so far) until it is no longer active."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    job: dict[str, Any] = client.get_job(job_id)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}  best {task.fields[best]}"),
                  TimeElapsedColumn(), console=console, disable=quiet) as progress:
        bar = progress.add_task(f"job {job_id[:8]}", total=job["n_trials"],
                                completed=job["progress"]["finished"], status=job["status"],
                                best=_best(job))
        while job["status"] in ACTIVE_JOB_STATUSES:
            time.sleep(interval_s)
            job = client.get_job(job_id)
            progress.update(bar, completed=job["progress"]["finished"], status=job["status"],
                            best=_best(job))
    return job


def cmd_jobs_watch(args: argparse.Namespace) -> int:
    if not args.interval > 0:
        raise CliError("--interval: must be positive")
    console = _console()
    with _server(args) as client:
        job = watch_job(client, args.job_id, args.interval, console, quiet=args.json)
    if args.json:
        _print_json(job)
    else:
        render_job(job, console)
    return 0 if job["status"] == "completed" else 1


def cmd_jobs_launch(args: argparse.Namespace) -> int:
    task = task_from_args(args) if args.family is not None or args.params is not None else None
    if args.workload is None and task is None:
        raise CliError("give --workload NAME, or --family and --params for a job whose trials "
                       "you evaluate yourself")
    console = _console()
    with _server(args) as client:
        job = client.create_job(args.workload, n_trials=args.trials, task=task,
                                optimizers=args.optimizers, seed=args.seed, pruner=args.pruner,
                                timeout_s=args.timeout, max_retries=args.max_retries)
        if args.watch:
            job = watch_job(client, job["id"], args.interval, console, quiet=args.json)
    if args.json:
        _print_json(job)
    elif args.watch:
        render_job(job, console)
    else:
        print(f"launched job {job['id']} ({job['status']}); follow it with: "
              f"optpilot jobs watch {job['id']}")
    return 0 if not args.watch or job["status"] == "completed" else 1


def cmd_results(args: argparse.Namespace) -> int:
    filters = {"model_family": args.family, "task_type": args.task_type,
               "optimizer": args.optimizer, "workload": args.workload,
               "min_parameters": args.min_params, "max_parameters": args.max_params}
    if not args.summary and (args.params is not None or args.factor is not None):
        raise CliError("--params and --factor go with --summary")
    if args.min_params is not None and args.max_params is not None and \
            args.min_params > args.max_params:
        raise CliError("--min-params must not exceed --max-params")
    with _server(args) as client:
        if args.summary:
            data = client.results_summary(**filters, num_parameters=args.params,
                                          factor=args.factor)
        else:
            data = client.results(**filters, limit=args.limit, offset=args.offset)
    if args.json:
        _print_json(data)
        return 0
    console = _console()
    if args.summary:
        similar = data.get("similar_to")
        scope = (f" for {similar['min_parameters']:,}..{similar['max_parameters']:,} parameters"
                 if similar else "")
        console.print(f"Which optimizer won{scope}: {data['decided']} of {data['total']} "
                      "results decided")
        table = Table()
        for col in ("optimizer", "wins", "share", "median best", "metric"):
            table.add_column(col)
        for o in data["optimizers"]:
            table.add_row(o["optimizer"], str(o["wins"]), f"{o['share']:.0%}",
                          _fmt(o["median_best_value"]), o["metric"] or "-")
        console.print(table)
        if data.get("prior_agreement") is not None:
            console.print(f"the prior's top choice won {data['prior_agreement']:.0%} of them")
        return 0
    table = Table(title=f"results ({len(data['items'])} of {data['total']})")
    for col in ("job", "workload", "family", "task", "params", "best", "optimizer", "trials",
                "created"):
        table.add_column(col)
    for r in data["items"]:
        table.add_row(r["job_id"], r["workload"] or "(client)", r["model_family"],
                      r["task_type"], _size(r["num_parameters"]),
                      f"{_fmt(r['best_value'])} {r['metric']}", r["best_optimizer"] or "-",
                      str(r["trials_used"]), r["created_at"][:19])
    console.print(table)
    return 0


def _add_remote_flags(p: argparse.ArgumentParser, json_flag: bool = True) -> None:
    p.add_argument("--url", help="API base URL (default: $OPTPILOT_URL or "
                   "http://127.0.0.1:8000); the key comes from $OPTPILOT_API_KEY")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print the API's JSON")


def _add_remote_parsers(sub: Any) -> None:
    statuses = ["queued", "running", "completed", "failed", "cancelled"]
    jobs = sub.add_parser("jobs", help="tuning jobs on a running server")
    actions = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")

    p = actions.add_parser("list", help="jobs, newest first")
    p.add_argument("--status", choices=statuses)
    p.add_argument("--workload")
    p.add_argument("--limit", type=int, default=20, help="jobs per page")
    p.add_argument("--offset", type=int, default=0, help="jobs to skip")
    _add_remote_flags(p)
    p.set_defaults(handler=cmd_jobs_list)

    p = actions.add_parser("show", help="status, progress, best and per-optimizer table")
    p.add_argument("job_id")
    p.add_argument("--trials", action="store_true", help="list every trial too")
    _add_remote_flags(p)
    p.set_defaults(handler=cmd_jobs_show)

    p = actions.add_parser("watch", help="live progress until the job finishes "
                           "(exit 0 completed, 1 failed or cancelled)")
    p.add_argument("job_id")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    _add_remote_flags(p)
    p.set_defaults(handler=cmd_jobs_watch)

    p = actions.add_parser("cancel", help="stop a job's new trials")
    p.add_argument("job_id")
    _add_remote_flags(p)
    p.set_defaults(handler=cmd_jobs_cancel)

    p = actions.add_parser("launch", help="launch a job: --workload NAME, or a task "
                           "(--family, --params) to evaluate trials yourself")
    p.add_argument("--workload", help="registered workload (server-side trials)")
    p.add_argument("--trials", type=int, required=True, help="exact number of finished trials")
    p.add_argument("--optimizers", type=_names, help="comma-separated names (default: prior's)")
    p.add_argument("--seed", type=int)
    p.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median",
                   help="stops trials that do worse than others at the same epoch")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--max-retries", type=int, help="retries of a trial whose worker died")
    p.add_argument("--watch", action="store_true", help="then watch it until it finishes")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls (--watch)")
    _add_remote_flags(p)
    _add_task_flags(p, required=False)
    p.set_defaults(handler=cmd_jobs_launch)

    p = sub.add_parser("results", help="past results on a running server (filters AND)")
    p.add_argument("--family", help="model family")
    p.add_argument("--task-type")
    p.add_argument("--optimizer", help="the winning optimizer")
    p.add_argument("--workload")
    p.add_argument("--min-params", type=_count)
    p.add_argument("--max-params", type=_count)
    p.add_argument("--limit", type=int, default=20, help="results per page")
    p.add_argument("--offset", type=int, default=0, help="results to skip")
    p.add_argument("--summary", action="store_true", help="which optimizer won how often")
    p.add_argument("--params", type=_count, help="with --summary: tasks of a similar size")
    p.add_argument("--factor", type=float, help="with --params: within this factor (default 10)")
    _add_remote_flags(p)
    p.set_defaults(handler=cmd_results)


# -- parser ---------------------------------------------------------------------------------


def _add_task_flags(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("task description")
    g.add_argument("--family", required=required,
                   help="model family: linear, mlp, cnn, rnn, transformer, gnn, other")
    g.add_argument("--task-type", help="classification (default), regression, "
                   "language_modeling, generation, reinforcement_learning, other")
    g.add_argument("--params", type=_count, required=required,
                   help="trainable parameters, e.g. 1.2e8")
    g.add_argument("--layers", type=_count, help="depth")
    g.add_argument("--dataset-size", type=_count, help="training examples")
    g.add_argument("--batch-size", type=_count, help="global batch size")
    g.add_argument("--sparse", action="store_true", help="sparse features / embeddings")
    g.add_argument("--fine-tuning", nargs="?", const=True, type=_fine_tuning_kind,
                   metavar="KIND",
                   help="starts from pretrained weights; KIND: full or parameter_efficient "
                   "(adapters, LoRA); alone: full unless --frozen-params exceeds --params")
    g.add_argument("--frozen-params", type=_count,
                   help="pretrained parameters kept frozen (with --fine-tuning), e.g. 7e9")
    g.add_argument("--devices", type=_count, help="accelerators used together")
    g.add_argument("--memory-gb", type=float, help="accelerator memory per device (GB)")
    g.add_argument("--precision", help="fp32 (default), bf16, fp16")
    g.add_argument("--training-steps", type=_training_steps, metavar="N|unknown",
                   help="training horizon in optimizer steps, or 'unknown' for open-ended "
                   "training (schedule-free optimizers and WSD schedules then come first)")


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it has none or already names it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (action.option_strings and default is not None and default is not False
                and default != argparse.SUPPRESS and "default" not in text):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("optpilot")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="optpilot",
        description="Optimizer recommendations and prior-guided tuning for PyTorch training.")
    parser.add_argument("--version", action="version", version=f"optpilot {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    p = sub.add_parser("optimizers", help="list the optimizer catalog")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_optimizers)

    p = sub.add_parser("workloads", help="list the registered workloads")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_workloads)

    p = sub.add_parser("recommend", help="rank optimizers for a described model and task")
    _add_task_flags(p, required=True)
    p.add_argument("--top-k", type=int, default=3, help="how many optimizers to rank")
    p.add_argument("--json", action="store_true", help="print the recommendation as JSON")
    p.add_argument("--no-evidence", action="store_true",
                   help="the rules alone: no published trainings move the ranking or the lrs")
    p.set_defaults(handler=cmd_recommend)

    p = sub.add_parser("tune", help="tune a workload in this process (no server)")
    p.add_argument("--workload", required=True, help="registered workload name")
    p.add_argument("--trials", type=int, default=30, help="trials to run")
    p.add_argument("--optimizers", type=_names, help="comma-separated names (default: prior's)")
    p.add_argument("--seed", type=int, default=0, help="the seed every trial trains with")
    p.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median",
                   help="stops trials that do worse than others at the same epoch")
    p.add_argument("--epochs", type=int, help="training budget per trial (default: workload's)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--storage", help="Optuna storage URL (default: in memory)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: small models train fastest on one)")
    p.add_argument("--study-name")
    p.add_argument("--json", action="store_true")
    _add_task_flags(p, required=False)
    p.set_defaults(handler=cmd_tune)

    p = sub.add_parser("serve", help="run the API with local workers (embedded default)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="TCP port of the API")
    p.add_argument("--db", help="SQLite file or database URL (default: $DATABASE_URL or "
                   "./optpilot.db)")
    p.add_argument("--workers", type=int, help="CPU workers to start (0: none; default: one per "
                   "GPU, else one)")
    _add_worker_flags(p)
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("worker", help="run trials of active jobs (one process per device)")
    p.add_argument("--db", help="database URL (default: $DATABASE_URL)")
    p.add_argument("--max-trials", type=int, help="exit after this many trials")
    _add_worker_flags(p)
    p.set_defaults(handler=cmd_worker)

    p = sub.add_parser("db", help="database migrations")
    p.add_argument("action", choices=["upgrade", "current"])
    p.add_argument("--db", help="database URL (default: $DATABASE_URL)")
    p.set_defaults(handler=cmd_db)

    _add_remote_parsers(sub)
    from service.cli.report import add_report_parser

    add_report_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `optpilot`: what it can do
        parser.print_help(sys.stderr)
        return 2
    handler: Handler = args.handler
    try:
        return handler(args)
    except CliError as exc:
        print(f"optpilot {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

