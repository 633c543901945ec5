"""Service throughput (issue #4): trials/s through the service against plain Optuna, and the
recommendation endpoint against a bare FastAPI endpoint, measured in one run.

    python -m bench.service_throughput                 # SQLite temp file, 40 trials, 2000 requests
    python -m bench.service_throughput --quick         # 12 trials, 300 requests (about a minute)
    python -m bench.service_throughput --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test

1. Trials. One API process (``optpilot serve --workers 0``) and real worker processes
   (``optpilot worker --devices cpu --threads 1 --poll-interval 0.05``) on one database. A job of
   ``--trials`` ``rosenbrock`` trials is timed from just before ``POST /v1/jobs`` to the job's
   ``finished_at``; workers are started and warmed by an untimed job first (a long-running service
   has warm workers). The baseline is plain Optuna in this process: ``study.optimize`` on an
   ``RDBStorage`` of the same database URL, the same study set-up (``tuner.tuning.create_study``:
   prior, sampler, pruner, warm-start points, seed) and the workload's own ``run`` as objective
   (report + ``should_prune`` each epoch), after an untimed warm-up study. Then one worker against
   two. By default jobs use ``adam,adamw`` with no pruner, so every trial trains its full budget
   and trials/s compare like with like (``--optimizers prior --pruner median`` for the service's
   defaults; epochs/s is printed for runs with pruned trials). CPU ms per trial (this process for
   plain Optuna, the workers for the service; database server not included) is printed too: on a
   shared machine it moves less than wall time. A stuck job or a dead worker is reported as a
   FAILED row (exit status 1) and the rest is still measured.
2. Requests. ``POST /v1/recommendations`` on the API process against a bare FastAPI app defined
   here (``POST /echo``: a sync route taking the same JSON body, returning a small dict), served the
   same way (one uvicorn process, default settings, info log level with access log), loaded by
   ``--concurrency`` asyncio httpx clients in this process. Server CPU per request (from /proc)
   is printed beside requests/s, since a saturated client flattens the req/s ratio.

3. Ask/tell. ``N`` client threads (``--clients``, default 1, 4 and 16), each running the Python
   client's ``trials()`` loop (``service.client``) on one ``workload: null`` job of
   ``--asktell-trials`` trials against the API process (leases of ``--lease-s``, default 5 s),
   a trivial objective with 3 reports per trial; against ``N`` plain Optuna threads doing
   ``ask``, 3 x ``report`` + ``should_prune``, ``tell`` on one study of the same set-up
   (``tuner.tuning.create_study``) on the same database. Trials/s as a ratio, interleaved per
   ``N`` (plain, then service). Heartbeat latency p50/p99 under that load: every heartbeat the
   clients send, plus a probe that holds a trial of another job and heartbeats it every 0.25 s
   through the whole run. Leases lost by live clients are counted (client side and the job's
   retried trials). Targets: 16 clients >= 0.5x plain Optuna, heartbeat p99 below a fifth of
   the lease, no lease lost.

PostgreSQL: ``--postgres URL`` names a server; a scratch database is created there and dropped at
the end. Every process started here is stopped, and every temporary file removed, on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
from fastapi import FastAPI

if TYPE_CHECKING:
    from tuner.tuning import PrunerName

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = "rosenbrock"
TERMINAL = ("completed", "failed", "cancelled")
RECOMMENDATION_BODY: dict[str, Any] = {
    "task": {"model_family": "transformer", "task_type": "language_modeling",
             "num_parameters": 124_000_000, "num_layers": 12, "dataset_size": 1_000_000,
             "batch_size": 256, "memory_budget_gb": 24.0, "precision": "bf16"},
    "top_k": 3,
}
WORKER_FLAGS = ("--devices", "cpu", "--threads", "1", "--poll-interval", "0.05")
START_TIMEOUT_S = 90.0
STALL_TIMEOUT_S = 60.0
"""A job whose finished-trial count does not move for this long is reported as stuck."""
STOP_TIMEOUT_S = 20.0
LOAD_TIMEOUT_S = 180.0


# -- the bare app (served by ``python -m uvicorn bench.service_throughput:bare_app --factory``) --


def bare_app() -> FastAPI:
    """The baseline: FastAPI, a sync route (thread pool, like the service's), JSON in and out."""
    app = FastAPI(title="bare")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/echo", status_code=201)
    def echo(body: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "fields": len(body), "id": uuid.uuid4().hex}

    return app


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTPILOT_")}
    env.pop("DATABASE_URL", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    return env


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def cpu_s(self) -> float | None:
        """User + system CPU seconds of the process so far (Linux), else None."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Processes:
    """The processes this run started; :meth:`stop_all` ends each one's process group."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen([sys.executable, *args], cwd=ROOT,
                                       env={**_env(), **(env or {})},
                                       stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        proc = Proc(name, process, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        process = proc.process
        if process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(STOP_TIMEOUT_S)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.procs)):
            self.stop(proc)


def wait_until(predicate: Any, timeout_s: float, what: str, proc: Proc | None = None,
               interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.process.poll() is not None:
            raise RuntimeError(f"{proc.name} exited ({proc.process.returncode}) while waiting "
                               f"for {what}; log tail:\n{proc.tail()}")
        time.sleep(interval_s)
    tail = f"; log tail:\n{proc.tail()}" if proc is not None else ""
    raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}{tail}")


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def start_api(procs: Processes, db_url: str, lease_s: float) -> tuple[Proc, str]:
    port = free_port()
    proc = procs.spawn("api", "-m", "service.cli", "serve", "--workers", "0", "--port", str(port),
                       "--db", db_url, env={"OPTPILOT_LEASE_S": str(lease_s)})
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _healthy(base), START_TIMEOUT_S, f"the API on {base}", proc)
    return proc, base


