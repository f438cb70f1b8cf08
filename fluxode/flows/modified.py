"""Flows derived from others: first-order modified equations and betas-fixed limits.

Modified equations (backward error analysis). With lr-step s = h·lr (h: the step along the
path, lr: torch's lr) and lr-time t = lr·τ, heavy ball  b ← μb + g,  W ← W - s·b  follows

    dW/dt = -(1/(1-μ))·∇L̃,     L̃ = L + s(1+μ)/(4(1-μ)²)·‖∇L‖²,     ∇L̃ = g + s(1+μ)/(2(1-μ)²)·Hg

to O(s²) per unit time (μ = 0: gradient descent and L + (s/4)‖∇L‖², Barrett & Dherin 2021;
μ > 0: Kovachki & Stuart 2021, Ghosh et al. 2023). Derivation: insert W_k = W(ks) into
W_{k+1} - W_k = μ(W_k - W_{k-1}) - s·g(W_k) and expand, (1-μ)Ẇ + (s/2)(1+μ)Ẅ = -g + O(s²).

The first step transient. Heavy ball is a two-step recurrence: its iterates are the modified
flow's W(ks) plus a parasitic mode that decays like μᵏ. torch's first step (buf = g) puts
O(s) into that mode, and matching W₀ and W₁ = W₀ - s·g₀ to W(0) + p₀ and W(s) + μp₀ gives
p₀ = -sμ/(1-μ)²·g₀. So the modified flow is started from the shifted point

    W(0) = W₀ + s·μ/(1-μ)²·g₀          (``init``; no shift when μ = 0 or shift_start=False)

and the discrete iterates then follow it to O(s²) once μᵏ is negligible (at τ = T: μ^{T/h}).
The maximum error over [0, T] still sees the O(s) parasitic mode in the first few steps.

Betas-fixed limit of Adam/RMSprop (``Adam.betas_fixed_limit``, ``RMSprop.betas_fixed_limit``,
used by ``fluxode.paths``): the moments are slaved, m → g, v → g²,

    Ẇ = -η(τ)·[g/(|g| + ε) + λ·W]        (λ: decoupled decay only; a sign flow as ε → 0)
"""

from __future__ import annotations

from .. import validation as check
from .base import Block, Flow
from .rates import Linear, Term


class ModifiedSGD(Flow):
    """Modified flow of heavy ball / gradient descent at path step h (needs the Hessian)."""

    name = "modified-sgd"
    summary = "first-order modified flow of GD / heavy ball: -(1/(1-μ))∇[L + c·‖∇L‖²]"
    needs_hessian = True
    default_lr = 1e-2

    def __init__(self, lr=None, momentum=0.0, h=1.0, shift_start=True, *, schedule=None):
        super().__init__(lr, schedule=schedule)
        self.momentum = check.unit_interval("momentum", momentum)
        self.h = check.positive("h", h)
        self.shift_start = check.flag("shift_start", shift_start)

    @property
    def step(self) -> float:
        """s = h·lr, the step in lr-time."""
        return self.h * self.lr

    @property
    def coefficient(self) -> float:
        """c in L̃ = L + c‖∇L‖²: s(1+μ)/(4(1-μ)²)."""
        mu = self.momentum
        return self.step * (1 + mu) / (4 * (1 - mu) ** 2)

    def effective_gradient(self, W, g, H=None):
        if H is None:
            raise ValueError("the modified flow needs the Hessian H (pass a problem with one)")
        n = W.numel()
        Hg = (H.reshape(n, n) @ g.reshape(n)).reshape(W.shape)
        return g.add(Hg, alpha=2 * self.coefficient)

    def init(self, W, g0=None):
        S = super().init(W, g0)
        mu = self.momentum
        if self.shift_start and mu and g0 is not None:
            S["W"] = W.add(g0, alpha=self.step * mu / (1 - mu) ** 2)
        return S

    def blocks(self):
        def position(tau, S, g):
            return (Linear((Term(-self.eta(tau) / (1 - self.momentum), g),)),)

        return [Block(("W",), position)]

    def equations(self):
        mu = self.momentum
        return [f"Ẇ  = -η(τ)/(1-μ)·[g + 2c·Hg]      μ={mu:g}, c = s(1+μ)/(4(1-μ)²) = "
                f"{self.coefficient:.4g}, s = h·lr = {self.step:g}",
                "W(0) = W₀ + sμ/(1-μ)²·g₀" if (mu and self.shift_start) else "W(0) = W₀"]

    def hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum, "h": self.h,
                "shift_start": self.shift_start}


class SignFlow(Flow):
    """Ẇ = -η(τ)[g/(|g| + ε) + λW]: Adam's and RMSprop's limit along betas-fixed."""

    name = "sign-flow"
    summary = "sign-like flow Ẇ = -η·g/(|g|+ε) (Adam/RMSprop with β fixed, lr → 0)"
    default_lr = 1e-3

    def __init__(self, lr=None, eps=1e-8, weight_decay=0.0, decoupled=False, *,
                 maximize=False, schedule=None):
        self.decoupled_decay = check.flag("decoupled", decoupled)
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule)
        self.eps = check.positive("eps", eps)

    def blocks(self):
        def position(tau, S, g):
            eta = self.eta(tau)
            decay = eta * self.weight_decay if self.decoupled_decay else 0.0
            return (Linear((Term(-eta, g, g.abs().add_(self.eps), "div"),), decay, 1 - decay),)

        return [Block(("W",), position)]

    def equations(self):
        decay = " + λ·W" if self.decoupled_decay and self.weight_decay else ""
        return [f"Ẇ  = -η(τ)·[g/(|g| + ε){decay}]      ε={self.eps:g}"]

    def hyperparameters(self):
        return {**super().hyperparameters(), "eps": self.eps, "decoupled": self.decoupled_decay}


__all__ = ["ModifiedSGD", "SignFlow"]
