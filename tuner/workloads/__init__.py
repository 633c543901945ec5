"""Workloads: what a server-side trial trains, looked up by registered name only.

>>> from tuner.workloads import TrialConfig, get_workload
>>> w = get_workload("digits-mlp")
>>> config = TrialConfig("adamw", {"lr": 3e-3}, seed=1)
>>> final = w.run(config, lambda epoch, value: print(epoch, value))  # doctest: +SKIP

Built-ins live in :mod:`tuner.workloads.builtin`; installed packages add their own through the
``optpilot.workloads`` entry-point group (see :mod:`tuner.workloads.registry`), or in code with
:func:`register_workload`.
"""

from __future__ import annotations

from tuner.workloads.base import Reporter, TrialConfig, Workload
from tuner.workloads.builtin import BUILTIN_WORKLOADS
from tuner.workloads.registry import (
    ENTRY_POINT_GROUP,
    W,
    WorkloadRegistry,
    workload_from_entry_point,
)

REGISTRY = WorkloadRegistry(BUILTIN_WORKLOADS)
"""The process-wide registry behind the functions below."""


def register_workload(item: W) -> W:
    """Register a Workload subclass (instantiated without arguments) or instance; returns it.

    Usable as a class decorator. TypeError for anything else; ValueError for invalid class
    attributes or a name that is already taken.
    """
    return REGISTRY.register(item)


def get_workload(name: str) -> Workload:
    """The workload registered as ``name``; ValueError naming it and listing the known ones."""
    return REGISTRY.get(name)


def workload_names() -> tuple[str, ...]:
    """Registered names: built-ins first, then entry points and code registrations."""
    return REGISTRY.names()


def workloads() -> tuple[Workload, ...]:
    return REGISTRY.workloads()


__all__ = [
    "ENTRY_POINT_GROUP",
    "REGISTRY",
    "Reporter",
    "TrialConfig",
    "Workload",
    "WorkloadRegistry",
    "get_workload",
    "register_workload",
    "workload_from_entry_point",
    "workload_names",
    "workloads",
]
