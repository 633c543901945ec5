"""The database: engines, sessions, the declarative base and migrations.

One engine per process (``create_app`` makes one per app and disposes it on shutdown; workers and
the CLI call ``create_engine_for`` once). Sessions are synchronous; routes that use them are plain
``def`` functions, run in FastAPI's thread pool.

SQLite connections get WAL journaling, a busy timeout and enforced foreign keys; PostgreSQL
connections are pinged before use. Migrations live in ``service/core/migrations`` and record their
revision in ``optpilot_alembic_version`` (Optuna keeps its own ``alembic_version`` beside it).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, MetaData, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool, StaticPool

from service.core import jsonsafe

logger = logging.getLogger("optpilot.service")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "optpilot_alembic_version"
DEFAULT_SQLITE_BUSY_TIMEOUT_S = 10.0
SERVER_POOL = {"pool_size": 20, "max_overflow": 20}
"""Connections kept open to a database server (PostgreSQL): as many as FastAPI's thread pool
runs requests at once. SQLAlchemy's default (5 kept, 10 more opened and closed per use) made
each request beyond the fifth concurrent one open a new server connection, a process each on
PostgreSQL. A process uses only the connections it needs at once (a worker: one or two)."""

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of the service's tables (not Optuna's)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_in_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or url.query.get("mode") == "memory"


# --- SQLite writers take turns ------------------------------------------------------------

_WRITE_PREFIXES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "BEGIN IMMEDIATE", "CREATE", "DROP",
                   "ALTER")
_writer_queues: dict[str, threading.Lock] = {}
_writer_queues_guard = threading.Lock()


def _writer_queue(database: str) -> threading.Lock:
    key = os.path.realpath(os.path.expanduser(database))
    with _writer_queues_guard:
        return _writer_queues.setdefault(key, threading.Lock())


def take_turns_writing(engine: Engine, database: str, wait_s: float) -> None:
    """Make this process's writers of the SQLite file ``database`` queue on one lock, from the
    first write of a transaction to its commit or rollback, before they meet SQLite's.

    SQLite's busy handler polls: a writer that finds the file locked sleeps (1 ms, growing to
    100 ms) and tries again, and whoever tries at the right moment wins, so under many
    concurrent requests a waiting writer can lose again and again (an ask/tell heartbeat waited
    almost a second behind 16 clients' asks). Queued on a lock, each writer starts the moment
    the one before it ends. Every engine of the process on the same file shares the lock (the
    service's and Optuna's); other processes still meet at SQLite's own lock. A writer that
    waited ``wait_s`` goes on without its turn and leaves it to SQLite's busy timeout.
    """
    queue = _writer_queue(database)

    @event.listens_for(engine, "before_cursor_execute")
    def _queue(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        info = connection.info
        if "writer_turn" not in info and statement.lstrip()[:15].upper().startswith(
                _WRITE_PREFIXES):
            info["writer_turn"] = queue.acquire(timeout=wait_s)

    def _end(info: dict[str, Any]) -> None:
        if info.pop("writer_turn", False):
            queue.release()

    event.listen(engine, "commit", lambda connection: _end(connection.info))
    event.listen(engine, "rollback", lambda connection: _end(connection.info))
    # a connection given back mid-transaction (rolled back by the pool) ends its turn too
    event.listen(engine, "checkin", lambda _dbapi, record: _end(record.info))


def create_engine_for(
    url: str | URL,
    *,
    sqlite_busy_timeout_s: float = DEFAULT_SQLITE_BUSY_TIMEOUT_S,
    **kwargs: Any,
) -> Engine:
    """A new engine for ``url``, configured for this service; call it once per process.

    SQLite: ``check_same_thread=False``, WAL journal, ``busy_timeout``, ``foreign_keys=ON`` on
    every connection (the file's directory is created if missing). PostgreSQL and others:
    ``pool_pre_ping`` and :data:`SERVER_POOL`. JSON columns are written without NaN/Infinity.
    ``kwargs`` go to ``sqlalchemy.create_engine``.
    """
    parsed = make_url(url)
    kwargs.setdefault("json_serializer", jsonsafe.dumps)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        for key, value in SERVER_POOL.items():
            kwargs.setdefault(key, value)
        return create_engine(parsed, **kwargs)

    connect_args: dict[str, Any] = dict(kwargs.pop("connect_args", {}))
    connect_args.setdefault("check_same_thread", False)
    connect_args.setdefault("timeout", sqlite_busy_timeout_s)
    in_memory = _sqlite_in_memory(parsed)
    if in_memory:
        kwargs.setdefault("poolclass", StaticPool)
    else:
        # As many connections as FastAPI's thread pool has threads: overflow connections are
        # opened and closed per request otherwise, each paying the PRAGMAs below.
        kwargs.setdefault("pool_size", 20)
        kwargs.setdefault("max_overflow", 20)
        if parsed.database:
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args=connect_args, **kwargs)
    if not in_memory and parsed.database:
        take_turns_writing(engine, parsed.database, sqlite_busy_timeout_s)
    busy_ms = max(1, round(sqlite_busy_timeout_s * 1000))

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            if not in_memory:
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    return engine


def read_only_engine(url: str | URL) -> Engine:
    """An engine that reads ``url`` without creating or changing anything: no file, directory
    or journal mode for SQLite (FileNotFoundError when the file is missing), nothing for
    PostgreSQL. For inspecting a database (``optpilot db current``)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, poolclass=NullPool)
    if _sqlite_in_memory(parsed):
        return create_engine(parsed, poolclass=StaticPool)
    path = Path(parsed.database or "").expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(str(path))
    # Read-only mode leaves -wal/-shm files behind; without a -wal file every committed change
    # is in the main file, which "immutable" reads without them.
    mode = "mode=ro" if Path(f"{path}-wal").exists() else "immutable=1"
    return create_engine(f"sqlite:///file:{path}?{mode}&uri=true", poolclass=NullPool)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to ``engine``; objects stay readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)




