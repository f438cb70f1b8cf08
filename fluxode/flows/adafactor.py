"""Adafactor (Shazeer & Stern 2018) as a flow, torch.optim.Adafactor semantics (bit for bit at h = 1).

torch's single-tensor step k (k = 1, 2, …), for W with ≥ 2 dimensions (factored along the
last two; r like W with its last dimension 1, c like W with its second-to-last 1):

    ρ_k = min(lr, 1/√k)            α_k = max(ε₂, RMS(W))·ρ_k          1-β₂,k = k^c   (c ≤ 0)
    W ← W·(1 - lr·λ)
    r ← lerp(r, mean_last(g²), k^c)      c_ ← lerp(c_, mean_2nd-last(g²), k^c)
    v̂ = r c_ / max(mean(r), ε₁)          (below 2 dimensions: v ← lerp(v, g², k^c), v̂ = v)
    u = g / √max(v̂, ε₁²)                W ← W - α_k·u / max(1, RMS(u)/d)

As an ODE on the step clock τ (τ = k - 1 at the start of step k), with the same partitioned
order (decay, then the moments, then W with the new moments, α from W before the decay):

    ṙ  = (τ+1)^c·(mean_last(g²) - r)        ċ_ = (τ+1)^c·(mean_2nd-last(g²) - c_)
    v̇  = (τ+1)^c·(g² - v)                   (below 2-D)
    Ẇ  = -ρ(τ)·max(ε₂, RMS(W))·u/max(1, RMS(u)/d) - η(τ)·λ·W
    ρ(τ) = min(η(τ), (τ+1)^{-1/2})

Start. torch's moments start at 0 and its first step has weight 1^c = 1, so it *replaces*
them by their targets: any start gives the same discrete map. The flow starts at the
consistent value r(0) = mean_last(g₀²), c_(0) = mean_2nd-last(g₀²), v(0) = g₀² (the first
step then writes the same values, bit for bit: a lerp with weight 1 returns its end). From
r = 0 instead, v̂ = 0 would make u = g/ε₁ and the field would jump at τ = 0⁺.

Smoothness. The field is Lipschitz but not smooth: min (ρ's kink at τ = 1/η² - 1), the RMS
clipping max(1, ·) and the ε clamps are kinks. Euler converges at order 1 on such fields.

Limits:

    betas-fixed   lr → h·lr (no β to hold fixed: the decay 1-β₂ = k^c counts *steps*).
                  At step-clock time τ the run has made k = τ/h steps, so the moments move at
                  rate k^c/h = τ^c·h^{-1-c} per unit τ, which → ∞ for -1 < c ≤ 0: they are
                  slaved to their targets. And ρ_k = min(h·lr, √(h/τ)) = h·lr for small h.
                  The limit (per unit τ, W moving h·η per step) is Adafactor's *slaved* flow
                      Ẇ = -η·[max(ε₂, RMS(W))·u(g)/max(1, RMS(u(g))/d) + λW],
                      u(g) = g/√max(v̂(g), ε₁²),  v̂(g) = factored(g²)
                  (``AdafactorSlaved``). For c ≤ -1 the weights Σ k^c do not diverge and the
                  moments keep the first gradients (c < -1: they freeze at v̂(g₀)); refused.
    sqrt          not declared (the relative step ρ and the RMS(W) scale are not Malladi's
                  adaptive form).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import validation as check
from .base import Block, Flow, Var
from .rates import Linear, Term, Toward


def _factored(shape) -> bool:
    return len(shape) > 1


def _row_shape(shape):
    return (*shape[:-1], 1) if _factored(shape) else ()


def _col_shape(shape):
    return (*shape[:-2], 1, shape[-1]) if _factored(shape) else ()


def _var_shape(shape):
    return () if _factored(shape) else tuple(shape)


def _row_mean(g: Tensor) -> Tensor:  # torch: norm(g, dim=-1, keepdim=True).square_().div_(n)
    return torch.norm(g, dim=-1, keepdim=True).square_().div_(g.size(-1))


def _col_mean(g: Tensor) -> Tensor:
    return torch.norm(g, dim=-2, keepdim=True).square_().div_(g.size(-2))


class Adafactor(Flow):
    name = "adafactor"
    summary = "Adafactor: factored second moment, relative step, RMS clipping (torch.optim.Adafactor)"
    torch_twin = "Adafactor"
    tensorwise = True  # RMS(W), RMS(u) and the factored means are whole-tensor quantities
    decoupled_decay = True

    def __init__(self, lr=None, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0,
                 *, maximize=False, schedule=None, max_grad_norm=None):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule,
                         max_grad_norm=max_grad_norm)
        self.beta2_decay = check._number("beta2_decay", beta2_decay)
        if self.beta2_decay > 0:
            raise ValueError(f"beta2_decay must be in (-inf, 0], got {beta2_decay!r}")
        if not isinstance(eps, (tuple, list)) or len(eps) != 2:
            raise ValueError(f"eps must be a pair (eps1 or None, eps2), got {eps!r}")
        eps1 = None if eps[0] is None else check.at_least("eps[0]", eps[0], 0.0)
        self.eps = (eps1, check.at_least("eps[1]", eps[1], 0.0))
        self.d = check.at_least("d", d, 1.0)

    def variables(self):
        def init(shape_rule, target):
            def f(W, g0):
                if g0 is None:  # no gradient yet: zeros (the first step replaces them anyway)
                    return torch.zeros(shape_rule(W.shape), dtype=W.dtype, device=W.device)
                if _factored(W.shape) == (shape_rule is _var_shape):
                    return torch.zeros((), dtype=W.dtype, device=W.device)
                return target(g0)
            return f

        return (Var("row_var", _row_shape, init(_row_shape, _row_mean)),
                Var("col_var", _col_shape, init(_col_shape, _col_mean)),
                Var("variance", _var_shape, init(_var_shape, lambda g: g * g)))

    def eps1(self, W: Tensor) -> float:
        return torch.finfo(W.dtype).eps if self.eps[0] is None else self.eps[0]

    def admissible(self, S):
        return self._raise_to(S, {"row_var": 0.0, "col_var": 0.0, "variance": 0.0})

    def blocks(self):
        c = self.beta2_decay

        def moments(tau, S, g):
            w = (float(tau) + 1.0) ** c  # torch: step_float ** beta2_decay
            if _factored(g.shape):
                return Toward(w, _row_mean(g)), Toward(w, _col_mean(g)), Linear(())
            return Linear(()), Linear(()), Toward(w, g * g)

        def position(tau, S, g):
            W = S["W"]
            k = float(tau) + 1.0
            eta = self.eta(tau)
            rho = min(eta, 1 / (k ** 0.5))
            alpha = max(self.eps[1], W.norm(2).item() / (W.numel() ** 0.5)) * rho
            eps1 = self.eps1(W)
            if _factored(g.shape):
                r = S["row_var"]
                var = r @ S["col_var"]
                var.div_(r.mean(dim=-2, keepdim=True).clamp_(min=eps1))
            else:
                var = S["variance"].clone()
            update = var.clamp_(min=eps1 * eps1).rsqrt_()
            update.mul_(g)
            denom = max(1.0, update.norm(2).item() / ((update.numel() ** 0.5) * self.d))
            decay = eta * self.weight_decay
            return (Linear((Term(-alpha / denom, update),), decay=decay, keep=1 - decay),)

        return [Block(("row_var", "col_var", "variance"), moments), Block(("W",), position)]

    def equations(self):
        e1 = "eps(dtype)" if self.eps[0] is None else f"{self.eps[0]:g}"
        return [f"ṙ  = (τ+1)^c·(mean_last(g²) - r),  ċ = (τ+1)^c·(mean_2nd-last(g²) - c)"
                f"     c={self.beta2_decay:g}  (r, c: row/col factors of W ≥ 2-D)",
                "v̇  = (τ+1)^c·(g² - v)   (W below 2-D);  r, c, v start at their targets for g₀",
                f"v̂  = r cᵀ/max(mean(r), ε₁) (or v),  u = g/√max(v̂, ε₁²)      ε₁={e1}",
                f"Ẇ  = -min(η, (τ+1)^-½)·max(ε₂, RMS(W))·u/max(1, RMS(u)/d) - η·λ·W"
                f"     ε₂={self.eps[1]:g}, d={self.d:g}"]

    def hyperparameters(self):
        return {**super().hyperparameters(), "beta2_decay": self.beta2_decay, "eps": self.eps,
                "d": self.d}

    # --- capabilities ------------------------------------------------------------------------
    def betas_fixed_limit(self):
        """The slaved flow (moments at their targets, ρ = η): ``AdafactorSlaved``."""
        self._require_constant_lr("betas-fixed limits")
        if not -1.0 < self.beta2_decay <= 0.0:
            raise ValueError("Adafactor's betas-fixed limit slaves the moments only for "
                             "-1 < beta2_decay <= 0 (the weights Σ k^c must diverge); "
                             f"got beta2_decay={self.beta2_decay:g}")
        return AdafactorSlaved(lr=self.lr, eps=self.eps, d=self.d,
                               weight_decay=self.weight_decay, maximize=self.maximize)

    @classmethod
    def option_grid(cls):
        return [dict(beta2_decay=b, eps=e, d=d, weight_decay=wd, maximize=mx)
                for b in (-0.8, -0.5) for e in ((None, 1e-3), (1e-30, 1e-2)) for d in (1.0, 2.0)
                for wd in (0.0, 0.1) for mx in (False, True)
                if (b, e, d) == (-0.8, (None, 1e-3), 1.0) or (wd == 0.0 and not mx)]

    @classmethod
    def invalid_options(cls):
        return super().invalid_options() + [{"beta2_decay": 0.1}, {"eps": (None, -1.0)},
                                            {"eps": (-1.0, 1e-3)}, {"eps": 1e-3}, {"d": 0.5}]


class AdafactorSlaved(Flow):
    """Adafactor's betas-fixed limit: the moments slaved to their targets and ρ = η.

        v̂(g) = mean_last(g²)·mean_2nd-last(g²)ᵀ / max(mean(g²), ε₁)   (≥ 2-D; g² below)
        u = g/√max(v̂(g), ε₁²),   Ẇ = -η(τ)·[max(ε₂, RMS(W))·u/max(1, RMS(u)/d) + λW]
    """

    name = "adafactor-slaved"
    summary = "Adafactor along betas-fixed: moments slaved to g², relative step η"
    default_lr = 1e-2
    tensorwise = True
    decoupled_decay = True

    def __init__(self, lr=None, eps=(None, 1e-3), d=1.0, weight_decay=0.0, *, maximize=False,
                 schedule=None):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule)
        self.eps, self.d = tuple(eps), check.at_least("d", d, 1.0)

    def blocks(self):
        def position(tau, S, g):
            W = S["W"]
            eta = self.eta(tau)
            alpha = max(self.eps[1], W.norm(2).item() / math.sqrt(W.numel())) * eta
            eps1 = torch.finfo(W.dtype).eps if self.eps[0] is None else self.eps[0]
            if _factored(g.shape):
                r = _row_mean(g)
                var = (r @ _col_mean(g)).div_(r.mean(dim=-2, keepdim=True).clamp_(min=eps1))
            else:
                var = g * g
            update = var.clamp_(min=eps1 * eps1).rsqrt_().mul_(g)
            denom = max(1.0, update.norm(2).item() / (math.sqrt(update.numel()) * self.d))
            decay = eta * self.weight_decay
            return (Linear((Term(-alpha / denom, update),), decay=decay, keep=1 - decay),)

        return [Block(("W",), position)]

    def equations(self):
        return ["v̂  = factored(g²),  u = g/√max(v̂, ε₁²)",
                "Ẇ  = -η(τ)·[max(ε₂, RMS(W))·u/max(1, RMS(u)/d) + λW]"]

    def hyperparameters(self):
        return {**super().hyperparameters(), "eps": self.eps, "d": self.d}
