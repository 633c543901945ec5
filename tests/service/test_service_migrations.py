"""Migrations on SQLite and PostgreSQL: own version table, up/down, models in step, Optuna too."""

from __future__ import annotations

import optuna
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from service.core.db import (
    VERSION_TABLE,
    Base,
    create_engine_for,
    current_revision,
    downgrade,
    head_revision,
    upgrade,
)

SERVICE_TABLES = {"recommendations", "jobs", "results"}


def _tables(url: str) -> set[str]:
    engine = create_engine_for(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _revision(url: str) -> str | None:
    engine = create_engine_for(url)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


def test_upgrade_creates_tables_and_own_version_table(database_url: str) -> None:
    upgrade(database_url)
    tables = _tables(database_url)
    assert SERVICE_TABLES | {VERSION_TABLE} <= tables
    assert VERSION_TABLE == "optpilot_alembic_version"
    assert "alembic_version" not in tables
    assert head_revision() is not None
    assert _revision(database_url) == head_revision()
    upgrade(database_url)  # idempotent
    assert _revision(database_url) == head_revision()


def test_downgrade_to_base_and_back(database_url: str) -> None:
    upgrade(database_url)
    downgrade(database_url, "base")
    assert not SERVICE_TABLES & _tables(database_url)
    assert _revision(database_url) is None
    upgrade(database_url)
    assert _tables(database_url) >= SERVICE_TABLES


def test_models_match_migrations(migrated_url: str) -> None:
    engine = create_engine_for(migrated_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "version_table": VERSION_TABLE,
                    "include_name": lambda name, kind, _parent: (
                        kind != "table" or name in Base.metadata.tables
                    ),
                },
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_optuna_tables_coexist(database_url: str) -> None:
    storage = optuna.storages.RDBStorage(database_url)
    optuna.create_study(storage=storage, study_name="neighbour")
    upgrade(database_url)
    tables = _tables(database_url)
    assert {"alembic_version", VERSION_TABLE, "studies"} | SERVICE_TABLES <= tables
    downgrade(database_url, "base")
    tables = _tables(database_url)
    assert "studies" in tables and "alembic_version" in tables
    assert not SERVICE_TABLES & tables
    assert optuna.load_study(study_name="neighbour", storage=storage).study_name == "neighbour"
    storage.engine.dispose()