def start_bare(procs: Processes) -> tuple[Proc, str]:
    port = free_port()
    proc = procs.spawn("bare", "-m", "uvicorn", "bench.service_throughput:bare_app", "--factory",
                       "--host", "127.0.0.1", "--port", str(port), "--log-level", "info")
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _healthy(base), START_TIMEOUT_S, f"the bare app on {base}", proc)
    return proc, base


def start_worker(procs: Processes, db_url: str, index: int) -> Proc:
    proc = procs.spawn(f"worker{index}", "-m", "service.cli", "worker", "--db", db_url,
                       *WORKER_FLAGS)
    wait_until(lambda: "polling" in proc.tail(100_000), START_TIMEOUT_S,
               f"worker {index} to poll", proc)
    return proc


# -- trial throughput -----------------------------------------------------------------------


class BenchFailure(Exception):
    """A measured run that did not finish (stuck job, dead worker); reported, not fatal."""


@dataclass
class TrialRun:
    label: str
    trials: int
    seconds: float
    pruned: int
    failed: int
    epochs: int
    workers: int
    cpu_s: float | None
    """CPU seconds of the process(es) running trials (plain: this one; service: the workers)."""
    error: str | None = None

    @classmethod
    def failed_run(cls, label: str, error: str) -> TrialRun:
        return cls(label, 0, math.nan, 0, 0, 0, 0, None, error)

    @property
    def cpu_ms_per_trial(self) -> float | None:
        return None if self.cpu_s is None or not self.trials else 1000 * self.cpu_s / self.trials

    @property
    def trials_per_s(self) -> float:
        return self.trials / self.seconds if self.seconds > 0 else math.nan

    @property
    def epochs_per_s(self) -> float:
        return self.epochs / self.seconds if self.seconds > 0 else math.nan


