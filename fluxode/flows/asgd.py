"""ASGD (averaged SGD) as a flow (torch.optim.ASGD semantics).

torch's step t = τ + 1 uses the step size η_t and averaging weight μ_t it computed at the end
of the previous step (its ``eta`` and ``mu`` state), then writes the next ones:

    E(τ) = lr/(1 + λ·lr·τ)^α          μ(τ) = 1/max(1, τ - t₀)        (E(0) = lr, μ(0) = 1)

    Ẇ   = -E(τ)·(g + λ·W)                                  (λ = lambd; weight_decay is in g)
    ȧx  = μ(τ)·(W - ax)                                    (Polyak–Ruppert averaging)

After τ = t₀ + 1 the average is ax(τ) = (ax(t₀+1) + ∫_{t₀+1}^τ W)/(τ - t₀): the running mean
of the trajectory since t₀; before, a unit-rate filter whose unit step copies W (torch's
``ax.copy_(param)`` when μ = 1). The field is continuous; μ has a kink at τ = t₀ + 1
(``jump_times``: a jump of μ̇, where adaptive solvers should stop).

State. ``eta`` and ``mu`` are states as in torch (a torch LR scheduler changes lr, and torch's
next η is computed with the lr of the step that just ran): each is a known function of τ,
and each step writes its next value exactly (the exact solution of ẋ = E'(τ), μ'(τ)), in
torch's scalar dtype at the unit step. Partitioned Euler order: W (with the held η), ax
(with the new W and the held μ), then η and μ.

Limits. Along betas-fixed (torch's ASGD with lr·h and λ, α, t₀ fixed, on the step clock
τ = t·h) torch's step size is h·E(τ), since λ·(h·lr)·(τ/h) = λ·lr·τ: W keeps its equation.
The averaging weight counts steps, μ_t = 1/max(1, t - t₀) = 1/max(1, τ/h - t₀), and the
step-h run moves ax by μ_t·(W - ax): the rate μ_t/h = 1/max(h, τ - h·t₀), a 1/τ rate once
τ > h(t₀+1). So the path's flow holds η as E(τ) and counts μ in steps of h (``Sampled`` and
``Average`` know how they scale: ``divided``), and as h → 0 the window start h·t₀ → 0:

    Ẇ   = -E(τ)·(g + λ·W)          ȧx = (W - ax)/τ,  ax(0) = W₀
    ⇔  ax(τ) = (1/τ)∫₀^τ W(s) ds    (the Polyak–Ruppert mean of the whole flow; at τ = 0
                                      the rate's limit is Ẇ(0)/2)

(``ASGDMeanLimit``). The runs approach it at order 1 once h(t₀+1) ≪ τ (measured on
``quadratic``, lr 0.1, λ 0.5, α 0.5, t₀ 2, T 4, h = 1/4 … 1/64: order 1.01 for W, 0.98 for
ax); with torch's t₀ = 10⁶ that needs h ≪ 10⁻⁶·τ, and before that ax = W (μ = 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .. import schedules
from .. import validation as check
from .base import Block, Flow, Var
from .nadam import scalar_dtype
from .rates import Linear, Term


def step_size(lr: float, lambd: float, alpha: float, tau: float) -> float:
    """E(τ) = lr/(1 + λ·lr·τ)^α: ASGD's step size on the step clock (torch's expression)."""
    return lr / ((1 + lambd * lr * tau) ** alpha)


def _in_scalar_dtype(x: float) -> float:
    """x as torch keeps it in a scalar state tensor (float32 unless the default is float64)."""
    return float(torch.tensor(x, dtype=scalar_dtype()))


@dataclass(frozen=True)
class Sampled:
    """ẋ = f'(τ) for a state that is a known function f of τ: each step of size h writes
    f(τ + h) (in torch's scalar dtype at the optimizer's own step, as torch writes its
    ``eta``/``mu``). ``per`` ≠ 1 (betas-fixed): f counts torch's steps of size ``per``, so
    the state is f(τ/per)."""

    f: Callable[[float], float]
    df: Callable[[float], float]
    tau: float
    counts_steps: bool = False  # f's argument is torch's step count (μ), not the clock (η)
    per: float = 1.0

    def rate(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        d = self.df(float(self.tau) / self.per) / self.per
        return torch.full_like(x, d) if out is None else out.fill_(d)

    def euler_(self, x: Tensor, h: float) -> None:
        v = self.f((float(self.tau) + h) / self.per) if self.per != 1.0 \
            else self.f(float(self.tau) + h)
        x.fill_(_in_scalar_dtype(v) if h == self.per else v)

    def divided(self, h: float) -> Sampled:
        """Along betas-fixed: a step count is counted in steps of h; a function of the clock
        (η: torch's step size at lr·h is h·E(τ), W's Euler step h·E) is unchanged."""
        return replace(self, per=self.per * h) if self.counts_steps else self


@dataclass(frozen=True)
class Average:
    """ȧx = (μ/per)·(W - ax); the step of size ``per`` (torch's step: 1, or h along
    betas-fixed) is torch's ``ax.add_(W.sub(ax).mul_(μ))``, or ``ax.copy_(W)`` when μ = 1."""

    mu: float
    target: Tensor
    per: float = 1.0

    def rate(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        r = (self.target - x).mul_(self.mu / self.per if self.per != 1.0 else self.mu)
        return r if out is None else out.copy_(r)

    def euler_(self, x: Tensor, h: float) -> None:
        if h == self.per:
            if self.mu == 1:
                x.copy_(self.target)
            else:
                x.add_(self.target.sub(x).mul_(torch.tensor(self.mu, dtype=scalar_dtype())))
        else:
            x.add_(self.target.sub(x).mul_(h * self.mu / self.per))

    def divided(self, h: float) -> Average:
        return replace(self, per=self.per * h)


class ASGD(Flow):
    name = "asgd"
    summary = "averaged SGD: decaying step size and a Polyak–Ruppert average (torch.optim.ASGD)"
    torch_twin = "ASGD"
    torch_names = {"ax": "ax", "eta": "eta", "mu": "mu"}
    default_lr = 1e-2
    ranges = {"alpha": check.Interval(0.0, math.inf)}  # an exponent, not a smoothing weight

    def __init__(self, lr=None, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0, *,
                 maximize=False, schedule=None, max_grad_norm=None):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule,
                         max_grad_norm=max_grad_norm)
        if not isinstance(self.schedule, schedules.Constant):
            raise ValueError("ASGD carries its own step-size schedule lr/(1 + λ·lr·τ)^α; drive "
                             "lr with a torch LR scheduler instead of schedule=")
        self.lambd = check.at_least("lambd", lambd, 0.0)
        self.alpha = check.within("alpha", alpha, self.ranges["alpha"])
        self.t0 = check.at_least("t0", t0, 0.0)

    # --- the step size and averaging weight as functions of τ --------------------------------
    def E(self, tau: float) -> float:
        """lr/(1 + λ·lr·τ)^α (torch's expression)."""
        return step_size(self.lr, self.lambd, self.alpha, tau)

    def dE(self, tau: float) -> float:
        lr = self.lr
        return -self.alpha * self.lambd * lr * lr * (1 + self.lambd * lr * tau) ** (-self.alpha - 1)

    def mu_of(self, tau: float) -> float:
        """1/max(1, τ - t₀) (torch's expression)."""
        return 1 / max(1, tau - self.t0)

    def dmu(self, tau: float) -> float:
        return -1 / (tau - self.t0) ** 2 if tau - self.t0 > 1 else 0.0

    def variables(self):
        lr = self.lr
        return (Var("ax"),
                Var("eta", "scalar", init=lambda W, g0: torch.tensor(_in_scalar_dtype(lr)),
                    dtype="float64"),
                Var("mu", "scalar", init=1.0, dtype="float64"))

    def clock_values(self, step):
        """η and μ after ``step`` steps, as torch computes them."""
        if step == 0:
            return {"eta": _in_scalar_dtype(self.lr), "mu": 1.0}
        return {"eta": _in_scalar_dtype(self.E(float(step))),
                "mu": _in_scalar_dtype(self.mu_of(float(step)))}

    def jump_times(self, T):
        t = self.t0 + 1
        return [t] if t <= T else []

    def blocks(self):
        def position(tau, S, g):
            eta = float(S["eta"])
            return (Linear((Term(-eta, g),), decay=self.lambd * eta, keep=1 - self.lambd * eta),)

        def average(tau, S, g):
            return (Average(float(S["mu"]), S["W"]),)

        def clocks(tau, S, g):
            return (Sampled(self.E, self.dE, tau),
                    Sampled(self.mu_of, self.dmu, tau, counts_steps=True))

        return [Block(("W",), position), Block(("ax",), average), Block(("eta", "mu"), clocks)]

    def equations(self):
        return [f"E(τ) = lr/(1 + λ·lr·τ)^α          λ={self.lambd:g}, α={self.alpha:g}",
                f"μ(τ) = 1/max(1, τ - t₀)          t₀={self.t0:g}",
                "Ẇ   = -E(τ)·(g + λ·W)",
                "ȧx  = μ(τ)·(W - ax)"]

    def betas_fixed_limit(self):
        """Ẇ = -E(τ)(g + λW), ȧx = (W - ax)/τ: ax is the mean of W over [0, τ] (t₀·h → 0)."""
        return ASGDMeanLimit(lr=self.lr, lambd=self.lambd, alpha=self.alpha,
                             weight_decay=self.weight_decay, maximize=self.maximize,
                             max_grad_norm=self.max_grad_norm)

    def hyperparameters(self):
        hp = {**super().hyperparameters(), "lambd": self.lambd, "alpha": self.alpha,
              "t0": self.t0}
        return hp

    @classmethod
    def option_grid(cls):
        return [dict(lambd=lam, alpha=a, t0=t0, weight_decay=wd, maximize=mx)
                for lam, a in ((1e-4, 0.75), (0.5, 0.5))
                for t0 in (1e6, 10.0) for wd in (0.0, 1e-2) for mx in (False, True)
                if not (mx and (wd or t0 != 10.0))]

    @classmethod
    def invalid_options(cls):
        return super().invalid_options() + [{"lambd": -1.0}, {"alpha": -0.5}, {"t0": -3.0},
                                            {"t0": math.nan}]


