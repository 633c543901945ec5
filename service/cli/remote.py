"""Commands against a running API (``--url``, default ``$OPTPILOT_URL`` or http://127.0.0.1:8000;
key from ``$OPTPILOT_API_KEY``): ``jobs list|show|watch|cancel|launch``, ``results``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from service.cli.common import (
    CliError,
    add_history_flags,
    add_task_flags,
    count,
    fmt,
    make_console,
    names,
    schedule_text,
    task_from_args,
)

ACTIVE_JOB_STATUSES = ("queued", "running")


@contextmanager
def api_client(args: argparse.Namespace) -> Iterator[Any]:
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
    return f"{fmt(best['value'])} ({best['optimizer']})"


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
        if best.get("source"):
            trial += f" from {best['source']}"
        console.print(f"best: {fmt(best['value'])} with [bold]{best['optimizer']}[/bold]"
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
                          str(o["failed"]), fmt(o["best_value"]),
                          _hps(o["best_hyperparameters"]))
        console.print(table)


def cmd_jobs_list(args: argparse.Namespace) -> int:
    with api_client(args) as client:
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
    make_console().print(table)
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    with api_client(args) as client:
        job = client.get_job(args.job_id)
        trials = client.job_trials(args.job_id) if args.trials else None
    if args.json:
        _print_json(job if trials is None else {**job, "trials": trials})
        return 0
    console = make_console()
    render_job(job, console)
    if trials is not None:
        table = Table(title="Trials")
        for col in ("#", "state", "value", "optimizer", "hyperparameters", "schedule",
                    "source", "reason"):
            table.add_column(col)
        for t in trials:
            table.add_row(str(t["number"]), t["state"] + (" (retried)" if t["retried"] else ""),
                          fmt(t["value"]), t["optimizer"] or "-", _hps(t["hyperparameters"]),
                          escape(schedule_text(t.get("schedule"))),
                          t.get("source") or "", t["reason"] or "")
        console.print(table)
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    with api_client(args) as client:
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
    console = make_console()
    with api_client(args) as client:
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
    console = make_console()
    with api_client(args) as client:
        job = client.create_job(args.workload, n_trials=args.trials, task=task,
                                optimizers=args.optimizers, seed=args.seed, pruner=args.pruner,
                                timeout_s=args.timeout, max_retries=args.max_retries,
                                namespace=args.namespace, use_history=not args.no_history)
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
    with api_client(args) as client:
        if args.summary:
            data = client.results_summary(**filters, num_parameters=args.params,
                                          factor=args.factor)
        else:
            data = client.results(**filters, limit=args.limit, offset=args.offset)
    if args.json:
        _print_json(data)
        return 0
    console = make_console()
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
                          fmt(o["median_best_value"]), o["metric"] or "-")
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
                      f"{fmt(r['best_value'])} {r['metric']}", r["best_optimizer"] or "-",
                      str(r["trials_used"]), r["created_at"][:19])
    console.print(table)
    return 0


def _add_remote_flags(p: argparse.ArgumentParser, json_flag: bool = True) -> None:
    p.add_argument("--url", help="API base URL (default: $OPTPILOT_URL or "
                   "http://127.0.0.1:8000); the key comes from $OPTPILOT_API_KEY")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print the API's JSON")


def add_remote_parsers(sub: Any) -> None:
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
    p.add_argument("--optimizers", type=names, help="comma-separated names (default: prior's)")
    p.add_argument("--seed", type=int)
    p.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median",
                   help="stops trials that do worse than others at the same epoch")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--max-retries", type=int, help="retries of a trial whose worker died")
    add_history_flags(p)
    p.add_argument("--watch", action="store_true", help="then watch it until it finishes")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls (--watch)")
    _add_remote_flags(p)
    add_task_flags(p, required=False)
    p.set_defaults(handler=cmd_jobs_launch)

    p = sub.add_parser("results", help="past results on a running server (filters AND)")
    p.add_argument("--family", help="model family")
    p.add_argument("--task-type")
    p.add_argument("--optimizer", help="the winning optimizer")
    p.add_argument("--workload")
    p.add_argument("--min-params", type=count)
    p.add_argument("--max-params", type=count)
    p.add_argument("--limit", type=int, default=20, help="results per page")
    p.add_argument("--offset", type=int, default=0, help="results to skip")
    p.add_argument("--summary", action="store_true", help="which optimizer won how often")
    p.add_argument("--params", type=count, help="with --summary: tasks of a similar size")
    p.add_argument("--factor", type=float, help="with --params: within this factor (default 10)")
    _add_remote_flags(p)
    p.set_defaults(handler=cmd_results)
