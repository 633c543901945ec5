"""The ``optpilot`` command line.

Local commands need no server: ``optimizers``, ``workloads``, ``recommend``, ``tune``. Service
commands: ``serve`` (API + local workers + SQLite, the embedded default), ``worker``, ``db``.
Remote commands talk to a running API (``--url``, default ``$OPTPILOT_URL`` or
http://127.0.0.1:8000; key from ``$OPTPILOT_API_KEY``): ``jobs list|show|watch|cancel|launch``,
``results``, ``insights``, ``history export|import`` (these two, like ``report``, also work on
the database itself with ``--db``). Bad input, and any error answer or unreachable server, ends
with a one-line message on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from service.cli.common import CliError, Handler, Parser, database_url, version_text
from service.cli.history import add_history_parser, add_insights_parser
from service.cli.local import add_local_parsers
from service.cli.remote import add_remote_parsers
from service.cli.report import add_report_parser
from service.cli.serve import add_service_parsers

__all__ = ["CliError", "build_parser", "database_url", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="optpilot",
        description="Optimizer recommendations and prior-guided tuning for PyTorch training.")
    parser.add_argument("--version", action="version", version=f"optpilot {version_text()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    add_local_parsers(sub)
    add_service_parsers(sub)
    add_remote_parsers(sub)
    add_report_parser(sub)
    add_insights_parser(sub)
    add_history_parser(sub)
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
