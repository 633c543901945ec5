"""Commands that need no server: ``optimizers``, ``workloads``, ``recommend``, ``tune``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from service.cli.common import (
    CliError,
    add_history_flags,
    add_task_flags,
    database_url,
    fmt,
    make_console,
    names,
    schedule_text,
    task_from_args,
)


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
    make_console().print(table)
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
    make_console().print(table)
    return 0


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


def cmd_recommend(args: argparse.Namespace) -> int:
    from tuner.prior import recommend

    task = task_from_args(args)
    evidence = () if args.no_evidence else _history_evidence(args)
    try:
        recommendation = recommend(task, top_k=args.top_k, evidence=evidence)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(recommendation.model_dump_json(indent=2))
    else:
        render_recommendation(recommendation, make_console())
    return 0


def _history_evidence(args: argparse.Namespace) -> Any:
    """The published trainings plus the history of ``--db``'s ``--namespace`` (None: the
    published trainings alone)."""
    if args.db is None:
        if args.namespace is not None:
            raise CliError("--namespace goes with --db (the database whose history to use)")
        return None
    from sqlalchemy.exc import SQLAlchemyError

    from service.core.db import make_sessionmaker, read_only_engine
    from service.jobs.history import read_outcomes
    from tuner.evidence.history import DEFAULT_NAMESPACE, HistoryError
    from tuner.tuning import evidence_with

    try:
        engine = read_only_engine(database_url(args.db))
    except FileNotFoundError as exc:
        raise CliError(f"no database at {exc}") from None
    try:
        with make_sessionmaker(engine)() as session:
            outcomes = read_outcomes(session, args.namespace or DEFAULT_NAMESPACE)
    except (SQLAlchemyError, HistoryError) as exc:
        raise CliError(f"cannot read the history: {str(exc).splitlines()[0]}") from None
    finally:
        engine.dispose()
    return evidence_with(outcomes)


def render_summary(summary: Any, console: Console, title: str = "Per-optimizer summary") -> None:
    table = Table(title=title)
    for col in ("optimizer", "trials", "completed", "pruned", "failed", "best value",
                "best hyperparameters"):
        table.add_column(col)
    for name, s in sorted(summary.per_optimizer.items(),
                          key=lambda kv: (kv[1].best_value is None, kv[1].best_value or 0.0)):
        hps = ", ".join(f"{k}={v:.3g}" for k, v in s.best_hyperparameters.items())
        table.add_row(name, str(s.trials), str(s.completed), str(s.pruned), str(s.failed),
                      fmt(s.best_value), hps)
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
    console = make_console()
    # Drawn once tune() has checked every input: a bad argument is one error line, no bar.
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("best {task.fields[best]}"), TimeElapsedColumn(),
                        console=console, transient=False, disable=args.json)
    bar = progress.add_task(f"tuning {workload.name}", total=args.trials, best="-")

    def on_trial(outcome: Any, summary: Any) -> None:
        best = fmt(summary.best_value)
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
                  f"{fmt(summary.best_value)} with [bold]{summary.best_optimizer}[/bold]")
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


def add_local_parsers(sub: Any) -> None:
    p = sub.add_parser("optimizers", help="list the optimizer catalog")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_optimizers)

    p = sub.add_parser("workloads", help="list the registered workloads")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_workloads)

    p = sub.add_parser("recommend", help="rank optimizers for a described model and task")
    add_task_flags(p, required=True)
    p.add_argument("--top-k", type=int, default=3, help="how many optimizers to rank")
    p.add_argument("--json", action="store_true", help="print the recommendation as JSON")
    p.add_argument("--no-evidence", action="store_true",
                   help="the rules alone: no published trainings or past jobs move the "
                   "ranking or the lrs")
    p.add_argument("--db", help="also learn from the finished jobs in this service database "
                   "(SQLite file or URL), of --namespace")
    add_history_flags(p, off_switch=False)
    p.set_defaults(handler=cmd_recommend)

    p = sub.add_parser("tune", help="tune a workload in this process (no server)")
    p.add_argument("--workload", required=True, help="registered workload name")
    p.add_argument("--trials", type=int, default=30, help="trials to run")
    p.add_argument("--optimizers", type=names, help="comma-separated names (default: prior's)")
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
    add_task_flags(p, required=False)
    p.set_defaults(handler=cmd_tune)