# --- betas-fixed limit ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RunningMean:
    """ȧx = (W - ax)/τ, the running mean ax = (1/τ)∫₀^τ W; at τ = 0 (ax = W) the rate's
    limit Ẇ(0)/2 (``start``)."""

    target: Tensor
    tau: float
    start: Tensor | None = None

    def rate(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        r = self.start.mul(0.5) if self.tau == 0 else (self.target - x).div_(float(self.tau))
        return r if out is None else out.copy_(r)

    def euler_(self, x: Tensor, h: float) -> None:
        x.add_(self.rate(x), alpha=h)


class ASGDMeanLimit(Flow):
    """ASGD along betas-fixed: Ẇ = -E(τ)(g + λW), ȧx = (W - ax)/τ, ax(0) = W₀."""

    name = "asgd-mean-limit"
    summary = "ASGD's betas-fixed limit: its W flow and the running mean of W over [0, τ]"

    def __init__(self, lr=1e-2, lambd=1e-4, alpha=0.75, weight_decay=0.0, *, maximize=False,
                 max_grad_norm=None):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize,
                         max_grad_norm=max_grad_norm)
        self.lambd = check.at_least("lambd", lambd, 0.0)
        self.alpha = check.within("alpha", alpha, ASGD.ranges["alpha"])

    def variables(self):
        return (Var("ax", init=lambda W, g0: W.clone()),)

    def blocks(self):
        def drift(tau, S, g):
            E = step_size(self.lr, self.lambd, self.alpha, float(tau))
            return Linear((Term(-E, g),), decay=self.lambd * E)

        def position(tau, S, g):
            return (drift(tau, S, g),)

        def average(tau, S, g):
            start = drift(tau, S, g).rate(S["W"]) if tau == 0 else None
            return (RunningMean(S["W"], tau, start),)

        return [Block(("W",), position), Block(("ax",), average)]

    def equations(self):
        return [f"E(τ) = lr/(1 + λ·lr·τ)^α          λ={self.lambd:g}, α={self.alpha:g}",
                "Ẇ   = -E(τ)·(g + λ·W)",
                "ȧx  = (W - ax)/τ,  ax(0) = W₀    (ax = mean of W over [0, τ])"]

    def hyperparameters(self):
        return {**super().hyperparameters(), "lambd": self.lambd, "alpha": self.alpha}
