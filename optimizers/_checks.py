"""Argument checks shared by optpilot's optimizers and the registry's bounds: each returns the
value (normalised) or raises ``ValueError`` naming the offending field."""

from __future__ import annotations

import math
from typing import Literal, TypeAlias, cast, get_args

Implementation: TypeAlias = Literal["reference", "fast", "fused"]
IMPLEMENTATIONS: tuple[str, ...] = get_args(Implementation)


def check_number(
    name: str,
    value: object,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """``value`` as a float if it is a finite real number within the bounds; else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: expected a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name}: must be finite, got {value}")
    low_ok = number >= low if low_inclusive else number > low
    high_ok = number <= high if high_inclusive else number < high
    if not (low_ok and high_ok):
        lo = "[" if low_inclusive else "("
        hi = "]" if high_inclusive else ")"
        raise ValueError(f"{name}: {value} is outside {lo}{low}, {high}{hi}")
    return number


def check_betas(value: object) -> tuple[float, float]:
    """A pair ``(beta1, beta2)`` with each beta in [0, 1)."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise ValueError(f"betas: expected a pair (beta1, beta2), got {value!r}")
    b1 = check_number("betas[0]", value[0], low=0.0, high=1.0, high_inclusive=False)
    b2 = check_number("betas[1]", value[1], low=0.0, high=1.0, high_inclusive=False)
    return b1, b2


def check_steps(name: str, value: object, *, low: int = 0) -> int:
    """A whole number of steps (an int, or a float with an integral value) of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: expected a whole number of steps, got {value!r}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError(f"{name}: expected a whole number of steps, got {value!r}")
    steps = int(value)
    if steps < low:
        raise ValueError(f"{name}: must be at least {low}, got {value!r}")
    return steps


def check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected a bool, got {value!r}")
    return value


def check_implementation(value: object) -> Implementation:
    if value not in IMPLEMENTATIONS:
        raise ValueError(f"implementation: expected one of {IMPLEMENTATIONS}, got {value!r}")
    return cast(Implementation, value)


def check_foreach(value: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"foreach: expected None or a bool, got {value!r}")
    return value
