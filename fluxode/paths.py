"""Scaling paths: which optimizer runs at step size h, and which flow it tends to as h → 0.

A path maps a flow F (torch hyperparameters lr, β, ε, …) and a step h to a flow F_h whose
partitioned Euler step of size h *is* the discrete optimizer at that point of the path,
on the step clock τ = k·h:

    rates        F_h = F.  In torch terms lr → h·lr, (1-β) → h·(1-β).
                 Limit: F itself; the discrete runs converge at order 1.
    betas-fixed  lr → h·lr, β fixed.  F_h has the auxiliary rates of F divided by h
                 (ẋ = (1-β)(g - x)/h, …), so an Euler step h moves x by (1-β)(g - x) and
                 W by h·lr·(…).  As h → 0 the auxiliaries are slaved to their targets; the
                 limit is stated by each flow (``Flow.betas_fixed_limit``: SGD momentum →
                 gradient flow, Adam/RMSprop → a sign-like flow).
    sqrt         Malladi et al. (2022) square-root rule: lr → √h·lr, (1-β) → h·(1-β),
                 ε → ε/√h, with gradient-noise covariance Σ → Σ/h (batch size × h).  Its
                 points are stated by each flow (``Flow.sqrt_point``); its limit is an SDE,
                 not an ODE (``fluxode.sde``).

This module is generic: ``limit_flow`` and ``sqrt_point`` ask the flow (``fluxode.flows.
capabilities``); ``BetasFixed`` rescales any flow's auxiliary rates.
"""

from __future__ import annotations

from . import validation as check
from .flows.base import Block, Envelope, Flow
from .flows.capabilities import SqrtPoint
from .flows.rates import Clock, Exact, Linear, Term, Toward

PATHS = ("rates", "betas-fixed", "sqrt")


def check_path(path: str) -> str:
    if path not in PATHS:
        raise ValueError(f"path must be one of {list(PATHS)}, got {path!r}")
    return path


def check_step(h) -> float:
    h = check.positive("h", h)
    if h > 1:
        raise ValueError(f"h must be in (0, 1] (a step along a scaling path), got {h!r}")
    return h


# --- betas-fixed: a flow whose Euler step h is the optimizer with lr·h and β unchanged --------
def _divide(rate, h: float):
    """The rate expression ``rate`` divided by h (decay: decay/h)."""
    if isinstance(rate, Linear):
        return Linear(tuple(Term(t.coef / h, t.a, t.b, t.op) for t in rate.terms),
                      decay=rate.decay / h)
    if isinstance(rate, Toward):
        return Toward(rate.rate_ / h, rate.target)
    if isinstance(rate, Clock):
        return Clock(1.0 - (1.0 - rate.keep) / h, rate.tau)
    if isinstance(rate, Exact):  # its exact value now belongs to the step of size h
        return Exact(_divide(rate.inner, h), rate.value, step=rate.step * h)
    raise TypeError(f"unknown rate expression {type(rate).__name__}")  # pragma: no cover


class BetasFixed(Flow):
    """F with every auxiliary rate divided by h: Euler step h of it = torch with lr·h, β fixed.

    Block i ≠ last:  ẋ = fᵢ(τ, S, g)/h        last (W):  Ẇ = f_W(τ, S, g)
    """

    def __init__(self, inner: Flow, h: float):
        self.inner, self.h = inner, check_step(h)
        self.name = f"{inner.name}@betas-fixed(h={h:g})"
        self.summary = f"{inner.name} with auxiliary rates ÷ h (lr·h, β fixed)"
        self.vectors, self.clocks = inner.vectors, inner.clocks
        self.needs_hessian = inner.needs_hessian
        self.max_grad_norm = inner.max_grad_norm
        self.lr, self.schedule = inner.lr, inner.schedule

    def init(self, W, g0=None):
        return self.inner.init(W, g0)

    def effective_gradient(self, W, g, H=None):
        return self.inner.effective_gradient(W, g, H)

    def eta(self, tau):
        return self.inner.eta(tau)

    def blocks(self):
        h, out = self.h, []
        for block in self.inner.blocks():
            if isinstance(block, Envelope) or "W" in block.names:
                out.append(block)
                continue
            out.append(Block(block.names,
                             lambda tau, S, g, f=block.field: tuple(_divide(r, h)
                                                                     for r in f(tau, S, g))))
        return out

    def equations(self):
        return [f"(auxiliary rates of {self.inner.name}) / h,  h={self.h:g}",
                *self.inner.equations()]

    def hyperparameters(self):
        return {**self.inner.hyperparameters(), "h": self.h}


def betas_fixed_limit(flow: Flow) -> Flow:
    """The h → 0 limit of ``flow`` along betas-fixed, as the flow states it."""
    return flow.limit("betas-fixed")


# --- sqrt: Malladi et al.'s square-root rule -----------------------------------------------
def sqrt_point(flow: Flow, h: float) -> SqrtPoint:
    """The optimizer at step h of the square-root path, as the flow states it:
    lr → √h·lr, (1-β) → h(1-β), ε → ε/√h, Σ → Σ/h."""
    return flow.sqrt_point(check_step(h))


# --- one entry point ---------------------------------------------------------------------------
def discrete_flow(flow: Flow, h: float, path: str = "rates") -> Flow:
    """The flow whose Euler step h is the optimizer at step h of ``path`` (deterministic)."""
    check_path(path)
    h = check_step(h)
    if path == "rates":
        return flow
    if path == "betas-fixed":
        return BetasFixed(flow, h)
    raise ValueError("the sqrt path is stochastic: use fluxode.sde for its discrete runs")


def limit_flow(flow: Flow, path: str = "rates") -> Flow:
    """The h → 0 limit of ``flow`` along ``path``, as the flow states it
    (``Flow.limit``; the sqrt path's limit is an SDE and is refused)."""
    return flow.limit(check_path(path))
