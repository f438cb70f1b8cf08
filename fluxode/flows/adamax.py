"""Adamax as a flow (torch.optim.Adamax semantics): Adam with an infinity-norm denominator.

torch's step (t = τ + 1):  m ← lerp(m, g, 1-β₁),  u ← max(β₂·u, |g| + ε),
W ← W - lr/(1-β₁ᵗ)·m/u.  The running maximum is not smooth, and neither is the flow:

    ṁ  = (1-β₁)(g - m)          ċ₁ = (1-β₁)(1 - c₁),  c₁(0) = 0
    u̇  = (|g| + ε - β₂·u)₊ - (1-β₂)·u                  (the relaxed decaying envelope)
    Ẇ  = -η(τ)·(m/c₁)/u

Its unit Euler step is u + (f - β₂u)₊ - (1-β₂)u = max(β₂u, f) with f = |g| + ε: torch's
update exactly (the discrete step applies torch's ``torch.maximum(u.mul_(β₂), f)``). The u
field is Lipschitz and piecewise linear: u decays at rate 1-β₂ while u > f/β₂ and relaxes to
f at unit rate below; it has a kink (not a jump) where f = β₂u, so the flow is well posed
but not C¹ there. Adaptive solvers see the kink as a local loss of smoothness; the rates
path is measured (``experiments/zoo_table.py``), not assumed.

The start. torch starts from u = 0, where m/(c₁u) is undefined (0/0 over 0). The flow starts
from the consistent value u(0) = |g₀| + ε (``init``): torch's first step writes
max(0, f₀) = f₀, and from u = f₀ every step of size h gives f₀ again (β₂f₀ < f₀), so the
discrete runs are unchanged and the field is finite from τ = 0 (m/c₁ → g₀ there).

Capabilities (``fluxode.flows.capabilities``):

    betas-fixed limit   m → g, u → |g| + ε (the envelope of a slowly varying f is f itself),
                        c₁ → 1:  Ẇ = -η·g/(|g| + ε)       (``SignFlow``, coupled decay in g)
                        (checked against torch.optim.Adamax with lr·h, β fixed)
    sqrt path at h      lr·√h, βᵢ → 1 - h(1-βᵢ), ε → ε/√h, Σ → Σ/h  (u scales like |g|, as
                        Adam's √v does)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import validation as check
from .base import Block, Flow, Var
from .capabilities import SqrtPoint
from .modified import SignFlow
from .rates import Clock, Linear, Term, Toward


@dataclass(frozen=True)
class DecayingMax:
    """u̇ = (f - κu)₊ - (1-κ)u: unit step max(κu, f) (torch's ``maximum(u.mul_(κ), f)``)."""

    keep: float
    floor: Tensor

    def rate(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        r = (self.floor - self.keep * x).clamp_(min=0).sub_((1 - self.keep) * x)
        return r if out is None else out.copy_(r)

    def euler_(self, x: Tensor, h: float) -> None:
        if h == 1.0:
            torch.maximum(x.mul_(self.keep), self.floor, out=x)
        else:
            x.add_(self.rate(x), alpha=h)

    def divided(self, h: float) -> DecayingMax:
        """The rate ÷ h (betas-fixed): unit step of size h = torch's max(β₂u, f)."""
        return _DividedMax(self.keep, self.floor, h)


@dataclass(frozen=True)
class _DividedMax(DecayingMax):
    h: float = 1.0

    def rate(self, x, out=None):
        r = super().rate(x).div_(self.h)
        return r if out is None else out.copy_(r)

    def euler_(self, x, h):
        if h == self.h:
            torch.maximum(x.mul_(self.keep), self.floor, out=x)
        else:
            x.add_(self.rate(x), alpha=h)


class Adamax(Flow):
    name = "adamax"
    summary = "Adamax: Adam with a decaying infinity-norm envelope (torch.optim.Adamax)"
    torch_twin = "Adamax"
    torch_names = {"m": "exp_avg", "u": "exp_inf"}
    default_lr = 2e-3

    def __init__(self, lr=None, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
                 maximize=False, schedule=None, max_grad_norm=None):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule,
                         max_grad_norm=max_grad_norm)
        self.betas = check.betas(betas)
        self.eps = check.positive("eps", eps)

    def variables(self):
        eps = self.eps

        def envelope_start(W, g0):
            if g0 is None:
                return torch.zeros_like(W)
            return g0.abs().add_(eps)

        return (Var("m"), Var("u", init=envelope_start), Var("c1", "scalar", dtype="float64"))

    def admissible(self, S):
        """u ≥ 0: the envelope of positive numbers (RK stages may undershoot)."""
        return self._raise_to(S, {"u": 0.0})

    def blocks(self):
        b1, b2 = self.betas

        def moments(tau, S, g):
            return (Toward(1 - b1, g), DecayingMax(b2, g.abs().add_(self.eps)), Clock(b1, tau))

        def position(tau, S, g):
            eta = self.eta(tau)
            bc1 = float(S["c1"])
            if bc1 == 0:  # τ = 0 in the continuous flow: m/c₁ → g
                return (Linear((Term(-eta, g, S["u"], "div"),)),)
            return (Linear((Term(-(eta / bc1), S["m"], S["u"], "div"),)),)

        return [Block(("m", "u", "c1"), moments), Block(("W",), position)]

    def equations(self):
        b1, b2 = self.betas
        return [f"ṁ  = (1-β₁)(g - m)            β₁={b1:g}",
                "ċ₁ = (1-β₁)(1 - c₁),  c₁(0) = 0",
                f"u̇  = (|g| + ε - β₂u)₊ - (1-β₂)u    β₂={b2:g}, ε={self.eps:g}, u(0) = |g₀| + ε",
                "Ẇ  = -η(τ)·(m/c₁)/u"]

    # --- capabilities ------------------------------------------------------------------------
    def betas_fixed_limit(self):
        """Ẇ = -η·g/(|g| + ε): m → g, u → |g| + ε, c₁ → 1."""
        self._require_constant_lr("betas-fixed limits")
        return SignFlow(lr=self.lr, eps=self.eps, weight_decay=self.weight_decay,
                        decoupled=False, maximize=self.maximize)

    def sqrt_point(self, h):
        """lr → √h·lr, βᵢ → 1 - h(1-βᵢ), ε → ε/√h, Σ → Σ/h."""
        h, r = self._path_step(h)
        b1, b2 = self.betas
        return SqrtPoint(self.replace(lr=self.lr * r, betas=(1 - h * (1 - b1), 1 - h * (1 - b2)),
                                      eps=self.eps / r), 1.0 / h)

    def hyperparameters(self):
        return {**super().hyperparameters(), "betas": self.betas, "eps": self.eps}

    @classmethod
    def option_grid(cls):
        return [dict(weight_decay=wd, maximize=mx, betas=b)
                for wd in (0.0, 1e-2) for mx in (False, True)
                for b in ((0.9, 0.999), (0.8, 0.9)) if not (mx and b != (0.9, 0.999))]

    @classmethod
    def invalid_options(cls):
        return super().invalid_options() + [{"betas": (0.9, 1.5)}, {"eps": 0.0}]
