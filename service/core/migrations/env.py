"""Alembic environment for the service's own tables.

Run through ``service.core.db.upgrade(url)``; ``alembic`` on the command line works too with a
config whose ``script_location`` points here (the URL then comes from ``sqlalchemy.url`` or
``DATABASE_URL``). The revision is kept in ``optpilot_alembic_version`` so that Optuna's own
``alembic_version`` in the same database is never touched, and autogenerate only looks at the
service's tables.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import Connection, text

from service.core import models  # noqa: F401  (registers the tables on Base.metadata)
from service.core.db import VERSION_TABLE, Base, create_engine_for
from service.core.settings import Settings

# Serializes concurrent upgrades of one PostgreSQL database (API and workers starting together).
ADVISORY_LOCK_KEY = 0x6F70_7470  # "optp"

config = context.config
target_metadata = Base.metadata


def _url() -> Any:
    return (
        config.attributes.get("database_url")
        or config.get_main_option("sqlalchemy.url")
        or Settings().database_url
    )


def _include_name(name: str | None, type_: str, _parent: Any) -> bool:
    if type_ == "table":
        return name in target_metadata.tables
    return True


def _options() -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        "version_table": VERSION_TABLE,
        "include_name": _include_name,
        "compare_type": True,
    }


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        render_as_batch=connection.dialect.name == "sqlite",
        **_options(),
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            lock = text("SELECT pg_advisory_xact_lock(:key)")
            connection.execute(lock, {"key": ADVISORY_LOCK_KEY})
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=_url(), literal_binds=True, **_options())
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run(connection)
        return
    engine = create_engine_for(_url())
    try:
        with engine.begin() as own_connection:
            _run(own_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
