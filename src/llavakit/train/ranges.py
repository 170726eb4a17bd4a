"""Range checks for recipe values, run when the recipe dataclasses are built (their ``__post_init__``).

Each check raises RecipeError naming the key as it is written in the YAML and the range it must be in:

    >>> at_least("train.micro_batch_size", 0, 1)
    Traceback (most recent call last):
    ...
    llavakit.train.ranges.RecipeError: train.micro_batch_size must be >= 1, got 0

NaN and infinities are refused everywhere (they are never a meaningful hyperparameter here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


class RecipeError(ValueError):
    """A recipe value outside its range; the message names the key (``train.micro_batch_size``) and the fix."""


def _number(key: str, value: Any, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RecipeError(f"{key} must be a finite number{hint}, got {value!r}")
    return value


def at_least(key: str, value: Any, low: float, hint: str = "") -> None:
    """``value >= low``; ``hint`` (", ...") is added after the range."""
    if _number(key, value, hint) < low:
        raise RecipeError(f"{key} must be >= {low}{hint}, got {value!r}")


def above(key: str, value: Any, low: float, hint: str = "") -> None:
    """``value > low``."""
    if _number(key, value, hint) <= low:
        raise RecipeError(f"{key} must be > {low}{hint}, got {value!r}")


def in_range(key: str, value: Any, low: float, high: float, hint: str = "", closed: bool = False) -> None:
    """``low <= value < high`` (``<= high`` when ``closed``)."""
    v = _number(key, value, hint)
    if v < low or (v > high if closed else v >= high):
        raise RecipeError(f"{key} must be in [{low}, {high}{']' if closed else ')'}{hint}, got {value!r}")


def one_of(key: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise RecipeError(f"{key} must be one of {', '.join(choices)}, got {value!r}")


def seed(key: str, value: Any) -> None:
    in_range(key, value, 0, 2**32)
