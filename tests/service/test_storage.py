"""The Optuna storage under concurrency: enqueued trials are popped exactly once."""

from __future__ import annotations

import multiprocessing
import warnings

import optuna

from service.core.storage import ask, open_optuna_storage

ASKS_PER_PROCESS = 25


def pop_trials(url: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_optuna_storage(url)
    study = optuna.load_study(study_name="pop", storage=storage)
    numbers = []
    for _ in range(ASKS_PER_PROCESS):
        trial = ask(study)
        numbers.append(trial.number)
        study.tell(trial, 1.0)
    queue.put(numbers)


def test_two_processes_never_pop_the_same_enqueued_trial(migrated_url: str) -> None:
    study = optuna.create_study(study_name="pop", storage=migrated_url)
    for i in range(2 * ASKS_PER_PROCESS + 10):
        study.enqueue_trial({"x": i})
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=pop_trials, args=(migrated_url, queue))
                 for _ in range(2)]
    for p in processes:
        p.start()
    popped = [n for _ in processes for n in queue.get(timeout=120)]
    for p in processes:
        p.join(30)
    assert len(popped) == 2 * ASKS_PER_PROCESS
    assert len(set(popped)) == len(popped), "an enqueued trial was handed out twice"
    trials = optuna.load_study(study_name="pop", storage=migrated_url).trials
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == len(popped)