def ping(engine: Engine) -> None:
    """``SELECT 1``; raises SQLAlchemy's error when the database cannot be reached."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


# --- migrations -------------------------------------------------------------------------------


def alembic_config(url: str | URL | None = None) -> Config:
    """Alembic configuration for the service's migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.attributes["database_url"] = make_url(url)
    return config


def _run_migration(url: str | URL, engine: Engine | None, action: str, revision: str) -> None:
    own_engine = engine is None
    bound = create_engine_for(url) if engine is None else engine
    try:
        with bound.begin() as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            if action == "upgrade":
                command.upgrade(config, revision)
            else:
                command.downgrade(config, revision)
    finally:
        if own_engine:
            bound.dispose()


def upgrade(url: str | URL, revision: str = "head", *, engine: Engine | None = None) -> None:
    """Migrate the service's tables at ``url`` to ``revision`` (default: the latest).

    Idempotent; safe to call at every start. On PostgreSQL concurrent callers are serialized by
    an advisory lock; on SQLite call it from one process before starting workers.
    """
    _run_migration(url, engine, "upgrade", revision)


def prepare(url: str | URL) -> None:
    """Everything a database needs before workers start: the service's migrations and Optuna's
    own tables. Workers that find no Optuna tables create them, and several doing so at once on
    a fresh database collide ("table studies already exists")."""
    import optuna

    upgrade(url)
    storage = optuna.storages.RDBStorage(make_url(url).render_as_string(hide_password=False))
    storage.engine.dispose()


def downgrade(url: str | URL, revision: str = "base", *, engine: Engine | None = None) -> None:
    """Migrate the service's tables at ``url`` down to ``revision`` (default: drop them all)."""
    _run_migration(url, engine, "downgrade", revision)


def current_revision(engine: Engine) -> str | None:
    """The service schema's revision at ``engine`` (None before the first upgrade)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE}
        )
        return context.get_current_revision()


def head_revision() -> str | None:
    """The latest revision shipped with this package."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
