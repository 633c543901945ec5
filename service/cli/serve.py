"""Running the service: ``serve`` (API + local workers, the embedded default), ``worker``,
``db``."""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from service.cli.common import CliError, database_url


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


def add_service_parsers(sub: Any) -> None:
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
