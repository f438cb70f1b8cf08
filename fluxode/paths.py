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
    sqrt         Malladi et al. (2022) square-root rule: lr → √κ·lr, (1-β) → κ·(1-β),
                 ε → ε/√κ, with gradient-noise covariance Σ → Σ/κ (batch size × κ).  It runs
                 both ways: κ < 1 (smaller batches, toward the SDE limit) and κ > 1
                 (Malladi's usual question: scale the batch up), as long as κ(1-β) ≤ 1.
                 Its points are stated by each flow (``Flow.sqrt_point``; ``sqrt_scale``
                 returns the hyperparameters, the flow and the batch size); its limit is an
                 SDE, not an ODE (``fluxode.sde``). One step of the scaled optimizer covers
                 κ steps of the step clock (τ = κ·k).

One clock. Every run here is on the step clock τ (τ = k·h at the k-th step of the optimizer
at path step h; torch.optim is h = 1). lr-time t = lr·τ (the clock of the modified-equation
and SDE literature, where the lr-step is s = h·lr) is an explicit conversion:
``lr_time(τ, lr)`` and ``step_time(t, lr)``.

h is given once. ``discrete_flow(F, h, path)`` returns a flow that carries its step
(``path_step``); ``step_of(flow, h)`` is the step a discrete run of it takes, and refuses an
h that disagrees (which would silently run a different optimizer). Every step along a
deterministic path, and every flow's ``h`` (``modified-sgd``, ``modified-adam``, …), is
checked by ``check_step``: h ∈ (0, 1].

This module is generic: ``limit_flow`` and ``sqrt_point`` ask the flow (``fluxode.flows.
capabilities``); ``BetasFixed`` rescales any flow's auxiliary rates.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

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
    """h ∈ (0, 1]: a step along a deterministic scaling path (and any flow's ``h``)."""
    h = check.positive("h", h)
    if h > 1:
        raise ValueError(f"h must be in (0, 1] (a step along a scaling path), got {h!r}")
    return h


def check_scale(kappa, name: str = "h") -> float:
    """κ ∈ (0, inf), finite: a batch-size factor on the square-root path."""
    kappa = check.positive(name, kappa)
    if not math.isfinite(kappa):
        raise ValueError(f"{name} must be in (0, inf) (a batch-size factor), got {kappa!r}")
    return kappa


# --- one clock ---------------------------------------------------------------------------------
def lr_time(tau, lr: float):
    """t = lr·τ: lr-time (the modified-equation and SDE literature's clock) at step-clock τ."""
    return tau * check.positive("lr", lr)


def step_time(t, lr: float):
    """τ = t/lr: the step clock at lr-time t."""
    return t / check.positive("lr", lr)


def step_of(flow: Flow, h: float | None = None) -> float:
    """The step size a discrete run of ``flow`` takes: the step it carries
    (``discrete_flow``'s ``path_step``), or ``h`` (default 1: torch.optim). An ``h`` that
    disagrees with the carried step is refused: it would run another optimizer."""
    carried = getattr(flow, "path_step", None)
    if carried is None:
        return 1.0 if h is None else check.positive("h", h)
    if h is not None and float(h) != carried:
        raise ValueError(f"h={h!r} disagrees with the step h={carried:g} that flow "
                         f"{flow.name!r} carries (from discrete_flow): give h once, or not "
                         "at all")
    return carried


# --- betas-fixed: a flow whose Euler step h is the optimizer with lr·h and β unchanged --------
def _divide(rate, h: float):
    """The rate expression ``rate`` divided by h (decay: decay/h); a flow's own kind of rate
    provides ``divided(h)``."""
    if isinstance(rate, Linear):
        return Linear(tuple(Term(t.coef / h, t.a, t.b, t.op) for t in rate.terms),
                      decay=rate.decay / h)
    if isinstance(rate, Toward):
        return Toward(rate.rate_ / h, rate.target)
    if isinstance(rate, Clock):
        return Clock(1.0 - (1.0 - rate.keep) / h, rate.tau, rate.report)  # keeps its reader
    if isinstance(rate, Exact):  # its exact value now belongs to the step of size h
        return Exact(_divide(rate.inner, h), rate.value, step=rate.step * h)
    if hasattr(rate, "divided"):  # a flow's own rate expression knows how to scale itself
        return rate.divided(h)
    raise ValueError(f"rate expression {type(rate).__name__} has no betas-fixed form (give it "
                     "a divided(h) method): this flow cannot run along 'betas-fixed'")


class BetasFixed(Flow):
    """F with every auxiliary rate divided by h: Euler step h of it = torch with lr·h, β fixed.

    Block i ≠ last:  ẋ = fᵢ(τ, S, g)/h        last (W):  Ẇ = f_W(τ, S, g)
    """

    def __init__(self, inner: Flow, h: float):
        self.inner, self.h = inner, check_step(h)
        self.path_step = self.h
        self.name = f"{inner.name}@betas-fixed(h={h:g})"
        self.summary = f"{inner.name} with auxiliary rates ÷ h (lr·h, β fixed)"
        self.vectors, self.clocks = inner.vectors, inner.clocks
        self.needs_hessian = inner.needs_hessian
        self.max_grad_norm = inner.max_grad_norm
        self.lr, self.schedule = inner.lr, inner.schedule

    def init(self, W, g0=None):
        return self.inner.init(W, g0)

    def variables(self):
        return self.inner.variables()

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
    """The optimizer at batch factor h = κ ∈ (0, inf) of the square-root path, as the flow
    states it: lr → √κ·lr, (1-β) → κ(1-β), ε → ε/√κ, Σ → Σ/κ (κ > 1 needs κ(1-β) ≤ 1)."""
    kappa = check_scale(h)
    try:
        return flow.sqrt_point(kappa)
    except ValueError as err:
        if "declares no" in str(err) or kappa <= 1:
            raise
        raise ValueError(f"at h = κ = {kappa:g} the square-root rule leaves the flow's range "
                         f"(κ·(1-β) must stay ≤ 1): {err}") from None


@dataclass(frozen=True)
class SqrtScaled:
    """The square-root rule applied to ``base`` with batch factor κ: the scaled optimizer's
    ``flow`` and ``hyperparameters`` (torch's names), its ``batch_size`` (κ·B when B given),
    the noise multiplier Σ → Σ·``noise_scale`` (= 1/κ) and ``steps_per_step`` = κ (one
    step of the scaled optimizer covers κ units of the step clock)."""

    kappa: float
    flow: Flow
    hyperparameters: dict
    batch_size: int | None
    noise_scale: float

    @property
    def steps_per_step(self) -> float:
        return self.kappa


def sqrt_scale(flow: Flow, kappa: float, batch_size: int | None = None) -> SqrtScaled:
    """Malladi et al.'s square-root rule in either direction: the optimizer for batch size
    κ·B (κ > 1: larger batches; κ < 1: smaller), with lr·√κ, 1 - κ(1-β), ε/√κ.

        >>> s = sqrt_scale(make_flow("adam", lr=1e-3), 4, batch_size=32)
        >>> s.hyperparameters["lr"], s.batch_size        # (0.002, 128)"""
    pt = sqrt_point(flow, kappa)
    kappa = float(kappa)
    B = None
    if batch_size is not None:
        B0 = check.positive_int("batch_size", batch_size)
        B = round(B0 * kappa)
        if abs(B - B0 * kappa) > 1e-9 * B0 * kappa or B < 1:
            raise ValueError(f"batch_size·κ must be a positive integer, got {B0}·{kappa:g}")
    return SqrtScaled(kappa, pt.flow, pt.flow.hyperparameters(), B, pt.noise_scale)


# --- one entry point ---------------------------------------------------------------------------
def discrete_flow(flow: Flow, h: float, path: str = "rates") -> Flow:
    """The flow whose Euler step h is the optimizer at step h of ``path`` (deterministic). It
    carries h (``path_step``): ``run_discrete_trajectory(discrete_flow(F, h, path), problem,
    steps)`` takes that step, and a different h there is refused (``step_of``)."""
    check_path(path)
    h = check_step(h)
    if path == "sqrt":
        raise ValueError("the sqrt path changes the gradient noise, not only the flow: its "
                         "optimizer at h is sqrt_point(flow, h).flow, run with unit steps on "
                         "gradients whose noise covariance is Σ/h (fluxode.sde runs it); its "
                         "limit is an SDE")
    at_step = getattr(flow, "at_step", None)
    if path == "rates" and at_step is not None:  # flows whose scheme depends on h (NAG)
        F = at_step(h)
    elif path == "rates":
        F = copy.copy(flow)
    else:
        F = BetasFixed(flow, h)
    F.path_step = h
    return F


def limit_flow(flow: Flow, path: str = "rates") -> Flow:
    """The h → 0 limit of ``flow`` along ``path``, as the flow states it
    (``Flow.limit``; the sqrt path's limit is an SDE and is refused)."""
    return flow.limit(check_path(path))
