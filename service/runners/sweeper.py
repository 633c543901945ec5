"""The API process's lease sweeper: fails client-evaluated trials whose lease expired.

Requests for a job reap its expired leases too; the sweeper catches the jobs nobody asks about,
every ``reap_interval_s``.
"""

from __future__ import annotations

from fastapi import FastAPI

from service.core.storage import storage_for_app
from service.jobs.leases import reap_all
from service.runners.loop import BackgroundLoop


class LeaseSweeper(BackgroundLoop):
    name = "lease-sweeper"
    wait_first = True  # the app has just started: nothing has expired on its watch yet

    def __init__(self, app: FastAPI, interval_s: float) -> None:
        super().__init__(interval_s)
        self._app = app

    def tick(self) -> bool:
        with self._app.state.sessionmaker() as session:
            reap_all(session, storage_for_app(self._app))
        return False
