"""Hyperparameter checks that name the parameter, the value and the allowed range."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def at_least(name: str, value, low: float) -> float:
    """A finite number in [low, ∞)."""
    v = _number(name, value)
    if v < low:
        raise ValueError(f"{name} must be in [{low}, inf), got {value!r}")
    return v


def positive(name: str, value) -> float:
    """A finite number in (0, ∞)."""
    v = _number(name, value)
    if v <= 0:
        raise ValueError(f"{name} must be in (0, inf), got {value!r}")
    return v


def unit_interval(name: str, value, *, closed_right: bool = False) -> float:
    """A number in [0, 1) (or [0, 1] when closed_right)."""
    v = _number(name, value)
    ok = 0.0 <= v <= 1.0 if closed_right else 0.0 <= v < 1.0
    if not ok:
        rng = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"{name} must be in {rng}, got {value!r}")
    return v


@dataclass(frozen=True)
class Interval:
    """A documented range of a real hyperparameter: ``low``..``high`` with each end open or
    closed, written as in the messages ("[0, 1)", "(0, inf)"). ``x in interval`` tests it."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = True

    def __contains__(self, x) -> bool:
        if isinstance(x, bool) or not isinstance(x, Real) or math.isnan(x):
            return False
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below

    def __str__(self) -> str:
        return (f"{'(' if self.low_open else '['}{self.low:g}, "
                f"{self.high:g}{')' if self.high_open else ']'}")


def within(name: str, value, interval: Interval) -> float:
    """A finite number in ``interval``."""
    v = _number(name, value)
    if v not in interval:
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return v


def flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def betas(value) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2) with each in [0, 1), got {value!r}")
    return unit_interval("betas[0]", value[0]), unit_interval("betas[1]", value[1])


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer in [1, inf), got {value!r}")
    return value


BACKENDS = ("reference", "fused", "auto")


def choice(name: str, value, options) -> str:
    """One of ``options``."""
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def backend(value) -> str:
    """Where a step runs: "reference" (the core discretizer), "fused" or "auto" (kernels)."""
    return choice("backend", value, BACKENDS)
