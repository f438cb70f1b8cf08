"""Adam and AdamW as flows (torch.optim.Adam / AdamW semantics), bias correction as a flow.

    ṁ  = (1-β₁)(g - m)              v̇  = (1-β₂)(g² - v)
    ċ₁ = (1-β₁)(1 - c₁)             ċ₂ = (1-β₂)(1 - c₂)          c₁(0) = c₂(0) = 0
    v̂  = max_{s≤τ} v(s)  (amsgrad)   or  v
    Ẇ  = -η(τ)·[ (m/c₁) / (√(v̂/c₂) + ε) + λ·W ]                  (λ: AdamW only)

One Euler step of size 1 of the clock gives c₁ = 1 - β₁ᵏ, torch's bias correction. At τ = 0
the quotients m/c₁ and v/c₂ are 0/0; their limits are g and g².
"""

from __future__ import annotations

from torch import Tensor

from .. import validation as check
from .base import Block, Envelope, Flow
from .rates import Clock, Linear, Term, Toward


class Adam(Flow):
    name = "adam"
    summary = "Adam with bias correction as a flow, coupled L2 decay (torch.optim.Adam)"
    torch_twin = "Adam"
    clocks = ("c1", "c2")
    decoupled_decay = False

    def __init__(self, lr=None, betas=(0.9, 0.999), eps=1e-8, weight_decay=None, amsgrad=False,
                 *, maximize=False, schedule=None, max_grad_norm=None):
        if weight_decay is None:
            weight_decay = 1e-2 if self.decoupled_decay else 0.0
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule,
                         max_grad_norm=max_grad_norm)
        self.betas = check.betas(betas)
        self.eps = check.positive("eps", eps)
        self.amsgrad = check.flag("amsgrad", amsgrad)
        self.vectors = ("m", "v", "vmax") if self.amsgrad else ("m", "v")

    def moment_floor(self, S) -> Tensor | None:
        """The bound v ≥ (1-β₂)/(1-β₁)·m²/c₁ of the exact flow (β₁ ≤ β₂, c₁ > 0).

        With wᵢ(s) = (1-βᵢ)e^{-(1-βᵢ)(τ-s)}: m = ∫w₁g, v = ∫w₂g², c₁ = ∫w₁, and Cauchy–Schwarz
        with w₁/w₂ ≤ (1-β₁)/(1-β₂) gives m² ≤ v·∫w₁²/w₂ ≤ v·c₁·(1-β₁)/(1-β₂)."""
        b1, b2 = self.betas
        c1 = float(S["c1"])
        if b1 > b2 or c1 <= 0:
            return None
        return S["m"].square().mul_((1 - b2) / ((1 - b1) * c1))

    def admissible(self, S):
        floor = self.moment_floor(S)
        floor = 0.0 if floor is None else floor
        return self._raise_to(S, {n: floor for n in self.vectors if n != "m"})

    def blocks(self):
        b1, b2 = self.betas

        def moments(tau, S, g):
            return (Toward(1 - b1, g), Linear((Term(1 - b2, g, g, "mul"),), decay=1 - b2, keep=b2),
                    Clock(b1, tau), Clock(b2, tau))

        def position(tau, S, g):
            eta = self.eta(tau)
            decay = eta * self.weight_decay if self.decoupled_decay else 0.0
            keep = 1 - decay
            bc1, bc2 = float(S["c1"]), float(S["c2"])
            if bc1 == 0 or bc2 == 0:  # τ = 0 in the continuous flow: m/c₁ → g, v/c₂ → g²
                return (Linear((Term(-eta, g, g.abs().add_(self.eps), "div"),), decay, keep),)
            v = S["vmax"] if self.amsgrad else S["v"]
            denom = (v.sqrt() / bc2 ** 0.5).add_(self.eps)
            return (Linear((Term(-(eta / bc1), S["m"], denom, "div"),), decay, keep),)

        out = [Block(("m", "v", "c1", "c2"), moments)]
        if self.amsgrad:
            out.append(Envelope("vmax", "v"))
        return out + [Block(("W",), position)]

    def equations(self):
        b1, b2 = self.betas
        vhat = "v̂" if self.amsgrad else "v"
        eqs = [f"ṁ  = (1-β₁)(g - m)            β₁={b1:g}",
               f"v̇  = (1-β₂)(g² - v)           β₂={b2:g}",
               "ċ₁ = (1-β₁)(1 - c₁),  ċ₂ = (1-β₂)(1 - c₂),  c₁(0) = c₂(0) = 0"]
        if self.amsgrad:
            eqs.append("v̂  = max_{s≤τ} v(s)           (amsgrad envelope)")
        decay = " + λ·W" if self.decoupled_decay and self.weight_decay else ""
        eqs.append(f"Ẇ  = -η(τ)·[(m/c₁)/(√({vhat}/c₂) + ε){decay}]    ε={self.eps:g}"
                   + (f", λ={self.weight_decay:g}" if decay else ""))
        return eqs

    def hyperparameters(self):
        return {**super().hyperparameters(), "betas": self.betas, "eps": self.eps,
                "amsgrad": self.amsgrad}

    @classmethod
    def option_grid(cls):
        return [dict(amsgrad=a, weight_decay=wd, maximize=mx, betas=b)
                for a in (False, True) for wd in (0.0, 1e-2) for mx in (False, True)
                for b in ((0.9, 0.999), (0.8, 0.9)) if not (mx and b != (0.9, 0.999))]

    @classmethod
    def invalid_options(cls):
        return super().invalid_options() + [
            {"betas": (1.0, 0.999)}, {"betas": (0.9, -0.1)}, {"betas": 0.9},
            {"eps": 0.0}, {"eps": float("nan")}, {"amsgrad": None}]


class AdamW(Adam):
    name = "adamw"
    summary = "AdamW: Adam with decoupled weight decay (torch.optim.AdamW)"
    torch_twin = "AdamW"
    decoupled_decay = True
