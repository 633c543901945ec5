"""Worker processes: one per device, each taking trials of active jobs from the shared storage.

Coordination is Optuna's distributed mode plus the job table's slot counter
(service.jobs.state): any number of workers on any number of machines open the same database.
A worker

1. lists active jobs with a server-side workload, oldest first;
2. claims one trial slot (atomic), asks the job's study for a trial (enqueued warm-start and
   retried trials first), runs it with the tuner's trial runner while a thread records Optuna
   heartbeats, and finishes the job when its budget is spent;
3. every heartbeat interval, fails trials whose worker went silent (they are retried).

SIGTERM/SIGINT: stop claiming, finish the running trial, exit. A second signal hands the running
trial back at its next report (failed with reason ``worker stopped``, enqueued again at once with
the same parameters, its slot given back) and exits; a third exits at once (the trial is then
reaped and retried after the grace period, like any lost worker's).

SIGUSR1 asks for the first step however often it comes, SIGUSR2 for the second: a supervisor
(:class:`service.runners.supervisor.Supervisor`, behind ``optpilot serve``) stops its workers
with them, so a Ctrl-C that reached the whole process group does not count twice. A supervised
worker also stops after its current trial when its supervisor disappears (killed with SIGKILL).

A database outage does not cost the running trial: its reads and writes wait for the database
to come back (:class:`service.core.storage.PatientStorage`, up to ``outage_wait_s``), the
cancellation check keeps its last answer meanwhile, and the poll loop backs off (up to
``MAX_OUTAGE_BACKOFF_S``) until the database answers again.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing.context import SpawnProcess
from types import FrameType

import optuna
import sqlalchemy as sa

from service.core.db import create_engine_for, make_sessionmaker
from service.core.errors import database_unavailable
from service.core.logs import log_context, setup_logging
from service.core.models import Job
from service.core.storage import (
    DEFAULT_GRACE_PERIOD_S,
    DEFAULT_HEARTBEAT_INTERVAL_S,
    ask,
    open_optuna_storage,
)
from service.jobs.state import (
    ACTIVE,
    MAX_TRIALS,
    claim_trial_slot,
    deadline_passed,
    fail_and_retry,
    finish_if_done,
    reap_lost_trials,
    reconcile_slots,
    release_trial_slot,
    should_stop,
)
from service.jobs.studies import study_cache
from service.runners.loop import BackgroundLoop
from tuner import optuna_internals
from tuner.contract import TRIAL_WORKER

log = logging.getLogger(__name__)

STOP_CHECK_INTERVAL_S = 1.0
REASON_HANDED_BACK = "worker stopped (handed back)"
# Backoff while the database cannot be opened at start (e.g. another process is creating
# Optuna's tables in a fresh database): doubling up to the cap, until stopped.
OPEN_RETRY_FIRST_S = 0.5
OPEN_RETRY_MAX_S = 30.0
DEFAULT_OUTAGE_WAIT_S = 300.0



def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class WorkerConfig:
    database_url: str
    device: str = "cpu"
    poll_interval_s: float = 0.5
    heartbeat_interval_s: int = DEFAULT_HEARTBEAT_INTERVAL_S
    grace_period_s: int = DEFAULT_GRACE_PERIOD_S
    threads: int | None = None
    """torch threads; default 1: optpilot's trials train small models, and several threads per
    worker mostly contend (10x slower measured on 2 cores)."""
    max_trials: int | None = None
    """Exit after this many trials (tests, batch use); None: run until stopped."""
    supervisor_pid: int | None = None
    """The supervising process (``optpilot serve``): the worker stops after its current trial
    once that process is gone. None: a standalone worker."""
    outage_wait_s: float = DEFAULT_OUTAGE_WAIT_S
    """How long a running trial waits for an unavailable database before it gives up (then
    it is reaped and retried like a trial whose worker died)."""


def parse_devices(text: str | None) -> list[str]:
    """``"cuda:0,cuda:1"``, ``"cpu"``, ``"cpu,cpu"``; default: every visible GPU, else one CPU."""
    if text:
        devices = [d.strip() for d in text.split(",") if d.strip()]
        for d in devices:
            if d != "cpu" and not (d.startswith("cuda:") and d[5:].isdigit()):
                raise ValueError(f"devices: {d!r} is not 'cpu' or 'cuda:N'")
        if devices:
            return devices
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(count)] or ["cpu"]


def pin_device(device: str) -> str:
    """Make ``device`` the only one this process sees, before CUDA starts; the torch device to
    use afterwards."""
    if device.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
        return "cuda:0"
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    return "cpu"


class _Heartbeat(BackgroundLoop):
    """Records an Optuna heartbeat for one running trial every ``interval`` seconds; a missed
    beat is retried (the grace period absorbs a few)."""

    name = "heartbeat"
    wait_first = True  # __enter__ records the first beat

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int,
                 interval: float) -> None:
        super().__init__(interval)
        self._storage, self._trial_id = storage, trial_id

    def tick(self) -> bool:
        self._storage.record_heartbeat(self._trial_id)
        return False

    def __enter__(self) -> _Heartbeat:
        try:
            self._storage.record_heartbeat(self._trial_id)
        except Exception as exc:  # the thread beats again soon; the trial goes on meanwhile
            if not database_unavailable(exc):
                raise
            log.warning("first heartbeat failed (database unavailable); retrying")
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.join()


class StoppedWhileStarting(Exception):
    """The worker was stopped before it could open its storage."""


class Worker(BackgroundLoop):
    """The poll loop of one worker process: :meth:`step` every poll interval while idle."""

    name = "worker"

    def __init__(self, config: WorkerConfig, stop: threading.Event | None = None,
                 hand_back: threading.Event | None = None) -> None:
        from tuner.trial import default_device

        super().__init__(config.poll_interval_s, stop)
        self.config = config
        self.hand_back = hand_back or threading.Event()
        """Set (with ``stop``): end the running trial at its next report and enqueue it again."""
        self.engine = create_engine_for(config.database_url)
        self.sessions = make_sessionmaker(self.engine)
        self.storage = self._open_storage()
        self.device = config.device if config.device != "auto" else default_device()
        self.trials_run = 0
        self._studies = study_cache(self.storage)
        self._last_reap = 0.0
        self._stop_checks: dict[str, tuple[float, bool]] = {}

    def _open_storage(self) -> optuna.storages.RDBStorage:
        """The Optuna storage; retried while the database refuses (down, or Optuna's tables
        being created by another process: "table studies already exists"). Raises
        :class:`StoppedWhileStarting` if stopped meanwhile."""
        delay = OPEN_RETRY_FIRST_S
        while True:
            try:
                return open_optuna_storage(
                    self.config.database_url,
                    heartbeat_interval_s=self.config.heartbeat_interval_s,
                    grace_period_s=self.config.grace_period_s,
                    outage_wait_s=self.config.outage_wait_s)
            except sa.exc.DBAPIError as exc:
                log.warning("cannot open the Optuna storage (%s); retrying in %.1f s",
                            str(exc).splitlines()[0], delay)
            if self.stop.wait(delay):
                self.engine.dispose()
                raise StoppedWhileStarting
            delay = min(delay * 2, OPEN_RETRY_MAX_S)

    def _study(self, job: Job) -> optuna.Study:
        return self._studies.study(job.study_name)

    def _active_jobs(self) -> list[Job]:
        with self.sessions() as session:
            return list(session.scalars(
                sa.select(Job).where(Job.status.in_(ACTIVE), Job.workload.is_not(None))
                .order_by(Job.created_at, Job.id)))

    def reap(self, jobs: Sequence[Job]) -> None:
        """Fail and retry trials of silent workers; finish jobs whose last trial was reaped."""
        for job in jobs:
            if job.trials_claimed == 0:
                continue
            study = self._study(job)
            reap_lost_trials(self.storage, study, job.id)
            with self.sessions() as session:
                reconcile_slots(session, study, job.id, self.config.grace_period_s)
                finish_if_done(session, study, job.id)

    def run_one(self, job: Job) -> bool:
        """Claim a slot of ``job`` and run one trial; False when the job had none to give.

        Every log line written meanwhile (by any logger, heartbeat thread included) carries
        ``job_id``, and ``trial`` once the trial is asked (service.core.logs)."""
        with log_context(job_id=job.id, trial=None):
            return self._run_one(job)

    def _run_one(self, job: Job) -> bool:
        from tuner.trial import run_trial
        from tuner.workloads import get_workload

        with self.sessions() as session:
            if not claim_trial_slot(session, job.id):
                return False
        study = self._study(job)
        try:
            trial = ask(study)
        except Exception:
            with self.sessions() as session:
                release_trial_slot(session, job.id)
            raise
        assert job.workload is not None
        trial_id = optuna_internals.trial_id(trial)
        with log_context(trial=trial.number):
            # The first heartbeat right after the ask: a trial without one is void after the
            # grace period (service.jobs.state.void_unstarted_trials).
            with _Heartbeat(self.storage, trial_id, self.config.heartbeat_interval_s):
                trial.set_user_attr(TRIAL_WORKER, worker_id())
                log.info("job %s trial %d on %s", job.id, trial.number, self.device)
                outcome = run_trial(study, self._studies.plan(job.study_name),
                                    get_workload(job.workload),
                                    trial=trial, seed=job.seed or 0, device=self.device,
                                    should_stop=lambda: self._should_stop(job.id, study,
                                                                          trial_id))
            log.info("job %s trial %d %s%s%s", job.id, trial.number,
                     outcome.state.name.lower(),
                     "" if outcome.value is None else f" with {outcome.value:.6g}",
                     f" ({outcome.reason})" if outcome.reason else "",
                     extra={"state": outcome.state.name.lower(),
                            "seconds": round(outcome.seconds, 3)})
            if outcome.reason == REASON_HANDED_BACK:
                return True
            self.trials_run += 1
            with self.sessions() as session:
                finish_if_done(session, study, job.id)
        return True

    def _hand_back(self, job_id: str, study: optuna.Study, trial_id: int) -> None:
        """Fail the running trial and enqueue it again at once (same parameters, slot given
        back), in one transaction as the reaper would after the grace period; a handed-back
        trial does not count against the job's ``max_retries``. Not for a stopped job."""
        lost = fail_and_retry(self.storage, optuna_internals.study_id(study), job_id, trial_id,
                              REASON_HANDED_BACK, max_retries=MAX_TRIALS)
        log.info("job %s: trial handed back%s", job_id,
                 " and enqueued again" if lost is not None and lost.retried
                 else " (the job has stopped)")

    def _should_stop(self, job_id: str, study: optuna.Study, trial_id: int) -> bool | str:
        """Handing back, cancelled or out of time? Asked at every report; the database at most
        once a second (a query per epoch measured 15 ms of a 300 ms trial)."""
        if self.hand_back.is_set():
            self._hand_back(job_id, study, trial_id)  # run_trial then finds it finished
            return REASON_HANDED_BACK
        now = time.monotonic()
        checked, answer = self._stop_checks.get(job_id, (-math.inf, False))
        if now - checked >= STOP_CHECK_INTERVAL_S:
            try:
                with self.sessions() as session:
                    answer = should_stop(session, job_id)
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                log.warning("cannot check job %s for cancellation (database unavailable); "
                            "going on", job_id)
            self._stop_checks[job_id] = (now, answer)
        return answer

    def step(self) -> bool:
        """One pass over the active jobs; True if a trial ran."""
        jobs = self._active_jobs()
        now = time.monotonic()
        if now - self._last_reap >= self.config.heartbeat_interval_s:
            self._last_reap = now
            self.reap(jobs)
        for job in jobs:
            if deadline_passed(job):
                with self.sessions() as session:
                    finish_if_done(session, self._study(job), job.id)
                continue
            if job.trials_claimed < job.n_trials and self.run_one(job):
                return True
        return False

    tick = step

    def keep_going(self) -> bool:
        if self.config.max_trials is not None and self.trials_run >= self.config.max_trials:
            return False
        supervisor = self.config.supervisor_pid
        if supervisor is None or os.getppid() == supervisor:
            return True
        log.warning("the supervising process %d is gone; stopping", supervisor)
        return False

    def run(self) -> int:
        """Poll until stopped; the number of trials run."""
        log.info("worker %d on %s: polling %s", os.getpid(), self.device,
                 self.engine.url.render_as_string(hide_password=True))
        try:
            self.loop()
        finally:
            self.engine.dispose()
        return self.trials_run


