"""The flow abstraction: an optimizer as a coupled ODE system over its whole state.

A flow on the step clock τ (τ = k at the k-th optimizer step) is a list of *blocks*, each
giving the rates of some state variables (as ``rates.Linear``/``rates.Toward`` expressions),
evaluated on the state S and the effective gradient g = G(W, ∇L(W)) (sign flip for
``maximize``, coupled L2 decay, a Newton solve, ...):

    Block(names, f):       d(names)/dτ = f(τ, S, g)
    Envelope(name, src):   name(τ) = max_{s ≤ τ} src(s)          (AMSGrad's running maximum)

The continuous flow evaluates every block on the same S. The discrete optimizer is one
partitioned (semi-implicit) Euler step over the blocks in order, each block seeing the values
the earlier blocks just produced; ``fluxode.discretize`` does both, generically.
Gradient-norm clipping acts on the raw gradient of the whole model before G.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor

from .. import schedules
from .. import validation as check
from .rates import Rate

State = dict[str, Tensor]
RateFn = Callable[[float, State, Tensor], tuple[Rate, ...]]


@dataclass(frozen=True)
class Block:
    """d(names)/dτ = field(τ, S, g); ``field`` returns one rate expression per name."""

    names: tuple[str, ...]
    field: RateFn


@dataclass(frozen=True)
class Envelope:
    """name(τ) = max_{s ≤ τ} source(s): discretely ``max(name, source)``, continuously
    d name/dτ = [d source/dτ]₊ · 1{source ≥ name}."""

    name: str
    source: str


class Flow:
    """Base class. Subclasses set the class attributes and implement ``blocks``/``equations``."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    torch_twin: ClassVar[str | None] = None  # name of the torch.optim class, if any
    needs_hessian: ClassVar[bool] = False
    default_lr: ClassVar[float] = 1e-3

    def __init__(self, lr: float | None = None, *, weight_decay: float = 0.0,
                 maximize: bool = False, schedule=None, max_grad_norm: float | None = None):
        self.lr = check.at_least("lr", self.default_lr if lr is None else lr, 0.0)
        self.weight_decay = check.at_least("weight_decay", weight_decay, 0.0)
        self.maximize = check.flag("maximize", maximize)
        self.schedule = schedules.parse(schedule)
        self.max_grad_norm = (None if max_grad_norm is None
                              else check.positive("max_grad_norm", max_grad_norm))

    # --- state -------------------------------------------------------------------------------
    vectors: tuple[str, ...] = ()   # auxiliary states shaped like W
    clocks: tuple[str, ...] = ()    # scalar states (bias-correction clocks), start at 0

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("W", *self.vectors, *self.clocks)

    def init(self, W: Tensor, g0: Tensor | None = None) -> State:
        """Initial state at τ = 0: auxiliaries and clocks zero (subclasses may use the effective
        first gradient ``g0`` for a consistent start)."""
        S = {"W": W}
        for name in self.vectors:
            S[name] = torch.zeros_like(W)
        for name in self.clocks:
            S[name] = torch.zeros((), dtype=W.dtype, device=W.device)
        return S

    @property
    def memory_per_param(self) -> int:
        """Optimizer-state tensors shaped like W, per parameter (excluding W itself)."""
        return len(self.vectors)

    # --- dynamics ----------------------------------------------------------------------------
    def eta(self, tau: float) -> float:
        """η(τ) = schedule(lr, τ)."""
        return self.schedule(self.lr, float(tau))

    def effective_gradient(self, W: Tensor, g: Tensor, H: Tensor | None = None) -> Tensor:
        """G(W, ∇L): -∇L under ``maximize``, then + λW for coupled (L2) weight decay."""
        g = -g if self.maximize else g
        if self.weight_decay != 0 and not self.decoupled_decay:
            g = g.add(W, alpha=self.weight_decay)
        return g

    decoupled_decay: ClassVar[bool] = False

    def admissible(self, S: State) -> State:
        """S, or a copy moved onto the set the exact flow never leaves (default: S itself).

        Runge–Kutta stages combine slopes with negative weights (rk4's 3/8 rule), so from a
        singular start (Adam's m = v = c = 0) a stage can hold v < 0 beside m ≠ 0, where the
        field is unbounded. The continuous field is evaluated at the projected state: that
        extends it to the whole space without changing it on the flow's own trajectories.
        The discrete (torch.optim) step never projects."""
        return S

    @staticmethod
    def _raise_to(S: State, floors: dict[str, Tensor | float]) -> State:
        """S with S[name] ≥ floor elementwise, copying only when something is below."""
        low = {n: f for n, f in floors.items() if bool((S[n] < f).any())}
        if not low:
            return S
        S = dict(S)
        for n, f in low.items():
            S[n] = torch.clamp(S[n], min=f) if not isinstance(f, Tensor) else torch.maximum(S[n], f)
        return S

    def blocks(self) -> list[Block | Envelope]:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- description -------------------------------------------------------------------------
    def hyperparameters(self) -> dict:
        """Hyperparameters under torch.optim's names (as accepted by the constructor)."""
        hp = {"lr": self.lr, "weight_decay": self.weight_decay, "maximize": self.maximize}
        if not isinstance(self.schedule, schedules.Constant):
            hp["schedule"] = self.schedule
        if self.max_grad_norm is not None:
            hp["max_grad_norm"] = self.max_grad_norm
        return hp

    def gradient_equation(self) -> str:
        g = "-∇L(W)" if self.maximize else "∇L(W)"
        if self.max_grad_norm is not None:
            g = f"clip({g}, {self.max_grad_norm:g})"
        if self.weight_decay and not self.decoupled_decay:
            g += " + λW"
        return f"g  = {g}"

    def equations(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def legend(self) -> str:
        parts = [f"{k}={_fmt(v)}" for k, v in self.hyperparameters().items()]
        return ", ".join(parts)

    def describe(self) -> str:
        lines = [f"{self.name}: {self.summary}", f"  {self.gradient_equation()}"]
        lines += [f"  {eq}" for eq in self.equations()]
        if not isinstance(self.schedule, schedules.Constant):
            lines.append(f"  {self.schedule.describe()}")
        lines.append(f"  state: {', '.join(self.state_names)}   "
                     f"memory: {self.memory_per_param} × params"
                     + (f" + {len(self.clocks)} scalars" if self.clocks else ""))
        lines.append(f"  hyperparameters: {self.legend()}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.legend()})"

    # --- torch twin and test table -----------------------------------------------------------
    def torch_kwargs(self) -> dict:
        """Keyword arguments for the torch.optim twin (schedule and clipping are applied by the
        caller, as torch users do)."""
        hp = self.hyperparameters()
        hp.pop("schedule", None)
        hp.pop("max_grad_norm", None)
        return hp

    @classmethod
    def option_grid(cls) -> list[dict]:
        """Option combinations exercised against the torch twin (``fluxode verify``)."""
        return [{}]

    @classmethod
    def invalid_options(cls) -> list[dict]:
        """Hyperparameter sets that must be refused with a ValueError (the shared test table)."""
        return [{"lr": -1.0}, {"lr": math.nan}, {"weight_decay": -0.1}, {"maximize": "yes"},
                {"max_grad_norm": 0.0}, {"schedule": "bogus"}]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    if isinstance(v, schedules.Schedule):
        return type(v).__name__.lower()
    return repr(v)