def plain_optuna(db_url: str, n_trials: int, seed: int, pruner: str,
                 optimizer_names: list[str] | None, label: str) -> TrialRun:
    """``study.optimize`` in this process on an RDBStorage of ``db_url``, set up as a job is."""
    import optuna
    import torch

    from tuner.tuning import create_study, study_plan
    from tuner.workloads import TrialConfig, get_workload

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workload = get_workload(WORKLOAD)
    storage = optuna.storages.RDBStorage(db_url)
    try:
        started, cpu0 = time.perf_counter(), time.process_time()
        study, _ = create_study(storage, study_name=f"bench-plain-{uuid.uuid4().hex[:12]}",
                                workload=workload, n_trials=n_trials, seed=seed,
                                optimizer_names=optimizer_names,
                                pruner=cast("PrunerName", pruner))
        plan = study_plan(study)

        def objective(trial: optuna.Trial) -> float:
            optimizer, hyperparameters, schedule = plan.suggest(trial)

            def report(epoch: int, value: float) -> None:
                if not math.isfinite(value):
                    raise optuna.TrialPruned("diverged")
                trial.report(value, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()

            config = TrialConfig(optimizer, hyperparameters, seed=seed, device="cpu",
                                 schedule=schedule)
            return float(workload.run(config, report))

        study.optimize(objective, n_trials=n_trials, catch=(Exception,))
        seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu0
        trials = study.get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()
    states = [t.state.name for t in trials]
    return TrialRun(label, len(trials), seconds, states.count("PRUNED"), states.count("FAIL"),
                    sum(len(t.intermediate_values) for t in trials), 1, cpu_s)


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def service_job(client: httpx.Client, workers: Sequence[Proc], n_trials: int, seed: int,
                pruner: str, optimizer_names: list[str] | None, label: str) -> TrialRun:
    """Launch a job and wait for it; seconds from just before the POST to its ``finished_at``."""
    cpu0 = [w.cpu_s() for w in workers]
    launched = datetime.now(UTC)
    response = client.post("/v1/jobs", json={"workload": WORKLOAD, "n_trials": n_trials,
                                             "seed": seed, "pruner": pruner,
                                             "optimizers": optimizer_names})
    if response.status_code != 202:
        raise BenchFailure(f"POST /v1/jobs: {response.status_code} {response.text[:500]}")
    job_id = response.json()["id"]
    deadline = time.monotonic() + 60.0 + 5.0 * n_trials
    progress = (-1, time.monotonic())
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            break
        now = time.monotonic()
        if job["progress"]["finished"] != progress[0]:
            progress = (job["progress"]["finished"], now)
        dead = [w for w in workers if w.process.poll() is not None]
        problem = None
        if dead:
            problem = (f"{dead[0].name} exited ({dead[0].process.returncode}) with job {job_id} "
                       f"at {progress[0]}/{n_trials} finished")
        elif now - progress[1] > STALL_TIMEOUT_S:
            problem = (f"job {job_id} stuck at {progress[0]}/{n_trials} finished for "
                       f"{STALL_TIMEOUT_S:.0f} s (trials_claimed exhausted?)")
        elif now > deadline:
            problem = f"job {job_id} not finished in time ({progress[0]}/{n_trials})"
        if problem is not None:
            client.post(f"/v1/jobs/{job_id}/cancel")
            for w in dead:
                print(f"--- {w.name} log tail ---\n{w.tail()}", file=sys.stderr)
            raise BenchFailure(problem)
        time.sleep(0.2)
    observed = datetime.now(UTC)
    cpu_s = _cpu_delta(cpu0, [w.cpu_s() for w in workers])
    if job["status"] != "completed":
        raise BenchFailure(f"job {job_id} ended {job['status']}: {job.get('error')}")
    ended = _parse_time(job["finished_at"]) if job.get("finished_at") else observed
    if not launched <= ended <= observed:  # clocks disagree: fall back to what we saw
        ended = observed
    trials = [t for t in client.get(f"/v1/jobs/{job_id}/trials").json() if not t["retried"]]
    states = [t["state"] for t in trials]
    return TrialRun(label, len(trials), (ended - launched).total_seconds(),
                    states.count("pruned"), states.count("fail"),
                    sum(len(t["intermediate_values"]) for t in trials),
                    len({t["worker"] for t in trials if t["worker"]}), cpu_s)


def _cpu_delta(before: Sequence[float | None], after: Sequence[float | None]) -> float | None:
    total = 0.0
    for b, a in zip(before, after, strict=True):
        if a is None or b is None:
            return None
        total += a - b
    return total


def idle_cpu(workers: Sequence[Proc], seconds: float) -> float | None:
    """CPU cores the idle workers burn polling for jobs (no active job)."""
    before = [w.cpu_s() for w in workers]
    time.sleep(seconds)
    used = _cpu_delta(before, [w.cpu_s() for w in workers])
    return None if used is None else used / seconds


@dataclass
class TrialReport:
    plain: TrialRun
    one: TrialRun
    two: TrialRun
    idle_cores_per_worker: float | None


def trial_throughput(procs: Processes, db_url: str, base: str, n_trials: int, seed: int,
                     pruner: str, optimizer_names: list[str] | None,
                     warm_trials: int) -> TrialReport:
    opts = optimizer_names
    plain_optuna(db_url, warm_trials, seed, pruner, opts, "warm-up")  # untimed
    plain = plain_optuna(db_url, n_trials, seed, pruner, opts, "plain Optuna (1 process)")
    runs: list[TrialRun] = []
    idle = None
    with httpx.Client(base_url=base, timeout=30) as client:
        workers: list[Proc] = []
        for count in (1, 2):
            label = f"service, {count} worker{'s' if count > 1 else ''}"
            try:
                while len(workers) < count:
                    workers.append(start_worker(procs, db_url, len(workers)))
                service_job(client, workers, count * warm_trials, seed, pruner, opts,
                            "warm-up")  # untimed
                if count == 1:
                    idle = idle_cpu(workers, 2.0)
                runs.append(service_job(client, workers, n_trials, seed, pruner, opts, label))
            except BenchFailure as exc:
                print(f"{label}: FAILED: {exc}", file=sys.stderr)
                runs.append(TrialRun.failed_run(label, str(exc)))
                break
        for worker in workers:
            procs.stop(worker)
    while len(runs) < 2:
        runs.append(TrialRun.failed_run(f"service, {len(runs) + 1} workers",
                                        "not run (previous run failed)"))
    return TrialReport(plain, runs[0], runs[1], idle)


# -- ask/tell throughput --------------------------------------------------------------------

ASKTELL_TASK: dict[str, Any] = {"model_family": "mlp", "num_parameters": 20_000}
ASKTELL_REPORTS = 3
PROBE_INTERVAL_S = 0.25


def _objective(hyperparameters: dict[str, float]) -> float:
    """Trivial: best at lr = 1e-3."""
    return abs(math.log10(hyperparameters["lr"]) + 3.0)


@dataclass
class AskTellRun:
    label: str
    clients: int
    trials: int
    seconds: float
    heartbeats_s: list[float] = field(default_factory=list, repr=False)
    lost: int = 0
    """Leases lost by live clients: client side, or trials the server failed as expired."""
    error: str | None = None

    @property
    def trials_per_s(self) -> float:
        return self.trials / self.seconds if self.seconds > 0 else math.nan

    def heartbeat_ms(self, q: float) -> float:
        if not self.heartbeats_s:
            return math.nan
        ordered = sorted(self.heartbeats_s)
        return 1000 * ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def plain_asktell(db_url: str, clients: int, n_trials: int, seed: int) -> AskTellRun:
    """``clients`` threads doing Optuna's ask/report/tell on one study, set up as a job is, on
    the storage the service opens (``service.core.storage.open_optuna_storage``: on SQLite, Optuna's
    read-then-write steps serialized, without which two threads pop the same enqueued trial)."""
    import optuna

    from service.core.storage import ask, open_optuna_storage
    from tuner.task import TaskDescription
    from tuner.tuning import create_study, study_plan

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_optuna_storage(db_url)
    label = f"plain Optuna, {clients} thread{'s' if clients > 1 else ''}"
    try:
        study, _ = create_study(storage, study_name=f"bench-asktell-{uuid.uuid4().hex[:12]}",
                                workload=None, n_trials=n_trials, seed=seed,
                                task=TaskDescription.model_validate(ASKTELL_TASK))
        plan = study_plan(study)
        lock = threading.Lock()
        asked = 0
        errors: list[BaseException] = []

        def work() -> None:
            nonlocal asked
            try:
                while True:
                    with lock:
                        if asked >= n_trials:
                            return
                        asked += 1
                    trial = ask(study)
                    hyperparameters = plan.suggest(trial).hyperparameters
                    value = _objective(hyperparameters)
                    pruned = False
                    for step in range(ASKTELL_REPORTS):
                        trial.report(value, step)
                        if trial.should_prune():
                            pruned = True
                            break
                    if pruned:
                        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    else:
                        study.tell(trial, value)
            except BaseException as exc:
                errors.append(exc)

        started = time.perf_counter()
        threads = [threading.Thread(target=work) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
        if errors:
            return AskTellRun(label, clients, 0, math.nan, error=repr(errors[0]))
        done = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
    finally:
        storage.engine.dispose()
    return AskTellRun(label, clients, done, seconds)


def service_asktell(base: str, clients: int, n_trials: int, seed: int) -> AskTellRun:
    """``clients`` threads each running ``OptpilotClient.trials()`` on one job, plus the
    heartbeat probe on another job; seconds from just before the first ask to the last loop's
    end."""
    from service.client import OptpilotClient

    heartbeats: list[float] = []
    lock = threading.Lock()

    class TimedClient(OptpilotClient):
        def _heartbeat(self, job_id: str, number: int) -> tuple[dict[str, Any], float]:
            t0 = time.perf_counter()
            try:
                return super()._heartbeat(job_id, number)
            finally:
                with lock:
                    heartbeats.append(time.perf_counter() - t0)

    label = f"service, {clients} client{'s' if clients > 1 else ''}"
    stop = threading.Event()
    errors: list[BaseException] = []
    lost = 0

    with TimedClient(base) as admin:
        job_id = admin.create_job(n_trials=n_trials, task=ASKTELL_TASK, seed=seed)["id"]
        probe_job = admin.create_job(n_trials=1, task=ASKTELL_TASK, seed=seed)["id"]
        probe_trial = admin.ask_trial(probe_job, "heartbeat-probe")["number"]

        def probe() -> None:
            while not stop.wait(PROBE_INTERVAL_S):
                try:
                    admin._heartbeat(probe_job, probe_trial)
                except Exception as exc:  # reported, not fatal
                    errors.append(exc)
                    return

        def work(name: str) -> None:
            nonlocal lost
            try:
                with TimedClient(base) as own:
                    for trial in own.trials(job_id, client_id=name, poll_s=0.2):
                        with trial:
                            value = _objective(trial.hyperparameters)
                            for step in range(ASKTELL_REPORTS):
                                if trial.report(step, value):
                                    trial.prune()
                                    break
                            else:
                                trial.complete(value)
                        if trial.lease_lost:
                            with lock:
                                lost += 1
            except BaseException as exc:
                errors.append(exc)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        started = time.perf_counter()
        threads = [threading.Thread(target=work, args=(f"bench-{i}",)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(LOAD_TIMEOUT_S * 5)
        seconds = time.perf_counter() - started
        stop.set()
        prober.join()
        admin.finish_trial(probe_job, probe_trial, value=1.0)
        job = admin.get_job(job_id)
    if errors or any(t.is_alive() for t in threads):
        return AskTellRun(label, clients, 0, math.nan, heartbeats,
                          error=repr(errors[0]) if errors else "a client loop did not end")
    progress = job["progress"]
    lost = max(lost, int(progress["retried"]))
    return AskTellRun(label, clients, int(progress["finished"]), seconds, heartbeats, lost,
                      None if job["status"] == "completed" else f"job {job['status']}")


def asktell_throughput(db_url: str, base: str, client_counts: Sequence[int], n_trials: int,
                       seed: int) -> list[tuple[AskTellRun, AskTellRun]]:
    """Per client count: plain Optuna, then the service (interleaved), after an untimed
    warm-up of both."""
    plain_asktell(db_url, 2, 8, seed)
    service_asktell(base, 2, 8, seed)
    pairs = []
    for clients in client_counts:
        plain = plain_asktell(db_url, clients, n_trials, seed)
        service = service_asktell(base, clients, n_trials, seed)
        pairs.append((plain, service))
        print(f"  {clients:>2} clients: plain {plain.trials_per_s:.2f} trials/s, service "
              f"{service.trials_per_s:.2f} trials/s", file=sys.stderr, flush=True)
    return pairs


def print_asktell(pairs: Sequence[tuple[AskTellRun, AskTellRun]], lease_s: float,
                  n_trials: int) -> None:
    print(f"{'ask/tell (' + str(n_trials) + ' trials)':<28}{'trials':>7}{'seconds':>9}"
          f"{'trials/s':>10}{'vs plain':>10}{'hb p50 ms':>11}{'hb p99 ms':>11}{'beats':>7}"
          f"{'lost':>6}")
    verdicts = []
    for plain, service in pairs:
        for run in (plain, service):
            if run.error is not None:
                print(f"{run.label:<28}FAILED: {run.error}")
                continue
            is_service = run is service
            ratio = _ratio(service.trials_per_s, plain.trials_per_s) if is_service else 1.0
            print(f"{run.label:<28}{run.trials:>7}{run.seconds:>9.2f}{run.trials_per_s:>10.2f}"
                  f"{_f(ratio):>10}"
                  f"{_f(run.heartbeat_ms(0.5), '.1f') if is_service else '':>11}"
                  f"{_f(run.heartbeat_ms(0.99), '.1f') if is_service else '':>11}"
                  f"{len(run.heartbeats_s) if is_service else '':>7}"
                  f"{run.lost if is_service else '':>6}")
        if service.error is None and plain.error is None:
            verdicts.append((service.clients, _ratio(service.trials_per_s, plain.trials_per_s),
                             service.heartbeat_ms(0.99), service.lost))
    for clients, ratio, p99, lost in verdicts:
        if clients != max(c for c, *_ in verdicts):
            continue
        ok = ratio >= 0.5 and p99 < 1000 * lease_s / 5 and lost == 0
        print(f"{clients} clients / plain Optuna: {_f(ratio)}x trials/s (target >= 0.5x); "
              f"heartbeat p99 {_f(p99, '.0f')} ms (target < {1000 * lease_s / 5:.0f} ms, a fifth "
              f"of the {lease_s:g} s lease); leases lost {lost} (target 0): "
              f"{'ok' if ok else 'MISSED'}")


# -- request throughput ---------------------------------------------------------------------


@dataclass
class LoadRun:
    label: str
    requests: int
    errors: int
    seconds: float
    latencies_s: list[float] = field(repr=False)
    server_cpu_s: float | None
    client_cpu_s: float

    @property
    def per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else math.nan

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return math.nan
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    @property
    def server_ms_per_request(self) -> float | None:
        if self.server_cpu_s is None or not self.requests:
            return None
        return 1000 * self.server_cpu_s / self.requests


async def _load(label: str, server: Proc, base: str, path: str, body: dict[str, Any],
                n_requests: int, concurrency: int, warmup: int) -> LoadRun:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        latencies: list[float] = []
        errors = 0
        issued = 0
        stop_at = math.inf
        expected = 201

        async def one_client(budget: int) -> None:
            nonlocal issued, errors
            while issued < budget and time.perf_counter() < stop_at:
                issued += 1
                t0 = time.perf_counter()
                try:
                    response = await client.post(path, json=body)
                    ok = response.status_code == expected
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        stop_at = time.perf_counter() + LOAD_TIMEOUT_S
        await asyncio.gather(*(one_client(warmup) for _ in range(concurrency)))
        if errors:
            raise RuntimeError(f"{label}: {errors} of {warmup} warm-up requests failed; "
                               f"server log tail:\n{server.tail()}")
        latencies.clear()
        issued = 0
        cpu0, client0 = server.cpu_s(), time.process_time()
        started = time.perf_counter()
        stop_at = started + LOAD_TIMEOUT_S
        await asyncio.gather(*(one_client(n_requests) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        cpu1, client1 = server.cpu_s(), time.process_time()
    server_cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    return LoadRun(label, len(latencies), errors, seconds, latencies, server_cpu,
                   client1 - client0)


def _merge(runs: Sequence[LoadRun]) -> LoadRun:
    server = [r.server_cpu_s for r in runs]
    return LoadRun(runs[0].label, sum(r.requests for r in runs), sum(r.errors for r in runs),
                   sum(r.seconds for r in runs), [x for r in runs for x in r.latencies_s],
                   None if any(c is None for c in server) else sum(c or 0.0 for c in server),
                   sum(r.client_cpu_s for r in runs))


def request_throughput(procs: Processes, api: Proc, base: str, n_requests: int,
                       concurrency: int, rounds: int) -> tuple[LoadRun, LoadRun]:
    """Both servers up; ``rounds`` alternating runs of ``n_requests / rounds`` each, so load from
    other processes on the machine falls on both alike."""
    bare, bare_base = start_bare(procs)
    warmup = max(2 * concurrency, n_requests // 20)
    per_round = [n_requests // rounds + (i < n_requests % rounds) for i in range(rounds)]
    bare_runs: list[LoadRun] = []
    service_runs: list[LoadRun] = []
    try:
        for i, n in enumerate(per_round):
            warm = warmup if i == 0 else 0
            bare_runs.append(asyncio.run(_load(
                "bare FastAPI POST /echo", bare, bare_base, "/echo", RECOMMENDATION_BODY, n,
                concurrency, warm)))
            service_runs.append(asyncio.run(_load(
                "POST /v1/recommendations", api, base, "/v1/recommendations",
                RECOMMENDATION_BODY, n, concurrency, warm)))
    finally:
        procs.stop(bare)
    return _merge(bare_runs), _merge(service_runs)


# -- databases ------------------------------------------------------------------------------


@contextmanager
def scratch_postgres(server_url: str) -> Iterator[str]:
    """A new database on the server of ``server_url``; dropped on exit."""
    import sqlalchemy as sa

    url = sa.make_url(server_url)
    name = f"optpilot_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        try:
            with admin.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()


# -- report ---------------------------------------------------------------------------------


def _f(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 and math.isfinite(a) and math.isfinite(b) else math.nan


def print_trials(report: TrialReport) -> None:
    print(f"{'trial throughput':<28}{'trials':>7}{'pruned':>7}{'failed':>7}{'workers':>8}"
          f"{'seconds':>9}{'trials/s':>10}{'epochs/s':>10}{'CPU ms/trial':>14}")
    for run in (report.plain, report.one, report.two):
        if run.error is not None:
            print(f"{run.label:<28}FAILED: {run.error}")
            continue
        print(f"{run.label:<28}{run.trials:>7}{run.pruned:>7}{run.failed:>7}{run.workers:>8}"
              f"{run.seconds:>9.2f}{run.trials_per_s:>10.2f}{run.epochs_per_s:>10.1f}"
              f"{_f(run.cpu_ms_per_trial, '.0f'):>14}")
    one_vs_plain = _ratio(report.one.trials_per_s, report.plain.trials_per_s)
    epochs_ratio = _ratio(report.one.epochs_per_s, report.plain.epochs_per_s)
    verdict = "ok" if one_vs_plain >= 0.8 else "MISSED"
    cpu_ratio = None
    if report.one.cpu_ms_per_trial and report.plain.cpu_ms_per_trial:
        cpu_ratio = report.plain.cpu_ms_per_trial / report.one.cpu_ms_per_trial
    print(f"service (1 worker) / plain Optuna: {_f(one_vs_plain)}x trials/s "
          f"({_f(epochs_ratio)}x epochs/s, {_f(cpu_ratio)}x by CPU per trial); "
          f"target >= 0.8x: {verdict}")
    print(f"2 workers / 1 worker: {_f(_ratio(report.two.trials_per_s, report.one.trials_per_s))}x "
          f"trials/s ({_f(_ratio(report.two.epochs_per_s, report.one.epochs_per_s))}x epochs/s;"
          f" {os.cpu_count()} CPU cores on this machine)")
    print(f"idle worker poll loop (--poll-interval 0.05, no active job): "
          f"{_f(None if report.idle_cores_per_worker is None else 100 * report.idle_cores_per_worker, '.1f')}"  # noqa: E501
          f"% of a core")


def print_requests(bare: LoadRun, service: LoadRun, concurrency: int) -> None:
    print(f"{'requests (' + str(concurrency) + ' clients)':<28}{'ok':>7}{'errors':>7}"
          f"{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'server CPU ms/req':>19}"
          f"{'client CPU':>12}")
    for run in (bare, service):
        client_load = run.client_cpu_s / run.seconds if run.seconds > 0 else math.nan
        print(f"{run.label:<28}{run.requests:>7}{run.errors:>7}{run.per_s:>9.0f}"
              f"{run.percentile_ms(0.5):>9.1f}{run.percentile_ms(0.99):>9.1f}"
              f"{_f(run.server_ms_per_request):>19}{_f(100 * client_load, '.0f') + '%':>12}")
    ratio = _ratio(service.per_s, bare.per_s)
    verdict = "ok" if ratio >= 0.5 else "MISSED"
    cpu_ratio = None
    if bare.server_ms_per_request and service.server_ms_per_request:
        cpu_ratio = bare.server_ms_per_request / service.server_ms_per_request
    print(f"recommendations / bare: {_f(ratio)}x req/s; target >= 0.5x: {verdict} "
          f"(server CPU per request: {_f(cpu_ratio)}x, i.e. bare/service)")
    if bare.seconds > 0 and bare.client_cpu_s / bare.seconds > 0.9:
        print("note: the load client used ~a full core on the bare app, so its req/s is a floor"
              " and the req/s ratio flatters the service; the server-CPU ratio does not.")


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.service_throughput",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, help="trials per timed job (default 40; quick 12)")
    parser.add_argument("--requests", type=int,
                        help="requests per endpoint (default 2000; quick 300)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    parser.add_argument("--postgres", metavar="URL",
                        help="PostgreSQL server URL (a scratch database is made and dropped)")
    parser.add_argument("--optimizers", default="adam,adamw",
                        help="the jobs' optimizers, comma-separated, or 'prior' for the prior's "
                        "top 3 (default adam,adamw: on rosenbrock the prior's sgd_momentum "
                        "diverges in epoch 0, so trial cost would depend on how often it is "
                        "sampled)")
    parser.add_argument("--pruner", choices=["median", "hyperband", "none"], default="none",
                        help="default none: every trial trains its full budget, so trials/s "
                        "compare like with like")
    parser.add_argument("--rounds", type=int,
                        help="alternating request rounds per endpoint (default 2; quick 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small numbers (~30 s measuring)")
    parser.add_argument("--log-dir", type=Path,
                        help="keep the server and worker logs here (default: a temp dir)")
    parser.add_argument("--skip-trials", action="store_true", help="skip the worker trial part")
    parser.add_argument("--skip-requests", action="store_true", help="skip the request part")
    parser.add_argument("--skip-asktell", action="store_true", help="skip the ask/tell part")
    parser.add_argument("--clients", default="1,4,16",
                        help="ask/tell: concurrent clients per run, comma-separated")
    parser.add_argument("--asktell-trials", type=int,
                        help="ask/tell: trials per job (default 200; quick 48)")
    parser.add_argument("--lease-s", type=float, default=5.0,
                        help="ask/tell: the API's lease (OPTPILOT_LEASE_S; default 5)")
    args = parser.parse_args(argv)
    args.trials = args.trials or (12 if args.quick else 40)
    args.requests = args.requests or (300 if args.quick else 2000)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.asktell_trials = args.asktell_trials or (48 if args.quick else 200)
    try:
        args.client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        parser.error("--clients: comma-separated integers, e.g. 1,4,16")
    if not args.client_counts or not all(1 <= c <= 64 for c in args.client_counts):
        parser.error("--clients: each between 1 and 64")
    if not 0.5 <= args.lease_s <= 3600:
        parser.error("--lease-s: must be between 0.5 and 3600")
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    args.optimizer_names = None if names == ["prior"] else names
    for name, low, high in (("trials", 1, 1000), ("requests", 1, 100_000),
                            ("concurrency", 1, 256), ("rounds", 1, 20),
                            ("asktell_trials", 1, 5000)):
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name}: must be between {low} and {high}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="optpilot-bench-") as tmp:
        log_dir = args.log_dir or Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        with (scratch_postgres(args.postgres) if args.postgres
              else _sqlite(Path(tmp))) as db_url:
            backend = "postgresql (scratch database)" if args.postgres else "sqlite (temp file)"
            ok = run(args, db_url, backend, log_dir)
    if not ok:
        raise SystemExit(1)


@contextmanager
def _sqlite(tmp: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp / 'bench.db'}"


def run(args: argparse.Namespace, db_url: str, backend: str, log_dir: Path) -> bool:
    """Measure and print; False when a run failed (the rest is still measured and printed)."""
    procs = Processes(log_dir)
    ok = True
    try:
        api, base = start_api(procs, db_url, args.lease_s)
        print(f"optpilot service throughput: {backend}; workload {WORKLOAD}, "
              f"{args.trials} trials, optimizers {args.optimizers}, pruner {args.pruner}, "
              f"seed {args.seed}; {args.requests} requests x {args.concurrency} clients "
              f"in {args.rounds} round(s)", flush=True)
        if not args.skip_trials:
            warm = 3 if args.quick else 4
            report = trial_throughput(procs, db_url, base, args.trials, args.seed, args.pruner,
                                      args.optimizer_names, warm)
            print()
            print_trials(report)
            ok = report.one.error is None and report.two.error is None
        if not args.skip_asktell:
            pairs = asktell_throughput(db_url, base, args.client_counts, args.asktell_trials,
                                       args.seed)
            print()
            print_asktell(pairs, args.lease_s, args.asktell_trials)
            ok = ok and all(p.error is None and s.error is None for p, s in pairs)
        if not args.skip_requests:
            bare, service = request_throughput(procs, api, base, args.requests,
                                               args.concurrency, args.rounds)
            print()
            print_requests(bare, service, args.concurrency)
    finally:
        procs.stop_all()
    return ok


if __name__ == "__main__":
    main()
