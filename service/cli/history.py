"""The history's commands: ``optpilot insights`` (where the rules were wrong) and ``optpilot
history export|import`` (finished jobs as JSON lines, from one server to another).

Like ``optpilot report``, each asks a running server (``--url``, default ``$OPTPILOT_URL`` or
http://127.0.0.1:8000, key from ``$OPTPILOT_API_KEY``) or works on the database itself (``--db``,
a SQLite file or URL, whose schema must be at the service's head revision; nothing is created).
An import checks the whole file first: a bad line is one error line naming its number and
field, exit status 2, and nothing is imported.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.table import Table

from service.cli.common import (
    CliError,
    add_source_flags,
    database_url,
    display_url,
    fmt,
    make_console,
)
from service.cli.remote import api_client

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

DB_HELP = "use this database (SQLite file or URL) instead of asking a server"


def _namespace(value: str | None) -> str | None:
    from tuner.evidence.history import HistoryError, check_namespace

    try:
        return None if value is None else check_namespace(value)
    except HistoryError as exc:
        raise CliError(f"--namespace: {exc}") from None


@contextmanager
def _database(db: str, *, write: bool = False) -> Iterator[Session]:
    """A session on the service database ``db``, whose schema must be at head; its errors
    become one-line CLI errors. Reads go through a read-only engine."""
    from sqlalchemy.exc import SQLAlchemyError

    from service.core.db import (
        create_engine_for,
        current_revision,
        head_revision,
        make_sessionmaker,
        read_only_engine,
    )

    url = database_url(db)
    try:
        engine = read_only_engine(url)
    except FileNotFoundError as exc:
        raise CliError(f"no database at {exc} (`optpilot db upgrade --db {db}` creates "
                       "it)") from None
    try:
        revision, head = current_revision(engine), head_revision()
        if revision != head:
            raise CliError(f"the database at {display_url(url)} is at revision {revision}, "
                           f"expected {head}: run `optpilot db upgrade --db {db}`")
        if write:
            engine.dispose()
            engine = create_engine_for(url)
        with make_sessionmaker(engine)() as session:
            yield session
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        raise CliError(f"cannot {'write to' if write else 'read'} {display_url(url)}: "
                       f"{str(cause).splitlines()[0][:200]}") from None
    finally:
        engine.dispose()


# -- insights -----------------------------------------------------------------------------------


def _share(row: dict[str, Any]) -> str:
    if row["top_pick_won"] is None:
        return "-"
    return f"{row['top_pick_won']:.0%} of {row['decided']}"


def _ratio(row: dict[str, Any]) -> str:
    if row["median_lr_ratio"] is None:
        return "-"
    return f"x{fmt(row['median_lr_ratio'])} ({row['lr_jobs']})"


def render_insights(data: dict[str, Any]) -> None:
    console = make_console()
    ignored = (f"; {data['ignored']} with fewer than {data['min_completed_trials']} completed "
               "trials not counted" if data["ignored"] else "")
    console.print(f"[bold]Where the rules were wrong[/bold]: namespace {data['namespace']}, "
                  f"{data['jobs']} job(s){ignored}")
    prior = data["prior"]
    if not data["jobs"]:
        console.print("no finished job to learn from yet")
        return
    console.print(f"the rules' top-1 won {_share(prior)} job(s); tuned lr / the rules' lr: "
                  f"median {_ratio(prior)}")
    table = Table()
    for col in ("rule", "top pick", "jobs", "top pick won", "pick ran", "median lr ratio (jobs)",
                "examples"):
        table.add_column(col)
    fired = [row for row in data["rules"] if row["jobs"]]
    for row in fired:
        tried = "-" if row["top_pick_tried"] is None else str(row["top_pick_tried"])
        table.add_row(row["rule"], row["top_pick"] or "-", str(row["jobs"]), _share(row), tried,
                      _ratio(row), ", ".join(row["examples"]))
    console.print(table)
    silent = [row["rule"] for row in data["rules"] if not row["jobs"]]
    if silent:
        console.print(f"never fired: {', '.join(silent)}")


def cmd_insights(args: argparse.Namespace) -> int:
    namespace = _namespace(args.namespace) or "default"
    if args.db:
        from service.api.schemas import RuleInsightsOut
        from service.jobs.history import namespace_insights

        with _database(args.db) as session:
            data = RuleInsightsOut.of(namespace, namespace_insights(session, namespace))
        answer: dict[str, Any] = data.model_dump(mode="json")
    else:
        with api_client(args) as client:
            answer = client.rule_insights(namespace=namespace)
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        render_insights(answer)
    return 0


# -- export and import --------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    namespace = _namespace(args.namespace)
    if args.db:
        from service.jobs.history import export_lines

        with _database(args.db) as session:
            lines = export_lines(session, namespace)
    else:
        from tuner.evidence.export import dump_line

        with api_client(args) as client:
            lines = [dump_line(entry) for entry in client.export_history(namespace=namespace)]
    text = "".join(f"{line}\n" for line in lines)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        try:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise CliError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    where = "stdout" if args.output == "-" else args.output
    print(f"wrote {len(lines)} job(s) to {where}", file=sys.stderr)
    return 0


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None


def cmd_import(args: argparse.Namespace) -> int:
    from tuner.evidence.export import ExportFileError, load_lines

    lines = _read(args.file).split(b"\n")
    try:
        outcomes = load_lines(lines)  # the whole file, before anything is sent or written
    except ExportFileError as exc:
        raise CliError(f"{args.file}: {exc}; nothing imported") from None
    if args.db:
        from service.jobs.history import import_outcomes

        with _database(args.db, write=True) as session:
            report = import_outcomes(session, outcomes)
        answer = {"added": report.added, "skipped": report.skipped}
    else:
        with api_client(args) as client:
            answer = client.import_history(line.decode() for line in lines)
    if args.json:
        print(json.dumps(answer))
    else:
        print(f"imported {answer['added']} job(s) from {args.file}; {answer['skipped']} skipped "
              "(already there)")
    return 0


# -- parsers ------------------------------------------------------------------------------------


def add_insights_parser(sub: Any) -> None:
    p = sub.add_parser("insights", help="where the rules were wrong: each rule against the "
                       "finished jobs, most wrong first")
    p.add_argument("--namespace", default="default", help="whose jobs")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    add_source_flags(p, DB_HELP)
    p.set_defaults(handler=cmd_insights)


def add_history_parser(sub: Any) -> None:
    history = sub.add_parser("history", help="finished jobs as JSON lines: export, import")
    actions = history.add_subparsers(dest="history_command", required=True, metavar="ACTION")

    p = actions.add_parser("export", help="write the history, one job a line, oldest first")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write (- for "
                   "stdout)")
    p.add_argument("--namespace", help="only this namespace's jobs (default: every namespace)")
    add_source_flags(p, DB_HELP)
    p.set_defaults(handler=cmd_export)

    p = actions.add_parser("import", help="add the jobs of an export file (all or nothing; "
                           "job ids already there are skipped)")
    p.add_argument("file", metavar="FILE", help="an export file (- for stdin)")
    p.add_argument("--json", action="store_true", help='print {"added": n, "skipped": m}')
    add_source_flags(p, DB_HELP)
    p.set_defaults(handler=cmd_import)
