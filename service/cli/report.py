"""``optpilot report JOB [-o FILE] [--url URL | --db DB]``: write a job's HTML report.

From a running server (``GET /v1/jobs/{id}/report``; ``--url``, default ``$OPTPILOT_URL`` or
http://127.0.0.1:8000, key from ``$OPTPILOT_API_KEY``, like the other remote commands), or built
straight from the database with ``--db`` (SQLite file or URL). The report builder and the
database are imported only when the command runs, so adding the parser costs nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from service.cli.common import CliError, add_source_flags, database_url, display_url


def report_from_database(url: str, job_id: str) -> str:
    """Build the report straight from the service database (no server)."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from service.core.db import create_engine_for, make_sessionmaker
    from service.core.storage import open_optuna_storage
    from service.jobs.state import JobNotFound, describe, get_job
    from service.report.render import build_report

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        from pathlib import Path

        if not Path(parsed.database).is_file():
            raise CliError(f"no database at {parsed.database}")
    engine = create_engine_for(url)
    storage = None
    try:
        sessions = make_sessionmaker(engine)
        with sessions() as session:
            job = get_job(session, job_id)  # before Optuna's storage, which would add its tables
            storage = open_optuna_storage(url)
            return build_report(describe(job, storage))
    except JobNotFound:
        raise CliError(f"job {job_id!r} was not found in {display_url(url)}") from None
    except SQLAlchemyError as exc:
        raise CliError(f"cannot read {display_url(url)}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]}") from None
    finally:
        if storage is not None:
            storage.engine.dispose()
        engine.dispose()


def report_from_server(base_url: str | None, job_id: str, api_key: str | None = None,
                       timeout_s: float = 120.0) -> str:
    """Fetch ``GET /v1/jobs/{id}/report`` (``base_url`` default ``$OPTPILOT_URL``, key default
    ``$OPTPILOT_API_KEY``)."""
    from urllib.parse import quote

    import httpx

    from service.client import API_KEY_ENV, DEFAULT_URL, URL_ENV, error_from_response

    base = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "").strip()
    headers = {"Accept": "text/html, application/problem+json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        response = httpx.get(f"{base}/v1/jobs/{quote(job_id, safe='')}/report",
                             headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the API at {base} ({type(exc).__name__}); is "
                          "`optpilot serve` running? (--url or OPTPILOT_URL)") from None
    if response.status_code != 200:
        error = error_from_response(response)
        hint = " (set OPTPILOT_API_KEY)" if response.status_code == 401 else ""
        raise CliError(f"{error}{hint}")
    return response.text


def cmd_report(args: argparse.Namespace) -> int:
    """``optpilot report JOB [-o FILE] [--url URL | --db DB]``; 2 on any failure."""
    try:
        if args.db:
            text = report_from_database(database_url(args.db), args.job_id)
        else:
            text = report_from_server(args.url, args.job_id)
        output = args.output or f"optpilot-report-{args.job_id}.html"
        if output == "-":
            sys.stdout.write(text)
        else:
            with open(output, "w", encoding="utf-8") as f:
                f.write(text)
            print(f"wrote {output} ({len(text.encode()) / 1024:.0f} KiB)", file=sys.stderr)
    except (CliError, OSError) as exc:
        print(f"optpilot report: error: {exc}", file=sys.stderr)
        return 2
    return 0


def add_report_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``report`` to the ``optpilot`` subcommands (``sub``: argparse's subparsers)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "report", help="write a job's HTML report: plots, the prior vs the result, best configs")
    p.add_argument("job_id", metavar="JOB")
    p.add_argument("-o", "--output", help="file to write (default: optpilot-report-JOB.html; "
                   "- for stdout)")
    add_source_flags(p, "build it from this database (SQLite file or URL) instead of asking "
                     "a server")
    p.set_defaults(handler=cmd_report)
    return p
