"""Strict JSON: non-finite floats become ``null`` before anything is encoded.

Used by the database engines (JSON columns) and the response models, so NaN/inf never reach
PostgreSQL's JSONB (which rejects them), a SQLite JSON column, or a client.

Answers also round floats to ``ANSWER_DIGITS`` significant digits (:func:`answer`): a value
derived by arithmetic (an lr of 3x the default, a share) reads 0.3, not 0.30000000000000004.
Stored values keep every bit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def finite_or_none(value: float | None) -> float | None:
    """``value`` unless it is NaN or infinite (then ``None``)."""
    if value is None or math.isfinite(value):
        return value
    return None


def sanitize(value: Any) -> Any:
    """A JSON-ready copy of ``value``: non-finite floats -> None, tuples -> lists, keys -> str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): sanitize(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [sanitize(item) for item in value]
    return value


ANSWER_DIGITS = 15
"""Decimal digits that every double carries exactly (C's DBL_DIG): rounding to them removes the
binary noise of arithmetic and nothing a computation meant."""


def answer_float(value: float | None) -> float | None:
    """A float for an API answer: ``None`` for NaN/inf, else rounded to ``ANSWER_DIGITS``."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{ANSWER_DIGITS}g}")


def answer(value: Any) -> Any:
    """:func:`sanitize` for an API answer, with every float as :func:`answer_float` makes it."""
    if isinstance(value, float):
        return answer_float(value)
    if isinstance(value, Mapping):
        return {str(key): answer(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [answer(item) for item in value]
    return value


def dumps(value: Any) -> str:
    """``json.dumps`` that never writes NaN/Infinity tokens (the engines' ``json_serializer``)."""
    return json.dumps(sanitize(value), allow_nan=False, separators=(",", ":"), ensure_ascii=False)