def worker_main(config: WorkerConfig) -> None:
    """Entry point of one worker process: handle signals, pin the device, run.

    SIGTERM/SIGINT: the first stops after the running trial, the second hands it back, the third
    exits at once. SIGUSR1 (a supervisor's stop request) stops after the running trial however
    often it comes; SIGUSR2 hands the running trial back.
    """
    stop, hand_back = threading.Event(), threading.Event()
    signals = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        if signals >= 3:
            os._exit(128 + signum)
        if signals == 2:
            hand_back.set()
        stop.set()

    def on_stop_request(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_hand_back_request(signum: int, frame: FrameType | None) -> None:
        hand_back.set()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, on_stop_request)
    signal.signal(signal.SIGUSR2, on_hand_back_request)
    device = pin_device(config.device)
    import torch

    torch.set_num_threads(config.threads or 1)
    setup_logging("worker", device=config.device, worker=worker_id())
    try:
        worker = Worker(replace(config, device=device), stop, hand_back)
    except StoppedWhileStarting:
        return
    worker.run()


def _worker_process(config: WorkerConfig) -> None:
    """A spawned worker's entry point: :func:`worker_main`, then exit without the interpreter's
    teardown. Everything the worker did is in the database by then, and the teardown of a
    process that has trained with torch took 3.7-4.1 s against 0.12-0.15 s (measured after a
    diabetes-mlp trial on a busy 2-core machine): time a stopping service would wait."""
    worker_main(config)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn_worker(config: WorkerConfig, device: str) -> SpawnProcess:
    """A worker process for ``device`` (spawned, so it pins its device before CUDA starts)."""
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=_worker_process, args=(replace(config, device=device),),
                              name=f"optpilot-worker-{device}", daemon=False)
    process.start()
    return process
