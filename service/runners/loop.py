"""The one shape every background loop of the service has: do a pass, wait, again, until stopped.

A pass that raises does not end the loop. A database outage (``service.core.errors
.database_unavailable``) is logged once when it starts and once when it ends, and the loop waits
longer meanwhile (from its interval, growing with the outage up to ``MAX_OUTAGE_BACKOFF_S``:
short enough to notice the database back soon). Any other error is logged with its traceback
every time. Subclasses: the worker's poll loop, a running trial's heartbeat, the API's lease
sweeper.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time

from service.core.errors import database_error_text, database_unavailable
from service.core.storage import MAX_OUTAGE_BACKOFF_S


class BackgroundLoop:
    """Calls :meth:`tick` every ``interval_s`` seconds until ``stop`` is set.

    ``wait_first``: wait one interval before the first pass (the caller did it already).
    :meth:`loop` blocks; :meth:`start` runs it on a daemon thread in the caller's logging
    context (its lines carry the caller's job and trial ids) and :meth:`join` stops that.
    """

    name = "loop"  # for log lines and the thread's name
    wait_first = False

    def __init__(self, interval_s: float, stop: threading.Event | None = None) -> None:
        self.interval_s = interval_s
        self.stop = stop or threading.Event()
        self.log = logging.getLogger(type(self).__module__)
        self._outage_since: float | None = None
        self._thread: threading.Thread | None = None

    def tick(self) -> bool:
        """One pass; True when it did work and the next pass should come without waiting."""
        raise NotImplementedError

    def keep_going(self) -> bool:
        """Checked before every pass: False ends the loop (as ``stop`` does)."""
        return True

    def loop(self) -> None:
        if self.wait_first and self.stop.wait(self.interval_s):
            return
        while not self.stop.is_set() and self.keep_going():
            wait_s = self.interval_s
            try:
                busy = self.tick()
                self._outage_over()
            except Exception as exc:  # one bad pass or an outage must not end the loop
                busy = False
                if database_unavailable(exc):
                    wait_s = self._outage_wait(exc)
                else:
                    self.log.exception("%s failed; going on", self.name)
            if not busy:
                self.stop.wait(wait_s)

    @property
    def in_outage(self) -> bool:
        return self._outage_since is not None

    def _outage_wait(self, exc: Exception) -> float:
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
            self.log.warning("%s: database unavailable; retrying: %s", self.name,
                             database_error_text(exc))
        return max(self.interval_s, min(MAX_OUTAGE_BACKOFF_S, now - self._outage_since))

    def _outage_over(self) -> None:
        if self._outage_since is not None:
            self.log.info("%s: database available again after %.0f s", self.name,
                          time.monotonic() - self._outage_since)
            self._outage_since = None

    def start(self) -> None:
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self.loop,),
                                        daemon=True, name=self.name)
        self._thread.start()

    def join(self) -> None:
        """Stop the loop and wait for its thread's current pass to end."""
        self.stop.set()
        if self._thread is not None:
            self._thread.join()
