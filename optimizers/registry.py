"""The optimizer registry: one frozen record per optimizer, keyed by its registry name.

A record says what the optimizer is for, how to build it from the flat hyperparameter names
(``lr``, ``weight_decay``, ``momentum``, ``beta1``, ``beta2``, ``eps``, ``alpha``, ...), its
defaults, the search space the tuner starts from (AlgoPerf's baseline ranges where it has them),
and how much state it keeps per parameter. ``create`` is the one entry point that validates
hyperparameters, so every caller (the tuner, the service, users' own code) gets the same errors.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeAlias, TypeVar

import torch

from optimizers._checks import check_number

ParamsT: TypeAlias = Iterable[torch.Tensor] | Iterable[dict[str, Any]]
Family = Literal["sgd", "adaptive", "sign", "layerwise", "factored", "orthogonal"]
Builder: TypeAlias = Callable[[ParamsT, dict[str, float]], torch.optim.Optimizer]


@dataclass(frozen=True)
class SearchRange:
    """Where to search one hyperparameter, in its own units: ``low``..``high``, on a log scale
    when ``log``. ``complement`` means the range is searched on ``1 - value`` (log scale when
    ``log``): the right way to search betas and momentum, whose effect lives in ``1 - beta``.

    The registry's search spaces are ``SearchRange``s (the optimizer's starting values are its
    ``defaults``); everything downstream carries a ``HyperparameterPrior``, the same range with
    the default to start from.
    """

    low: float
    high: float
    log: bool = True
    complement: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low <= self.high):
            raise ValueError(f"search range needs finite low <= high, got {self.low}..{self.high}")
        if self.log and (self.low <= 0 or (self.complement and self.high >= 1)):
            raise ValueError(f"log range must stay positive, got {self.low}..{self.high}")

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def as_dict(self) -> dict[str, float | bool]:
        """The fields as plain JSON values."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def starting_at(self, default: float, low: float | None = None,
                    high: float | None = None) -> HyperparameterPrior:
        """This range (with new ends, when given) as a prior that starts at ``default``."""
        return HyperparameterPrior(
            low=self.low if low is None else low, high=self.high if high is None else high,
            log=self.log, complement=self.complement, default=default)


@dataclass(frozen=True, kw_only=True)
class HyperparameterPrior(SearchRange):
    """A hyperparameter's prior: a ``SearchRange`` and the ``default`` to start from, inside it.

    The one shape of a range-with-default: the tuner's recommendations (every candidate's
    ``hyperparameters``), its search plans and the service's responses all carry this type.
    """

    default: float

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.default) and self.low <= self.default <= self.high):
            raise ValueError(f"need low <= default <= high, got {self.low}, {self.default}, "
                             f"{self.high}")


@dataclass(frozen=True)
class Bound:
    """Where a hyperparameter is valid at all (not where it is worth searching)."""

    low: float
    high: float = math.inf
    low_inclusive: bool = True
    high_inclusive: bool = False

    def check(self, name: str, value: float) -> None:
        check_number(name, value, low=self.low, high=self.high, low_inclusive=self.low_inclusive,
                     high_inclusive=self.high_inclusive)


# Validity of every flat hyperparameter name, shared by all optimizers.
HYPERPARAMETER_BOUNDS: Mapping[str, Bound] = MappingProxyType(
    {
        "lr": Bound(0.0, 100.0, low_inclusive=False, high_inclusive=True),
        "weight_decay": Bound(0.0, 100.0, high_inclusive=True),
        "momentum": Bound(0.0, 1.0),
        "beta1": Bound(0.0, 1.0),
        "beta2": Bound(0.0, 1.0),
        "eps": Bound(0.0, 1.0, low_inclusive=False, high_inclusive=True),
        "alpha": Bound(0.0, 1.0),
        "momentum_decay": Bound(0.0, 1.0, high_inclusive=True),
        "beta2_decay": Bound(-1.0, 0.0, high_inclusive=True),
        "lr_decay": Bound(0.0, 1.0, high_inclusive=True),
        "max_grad_norm": Bound(0.0, 1e6, low_inclusive=False, high_inclusive=True),
        "aux_lr": Bound(0.0, 100.0, low_inclusive=False, high_inclusive=True),
        # Steps of linear lr warm-up built into an optimizer (schedule-free); a whole number.
        "warmup_steps": Bound(0.0, 1e9, high_inclusive=True),
    }
)


