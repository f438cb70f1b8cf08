"""Scaling paths: which optimizer runs at step size h, and which flow it tends to as h → 0.

A path maps a flow F (torch hyperparameters lr, β, ε, …) and a step h to a flow F_h whose
partitioned Euler step of size h *is* the discrete optimizer at that point of the path,
on the step clock τ = k·h:

    rates        F_h = F.  In torch terms lr → h·lr, (1-β) → h·(1-β).
                 Limit: F itself; the discrete runs converge at order 1.
    betas-fixed  lr → h·lr, β fixed.  F_h has the auxiliary rates of F divided by h
                 (ẋ = (1-β)(g - x)/h, …), so an Euler step h moves x by (1-β)(g - x) and
                 W by h·lr·(…).  As h → 0 the auxiliaries are slaved to their targets
                 (m → g, v → g², b → (1-d)g/(1-μ), c → 1):
                   SGD momentum μ (dampening d)  →  gradient flow Ẇ = -lr(1-d)/(1-μ)·g
                   Adam/AdamW, RMSprop           →  sign-like flow Ẇ = -lr·g/(|g| + ε)
                                                    (÷(1-μ) with RMSprop momentum)
    sqrt         Malladi et al. (2022) square-root rule: lr → √h·lr, (1-β) → h·(1-β),
                 ε → ε/√h, with gradient-noise covariance Σ → Σ/h (batch size × h).  Its
                 limit is an SDE, not an ODE (``fluxode.sde``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import validation as check
from .flows.base import Block, Envelope, Flow
from .flows.rates import Clock, Linear, Term, Toward

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
    """The h → 0 limit of ``flow`` along betas-fixed (see the module docstring)."""
    from .flows.modified import SignFlow
    from .flows.sgd import SGD

    if flow.max_grad_norm is not None or not _constant(flow):
        raise ValueError("betas-fixed limits are derived for constant lr without clipping")
    if flow.name == "sgd":
        mu, d = flow.momentum, flow.dampening
        if mu == 1:
            raise ValueError("momentum must be in [0, 1) for a betas-fixed limit, got 1")
        scale = 1.0 if not mu else (1 - d) / (1 - mu)
        return SGD(lr=flow.lr * scale, weight_decay=flow.weight_decay, maximize=flow.maximize)
    if flow.name in ("adam", "adamw"):
        if flow.amsgrad:
            raise ValueError("betas-fixed limit of Adam is derived for amsgrad=False")
        return SignFlow(lr=flow.lr, eps=flow.eps, weight_decay=flow.weight_decay,
                        decoupled=flow.decoupled_decay, maximize=flow.maximize)
    if flow.name == "rmsprop":
        if flow.centered:
            raise ValueError("betas-fixed limit of RMSprop is derived for centered=False")
        return SignFlow(lr=flow.lr / (1 - flow.momentum), eps=flow.eps,
                        weight_decay=flow.weight_decay, maximize=flow.maximize)
    raise ValueError(f"betas-fixed limit is known for sgd, adam, adamw, rmsprop; "
                     f"got flow {flow.name!r}")


def _constant(flow: Flow) -> bool:
    from .schedules import Constant

    return isinstance(flow.schedule, Constant)


# --- sqrt: Malladi et al.'s square-root rule -----------------------------------------------
@dataclass(frozen=True)
class SqrtPoint:
    """Hyperparameters at step h of the square-root path (torch names) and the noise scale."""

    lr: float
    betas: tuple[float, float] | None
    alpha: float | None
    eps: float
    noise_scale: float  # gradient-noise covariance multiplier: Σ → Σ·noise_scale = Σ/h


def sqrt_point(flow: Flow, h: float) -> SqrtPoint:
    """lr → √h·lr, (1-β) → h(1-β), ε → ε/√h, Σ → Σ/h (adam, adamw, rmsprop)."""
    h = check_step(h)
    r = math.sqrt(h)
    if flow.name in ("adam", "adamw"):
        b1, b2 = flow.betas
        return SqrtPoint(flow.lr * r, (1 - h * (1 - b1), 1 - h * (1 - b2)), None,
                         flow.eps / r, 1.0 / h)
    if flow.name == "rmsprop":
        return SqrtPoint(flow.lr * r, None, 1 - h * (1 - flow.alpha), flow.eps / r, 1.0 / h)
    raise ValueError(f"the sqrt path is defined for adam, adamw, rmsprop (for SGD the SDE "
                     f"path is the linear scaling rule, fluxode.sde); got flow {flow.name!r}")


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
    """The h → 0 limit of ``flow`` along ``path`` (deterministic paths)."""
    check_path(path)
    if path == "rates":
        return flow
    if path == "betas-fixed":
        return betas_fixed_limit(flow)
    raise ValueError("the sqrt path's limit is an SDE: see fluxode.sde")
