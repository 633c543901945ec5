"""The workload registry: built-ins plus users' workloads from the ``optpilot.workloads`` group.

Names are the only handle. Looking a workload up never imports anything: the registry holds
instances, and the only code it ever loads is what installed distributions declare as entry
points in ``optpilot.workloads`` (each resolving to a ``Workload`` subclass, instantiated without
arguments, or an instance), loaded lazily on the first query and only once. A broken entry point
is skipped with a logged warning; one whose name is already taken (a built-in, an earlier entry
point, or a workload registered in code) is rejected with a warning.

A package declares its workloads in its ``pyproject.toml``::

    [project.entry-points."optpilot.workloads"]
    my-workload = "my_package.workloads:MyWorkload"
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar

from optimizers.registry import Registry
from tuner.task import TaskDescription
from tuner.workloads.base import Workload

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "optpilot.workloads"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")

W = TypeVar("W", bound="type[Workload] | Workload")


def _instantiate(obj: object, origin: str) -> Workload:
    """The workload ``obj`` stands for: an instance, or a subclass called without arguments."""
    if isinstance(obj, type) and issubclass(obj, Workload):
        return obj()
    if isinstance(obj, Workload):
        return obj
    raise TypeError(f"{origin}: expected a Workload subclass or instance, got {obj!r}")


def validate(workload: Workload) -> None:
    """Check the class attributes the service relies on; ValueError naming the first bad one."""
    cls = type(workload).__name__
    missing = [attr for attr in ("name", "summary", "task", "metric", "default_epochs")
               if not hasattr(workload, attr)]
    if missing:
        raise ValueError(f"workload {cls}: missing class attribute {missing[0]!r}")
    name = workload.name
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"workload {cls}: name {name!r} must be 1-64 letters, digits, '-', '_' or '.'"
        )
    if not isinstance(workload.summary, str):
        raise ValueError(f"workload {name!r}: summary must be a string")
    if not isinstance(workload.task, TaskDescription):
        raise ValueError(f"workload {name!r}: task must be a tuner.task.TaskDescription")
    if not isinstance(workload.metric, str) or not workload.metric:
        raise ValueError(f"workload {name!r}: metric must be a non-empty string")
    if workload.direction not in ("minimize", "maximize"):
        raise ValueError(f"workload {name!r}: direction must be 'minimize' or 'maximize'")
    epochs: Any = workload.default_epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"workload {name!r}: default_epochs must be an int >= 1")


def workload_from_entry_point(entry_point: EntryPoint) -> Workload:
    """Load and validate one entry point; raises whatever loading it raised."""
    origin = f"entry point {entry_point.name!r} ({entry_point.value})"
    workload = _instantiate(entry_point.load(), origin)
    validate(workload)
    return workload


class WorkloadRegistry(Registry[Workload]):
    """Workloads by name (``optimizers.registry.Registry``, plus validation and entry points).
    ``group`` (None: none) is the entry-point group loaded on first query."""

    def __init__(
        self, builtins: Iterable[type[Workload] | Workload] = (),
        *, group: str | None = ENTRY_POINT_GROUP,
    ) -> None:
        super().__init__("workload")
        self._group = group
        self._entry_points_loaded = group is None
        for item in builtins:
            self.register(item)
        self._builtin = frozenset(self._items)

    # registration -------------------------------------------------------------------------

    def register(self, item: W) -> W:
        """Add a Workload subclass (instantiated without arguments) or instance; returns ``item``.

        Usable as a class decorator. TypeError for anything else, ValueError for invalid class
        attributes or a name already taken.
        """
        workload = _instantiate(item, "register_workload")
        validate(workload)
        with self._lock:
            existing = self._items.get(workload.name)
            if existing is not None and not _same(existing, workload):
                raise ValueError(f"workload {workload.name!r} is already registered "
                                 f"({type(existing).__module__}.{type(existing).__qualname__})")
            if existing is None:
                self.add(workload.name, workload)
        return item

    def load_entry_points(self, eps: Iterable[EntryPoint] | None = None) -> tuple[str, ...]:
        """Register workloads from ``eps`` (default: the installed ones of this group).

        Never raises for a bad entry point: it is skipped with a warning. Returns the names added.
        """
        if eps is None:
            if self._group is None:
                return ()
            try:
                eps = entry_points(group=self._group)
            except Exception:
                logger.warning("cannot list %r entry points", self._group, exc_info=True)
                return ()
        added: list[str] = []
        for ep in sorted(eps, key=lambda e: (e.name, e.value)):
            try:
                workload = workload_from_entry_point(ep)
            except Exception as exc:
                logger.warning("skipping workload entry point %r (%s): %s: %s",
                               ep.name, ep.value, type(exc).__name__, exc)
                continue
            if workload.name != ep.name:
                logger.warning("workload entry point %r registers workload %r (its name)",
                               ep.name, workload.name)
            with self._lock:
                existing = self._items.get(workload.name)
                if existing is not None and not _same(existing, workload):
                    kind = "built-in" if workload.name in self._builtin else "registered"
                    logger.warning("skipping workload entry point %r (%s): name %r clashes with "
                                   "a %s workload", ep.name, ep.value, workload.name, kind)
                    continue
                if existing is None:
                    self.add(workload.name, workload)
                    added.append(workload.name)
        return tuple(added)

    def _ensure_loaded(self) -> None:
        if self._entry_points_loaded:
            return
        with self._lock:
            if self._entry_points_loaded:
                return
            self._entry_points_loaded = True  # before loading: plugins may query the registry
            self.load_entry_points()

    # queries ------------------------------------------------------------------------------

    def lookup(self, name: str) -> Workload | None:
        self._ensure_loaded()
        return super().lookup(name)

    def names(self) -> tuple[str, ...]:
        self._ensure_loaded()
        return super().names()

    def items(self) -> tuple[Workload, ...]:
        self._ensure_loaded()
        return super().items()

    def workloads(self) -> tuple[Workload, ...]:
        return self.items()

    def is_builtin(self, name: str) -> bool:
        return name in self._builtin


def _same(a: Workload, b: Workload) -> bool:
    """The same workload registered twice (e.g. a plugin that also registers itself in code)."""
    return a is b or type(a) is type(b)