@dataclass(frozen=True)
class OptimizerSpec:
    """Everything optpilot knows about one optimizer."""

    name: str
    family: Family
    when_to_use: str
    build: Builder = field(repr=False)
    defaults: Mapping[str, float]
    search_space: Mapping[str, SearchRange]
    state_bytes_per_param: float
    references: tuple[str, ...]
    # Names the tuner should tune first, in order of importance (the order of Godbolt et al.
    # 2023, Deep Learning Tuning Playbook).
    tuning_order: tuple[str, ...] = ()
    # Runs without an lr schedule (train()/eval() modes, its own warm-up): Defazio et al. 2024.
    schedule_free: bool = False

    def __post_init__(self) -> None:
        for hp, value in self.defaults.items():
            if hp not in HYPERPARAMETER_BOUNDS:
                raise ValueError(f"{self.name}: unknown hyperparameter {hp!r} in defaults")
            HYPERPARAMETER_BOUNDS[hp].check(f"{self.name}.{hp}", value)
        for hp in (*self.search_space, *self.tuning_order):
            if hp not in self.defaults:
                raise ValueError(f"{self.name}: {hp!r} is tuned but has no default")
        for hp, rng in self.search_space.items():
            # The registry's ranges are ranges: the starting values are ``defaults``.
            if not rng.low < rng.high or isinstance(rng, HyperparameterPrior):
                raise ValueError(f"{self.name}.{hp}: a search space needs low < high and no "
                                 f"default of its own, got {rng}")
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))
        object.__setattr__(self, "search_space", MappingProxyType(dict(self.search_space)))

    @property
    def hyperparameters(self) -> tuple[str, ...]:
        return tuple(self.defaults)

    def resolve(self, overrides: Mapping[str, float]) -> dict[str, float]:
        """Defaults overlaid with ``overrides``, every value checked; ValueError names the field."""
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"{unknown[0]}: not a hyperparameter of {self.name!r} "
                f"(accepted: {', '.join(self.defaults)})"
            )
        values = {**self.defaults, **overrides}
        for hp, value in values.items():
            HYPERPARAMETER_BOUNDS[hp].check(hp, value)
        return {hp: float(v) for hp, v in values.items()}

    def state_bytes(self, num_parameters: int, bytes_per_state_element: int = 4) -> int:
        """Optimizer state for ``num_parameters`` parameters (fp32 state by default)."""
        return int(self.state_bytes_per_param * num_parameters * bytes_per_state_element / 4)


T = TypeVar("T")


class Registry(Generic[T]):
    """Records by name, in registration order: the one registry shape of optpilot (optimizers
    here, workloads in ``tuner.workloads``). Thread-safe. ``kind`` names what it holds in its
    errors: ``ValueError("optimizer: unknown name 'x' (known: ...)")``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lock = threading.RLock()

    def add(self, name: str, item: T) -> T:
        """Register ``item`` as ``name``; ValueError when the name is taken."""
        with self._lock:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
        return item

    def lookup(self, name: str) -> T | None:
        with self._lock:
            return self._items.get(name) if isinstance(name, str) else None

    def get(self, name: str) -> T:
        """The item registered as ``name``; ValueError naming it and listing the known ones."""
        item = self.lookup(name)
        if item is None:
            raise ValueError(f"{self.kind}: unknown name {name!r} (known: "
                             f"{', '.join(self.names())})")
        return item

    def names(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._items)

    def items(self) -> tuple[T, ...]:
        with self._lock:
            return tuple(self._items.values())


OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer")
"""The process-wide optimizer registry behind the functions below."""


def register(spec: OptimizerSpec) -> OptimizerSpec:
    return OPTIMIZERS.add(spec.name, spec)


def get(name: str) -> OptimizerSpec:
    return OPTIMIZERS.get(name)


def names() -> tuple[str, ...]:
    return OPTIMIZERS.names()


def specs() -> tuple[OptimizerSpec, ...]:
    return OPTIMIZERS.items()


def create(name: str, params: ParamsT, **hyperparameters: float) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over ``params`` from flat hyperparameter names.

    Unspecified hyperparameters take the registry defaults. Unknown names or invalid values raise
    ``ValueError`` naming the field.
    """
    spec = get(name)
    return spec.build(params, spec.resolve(hyperparameters))
