"""Learning-rate schedules η(τ) on the step clock τ (τ = k at the k-th optimizer step, from 0).

Each schedule maps the base rate ``lr`` and a (real) time τ to η(τ). Evaluated at integer τ = k
they equal torch's ``lr_scheduler`` values for the step that uses them; between integers they
interpolate smoothly, which is what the continuous flow sees.

    constant   η(τ) = lr
    linear     η(τ) = lr · [a + (b - a) · min(τ, T)/T]                     (torch LinearLR)
    cosine     η(τ) = η_min + (lr - η_min) · (1 + cos(π·τ/T)) / 2   (CosineAnnealingLR; periodic past T)
    warmup     η(τ) = lr · [a + (1 - a) · τ/W]  for τ < W, then  inner(τ - W) (SequentialLR)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import validation as check


class Schedule:
    """η(τ) = ``self(lr, tau)``."""

    def __call__(self, lr: float, tau: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def spec(self) -> str:
        """The short string ``parse`` maps back to an equal schedule (plain data: it is what
        param groups, state dicts and checkpoints hold)."""
        raise TypeError(f"{type(self).__name__} has no spec string")


@dataclass(frozen=True)
class Constant(Schedule):
    def __call__(self, lr: float, tau: float) -> float:
        return lr

    def describe(self) -> str:
        return "η(τ) = lr"

    def spec(self) -> str:
        return "constant"


@dataclass(frozen=True)
class Linear(Schedule):
    total_steps: int
    start_factor: float = 1.0
    end_factor: float = 0.0

    def __post_init__(self):
        check.positive_int("total_steps", self.total_steps)
        check.unit_interval("start_factor", self.start_factor, closed_right=True)
        if self.start_factor == 0:
            raise ValueError("start_factor must be in (0, 1], got 0")
        check.unit_interval("end_factor", self.end_factor, closed_right=True)

    def __call__(self, lr: float, tau: float) -> float:
        frac = min(max(tau, 0.0), self.total_steps) / self.total_steps
        return lr * (self.start_factor + (self.end_factor - self.start_factor) * frac)

    def describe(self) -> str:
        a, b, T = self.start_factor, self.end_factor, self.total_steps
        return f"η(τ) = lr·[{a:g} + ({b:g} - {a:g})·min(τ, {T})/{T}]"

    def spec(self) -> str:
        parts = [str(self.total_steps), _num(self.end_factor), _num(self.start_factor)]
        if self.start_factor == 1.0:
            parts.pop()
            if self.end_factor == 0.0:
                parts.pop()
        return ":".join(["linear", *parts])


@dataclass(frozen=True)
class Cosine(Schedule):
    total_steps: int
    eta_min: float = 0.0

    def __post_init__(self):
        check.positive_int("total_steps", self.total_steps)
        check.at_least("eta_min", self.eta_min, 0.0)

    def __call__(self, lr: float, tau: float) -> float:
        frac = max(tau, 0.0) / self.total_steps
        return self.eta_min + (lr - self.eta_min) * (1 + math.cos(math.pi * frac)) / 2

    def describe(self) -> str:
        return (f"η(τ) = {self.eta_min:g} + (lr - {self.eta_min:g})·"
                f"(1 + cos(π·τ/{self.total_steps}))/2")

    def spec(self) -> str:
        tail = "" if self.eta_min == 0.0 else f":{_num(self.eta_min)}"
        return f"cosine:{self.total_steps}{tail}"


@dataclass(frozen=True)
class Warmup(Schedule):
    warmup_steps: int
    after: Schedule = Constant()
    start_factor: float = 0.1

    def __post_init__(self):
        check.positive_int("warmup_steps", self.warmup_steps)
        check.unit_interval("start_factor", self.start_factor, closed_right=True)
        if self.start_factor == 0:
            raise ValueError("start_factor must be in (0, 1], got 0")
        if not isinstance(self.after, Schedule):
            raise ValueError(f"after must be a Schedule, got {self.after!r}")

    def __call__(self, lr: float, tau: float) -> float:
        W = self.warmup_steps
        if tau < W:
            return lr * (self.start_factor + (1 - self.start_factor) * max(tau, 0.0) / W)
        return self.after(lr, tau - W)

    def describe(self) -> str:
        W, a = self.warmup_steps, self.start_factor
        return f"η(τ) = lr·[{a:g} + (1 - {a:g})·τ/{W}] for τ < {W}, then {self.after.describe()} at τ - {W}"

    def spec(self) -> str:
        start = "" if self.start_factor == 0.1 else f":{_num(self.start_factor)}"
        return f"warmup:{self.warmup_steps}{start}:{self.after.spec()}"


def _num(x: float) -> str:
    """A float as the shortest string that reads back as the same float."""
    return repr(float(x))


def spec(schedule):
    """``schedule.spec()`` (a string) when the schedule has one; a custom schedule without a
    spec is returned as it is (usable in-process, but not in a weights-only checkpoint)."""
    try:
        return schedule.spec()
    except (TypeError, NotImplementedError, AttributeError):
        return schedule


def parse(spec: str | Schedule | None) -> Schedule:
    """Build a schedule from a short string: ``constant``, ``linear:T[:end[:start]]``,
    ``cosine:T[:eta_min]``, ``warmup:W[:start]:<inner spec>`` (start: the warmup's start factor,
    default 0.1). Example: ``warmup:100:cosine:1000``. ``parse(s.spec()) == s``."""
    if spec is None:
        return Constant()
    if isinstance(spec, Schedule):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"schedule must be a Schedule or a string, got {spec!r}")
    head, _, rest = spec.partition(":")
    args = rest.split(":") if rest else []
    try:
        if head == "constant" and not args:
            return Constant()
        if head == "linear" and 1 <= len(args) <= 3:
            return Linear(int(args[0]), float(args[2]) if len(args) > 2 else 1.0,
                          float(args[1]) if len(args) > 1 else 0.0)
        if head == "cosine" and 1 <= len(args) <= 2:
            return Cosine(int(args[0]), float(args[1]) if len(args) > 1 else 0.0)
        if head == "warmup" and len(args) >= 1:
            rest, start = args[1:], 0.1
            if rest and _is_number(rest[0]):
                start, rest = float(rest[0]), rest[1:]
            return Warmup(int(args[0]), parse(":".join(rest) or "constant"), start)
    except (TypeError, ValueError) as err:
        raise ValueError(f"schedule {spec!r}: {err}") from None
    raise ValueError(
        f"schedule must be one of constant, linear:T[:end[:start]], cosine:T[:eta_min], "
        f"warmup:W[:start][:inner], got {spec!r}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
