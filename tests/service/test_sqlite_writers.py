"""SQLite writers of one process take turns on one lock (``service.core.db.take_turns_writing``):
held from a transaction's first write to its end, shared by the service's engine and Optuna's
storage on the same file, never taken by reads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from sqlalchemy import Engine, text

from service.core.db import _writer_queue, create_engine_for, upgrade
from service.core.storage import open_optuna_storage


@pytest.fixture
def database(tmp_path: Path) -> str:
    path = str(tmp_path / "optpilot.db")
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def engine(database: str) -> Iterator[Engine]:
    bound = create_engine_for(f"sqlite:///{database}")
    with bound.begin() as connection:
        connection.execute(text("CREATE TABLE notes (x INTEGER)"))
    yield bound
    bound.dispose()


def test_a_write_holds_the_turn_until_commit_rollback_or_close(database: str,
                                                               engine: Engine) -> None:
    turn = _writer_queue(database)
    with engine.connect() as connection:
        connection.execute(text("SELECT count(*) FROM notes"))
        assert not turn.locked(), "a read takes no turn"
        connection.execute(text("INSERT INTO notes VALUES (1)"))
        assert turn.locked()
        connection.execute(text("INSERT INTO notes VALUES (2)"))  # the same turn, no deadlock
        connection.commit()
        assert not turn.locked()
        connection.execute(text("UPDATE notes SET x = 3"))
        assert turn.locked()
        connection.rollback()
        assert not turn.locked()
        connection.execute(text("DELETE FROM notes"))
        assert turn.locked()
    assert not turn.locked(), "a connection closed mid-transaction gives its turn back"


def test_optuna_waits_for_the_services_writer_and_goes_on_when_it_commits(
        database: str, engine: Engine) -> None:
    storage = open_optuna_storage(f"sqlite:///{database}")
    study = optuna.create_study(storage=storage, study_name="s")
    turn = _writer_queue(database)
    asked = threading.Event()

    def ask() -> None:
        study.ask()
        asked.set()

    try:
        with engine.connect() as connection:
            connection.execute(text("INSERT INTO notes VALUES (1)"))
            thread = threading.Thread(target=ask)
            thread.start()
            assert not asked.wait(0.3), "Optuna wrote while the service held its turn"
            assert turn.locked()
            connection.commit()
        assert asked.wait(10)
        thread.join()
        assert not turn.locked()
        assert len(study.trials) == 1
    finally:
        storage.engine.dispose()
