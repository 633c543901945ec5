"""The Optuna studies of the service's jobs, loaded once per process and kept.

Each kept study keeps Optuna's trial cache, which rereads only the trials that are new or still
unfinished, so a request on a job with many trials does not load all of them again. Studies are
loaded with the tuner's sampler and pruner (``tuner.tuning.load_study``) and their search plans
read once (``tuner.tuning.study_plan``).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import optuna

from tuner import optuna_internals
from tuner.space import SearchPlan
from tuner.tuning import load_study, study_plan

MAX_CACHED_STUDIES = 64
MAX_KEPT_TRIALS = 4096


class StudyCache:
    """Studies of one storage by name, loaded once (``tuner.tuning.load_study``: sampler and
    pruner rebuilt) and kept, least recently used first out, with their search plans.

    A kept study's trial cache (Optuna's ``_CachedStorage``) rereads only trials that are new or
    were unfinished at the last read, so its cost per request does not grow with the trials.
    Safe to share between threads, as Optuna's studies are.

    It also keeps the ``optuna.Trial`` of each running client-evaluated trial, from its ask to
    its result, so a report does not read the trial back first (Optuna's ``Trial`` object is
    made to live as long as its trial; another process serving the same trial makes its own).
    """

    def __init__(self, storage: optuna.storages.BaseStorage,
                 capacity: int = MAX_CACHED_STUDIES) -> None:
        self._storage = storage
        self._capacity = capacity
        self._studies: OrderedDict[str, tuple[optuna.Study, SearchPlan | None]] = OrderedDict()
        self._trials: OrderedDict[int, optuna.Trial] = OrderedDict()
        self._lock = threading.Lock()

    def study(self, study_name: str) -> optuna.Study:
        """The study; KeyError when there is none of that name."""
        return self._entry(study_name)[0]

    def plan(self, study_name: str) -> SearchPlan:
        """The study's search plan (``tuner.tuning.study_plan``), read once."""
        study, plan = self._entry(study_name)
        if plan is None:
            plan = study_plan(study)
            with self._lock:
                if study_name in self._studies:
                    self._studies[study_name] = (study, plan)
        return plan

    def forget(self, study_name: str) -> None:
        with self._lock:
            self._studies.pop(study_name, None)

    def keep_trial(self, trial: optuna.Trial) -> None:
        with self._lock:
            self._trials[optuna_internals.trial_id(trial)] = trial
            while len(self._trials) > MAX_KEPT_TRIALS:
                self._trials.popitem(last=False)

    def trial(self, study_name: str, trial_id: int) -> optuna.Trial:
        """The running trial's ``optuna.Trial``: the kept one, else made (and kept) now."""
        with self._lock:
            trial = self._trials.get(trial_id)
        if trial is None:
            trial = optuna.trial.Trial(self.study(study_name), trial_id)
            self.keep_trial(trial)
        return trial

    def drop_trial(self, trial_id: int) -> None:
        with self._lock:
            self._trials.pop(trial_id, None)

    def _entry(self, study_name: str) -> tuple[optuna.Study, SearchPlan | None]:
        with self._lock:
            entry = self._studies.get(study_name)
            if entry is not None:
                self._studies.move_to_end(study_name)
                return entry
        study = load_study(self._storage, study_name)  # outside the lock: it reads the database
        with self._lock:
            entry = self._studies.setdefault(study_name, (study, None))
            self._studies.move_to_end(study_name)
            while len(self._studies) > self._capacity:
                self._studies.popitem(last=False)
            return entry


_caches: weakref.WeakKeyDictionary[optuna.storages.BaseStorage, StudyCache] = (
    weakref.WeakKeyDictionary())
_caches_lock = threading.Lock()


def study_cache(storage: optuna.storages.BaseStorage) -> StudyCache:
    """The process's :class:`StudyCache` of ``storage``."""
    with _caches_lock:
        cache = _caches.get(storage)
        if cache is None:
            cache = _caches[storage] = StudyCache(storage)
        return cache


def cached_study(storage: optuna.storages.BaseStorage, study_name: str) -> optuna.Study:
    """``study_cache(storage).study(study_name)``: a study loaded once per process."""
    return study_cache(storage).study(study_name)
