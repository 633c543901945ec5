"""Local worker processes under supervision: ``optpilot serve`` and ``optpilot worker`` with several
devices.

:class:`Supervisor` starts one worker process per device and watches them from a thread:

- a worker that dies (crash, out of memory, killed) is started again, after a backoff that
  doubles from ``RESTART_BACKOFF_S`` up to ``RESTART_BACKOFF_MAX_S`` while it keeps dying within
  ``STABLE_AFTER_S`` of its start; a worker that exits with status 0 (``--max-trials`` reached)
  is left alone;
- :meth:`Supervisor.stop` asks every worker to stop after its running trial (SIGUSR1), waits up
  to ``stop_timeout_s``, then asks those still running to hand their trial back (SIGUSR2: the
  trial is failed at its next report and enqueued again at once, its slot given back), waits
  ``HAND_BACK_TIMEOUT_S`` more, and kills what is left (that trial is then retried after the
  grace period, like any lost worker's). :meth:`Supervisor.hurry` (a second Ctrl-C) skips the
  current wait.

Call :func:`service.core.db.prepare` before :meth:`Supervisor.start`: workers that all find an empty
database race to create Optuna's tables.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing.context import SpawnProcess

from service.runners.loop import BackgroundLoop
from service.runners.worker import WorkerConfig, spawn_worker

log = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT_S = 30.0
HAND_BACK_TIMEOUT_S = 30.0
RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_MAX_S = 60.0
STABLE_AFTER_S = 60.0
WATCH_INTERVAL_S = 0.5


@dataclass
class _Slot:
    """One device's worker: the running process, or when to start the next one."""

    device: str
    process: SpawnProcess | None = None
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None
    finished: bool = False


class Supervisor:
    """Starts, restarts and stops the local worker processes of ``config`` on ``devices``."""

    def __init__(self, config: WorkerConfig, devices: Sequence[str], *,
                 stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
                 watch_interval_s: float = WATCH_INTERVAL_S) -> None:
        self._config = replace(config, supervisor_pid=os.getpid())
        self._slots = [_Slot(device) for device in devices]
        self._stop_timeout_s = stop_timeout_s
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._urgency = 0
        self._hurried = threading.Event()
        self._watch = _Watch(self, watch_interval_s, self._stopping)

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            for slot in self._slots:
                self._spawn(slot)
        self._watch.start()

    def pids(self) -> list[int]:
        """The worker processes now alive."""
        with self._lock:
            return [s.process.pid for s in self._slots
                    if s.process is not None and s.process.pid is not None and
                    s.process.is_alive()]

    def finished(self) -> bool:
        """Every worker exited by itself with status 0 (e.g. ``--max-trials`` reached)."""
        with self._lock:
            return all(slot.finished for slot in self._slots)

    def _spawn(self, slot: _Slot) -> None:
        slot.process = spawn_worker(self._config, slot.device)
        slot.started_at = time.monotonic()
        slot.restart_at = None
        log.info("worker on %s started (pid %s)", slot.device, slot.process.pid)

    def check_workers(self) -> None:
        """Note exits, restart the workers that died once their backoff is over."""
        with self._lock:
            if self._stopping.is_set():
                return
            for slot in self._slots:
                self._check(slot, time.monotonic())

    def _check(self, slot: _Slot, now: float) -> None:
        process = slot.process
        if process is not None:
            if process.is_alive():
                if now - slot.started_at >= STABLE_AFTER_S:
                    slot.quick_deaths = 0
                return
            code, pid = process.exitcode, process.pid
            slot.process = None
            process.close()
            if code == 0:
                slot.finished = True
                log.info("worker on %s (pid %s) exited", slot.device, pid)
                return
            slot.quick_deaths += 1
            delay = min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** (slot.quick_deaths - 1))
            slot.restart_at = now + delay
            log.error("worker on %s (pid %s) died (%s); starting another in %.0f s",
                      slot.device, pid, _exit_text(code), delay)
            return
        if slot.restart_at is not None and now >= slot.restart_at:
            self._spawn(slot)

    # -- stopping --------------------------------------------------------------------------

    def hurry(self) -> None:
        """Skip the current stop step: hand back now, or kill now when already handing back."""
        self._urgency += 1
        self._hurried.set()

    def stop(self) -> None:
        """Stop every worker after its running trial (see the module docstring); returns when
        they are all gone."""
        self._watch.join()
        with self._lock:
            processes = [s.process for s in self._slots if s.process is not None]
            for slot in self._slots:
                slot.process = None
        steps = ((signal.SIGUSR1, self._stop_timeout_s, "stop after their running trial"),
                 (signal.SIGUSR2, HAND_BACK_TIMEOUT_S, "hand their running trial back"),
                 (signal.SIGKILL, 10.0, "be killed"))
        for step, (signum, timeout_s, what) in enumerate(steps):
            alive = [p for p in processes if p.is_alive()]
            if not alive:
                break
            log.info("asking %d worker(s) to %s", len(alive), what)
            for p in alive:
                _send(p, signum)
            self._wait(alive, timeout_s, step)
        for p in processes:
            p.join(1.0)
            if not p.is_alive():
                p.close()

    def _wait(self, processes: Sequence[SpawnProcess], timeout_s: float, step: int) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._urgency <= step:
            if not any(p.is_alive() for p in processes):
                return
            self._hurried.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            self._hurried.clear()


class _Watch(BackgroundLoop):
    name = "worker-supervisor"
    wait_first = True  # the workers have just been started

    def __init__(self, supervisor: Supervisor, interval_s: float,
                 stop: threading.Event) -> None:
        super().__init__(interval_s, stop)
        self._supervisor = supervisor

    def tick(self) -> bool:
        self._supervisor.check_workers()
        return False


def _send(process: SpawnProcess, signum: int) -> None:
    if process.pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signum)


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit status {code}"
