"""NAdam and RAdam as flows (torch.optim.NAdam / RAdam semantics).

Both are Adam's moment filters with a different position equation; the step clock τ counts
optimizer steps (τ = k before torch's step k+1), and η(τ) is the (scheduled) lr.

NAdam. torch keeps the μ-product Π_t = μ₁⋯μ_t of the momentum schedule

    μ(t) = β₁·(1 - ½·0.96^{t·ψ})          (ψ = momentum_decay, t = torch's step count)

and steps  W ← W - lr·[(1-μ_t)/(1-Π_t)·g + μ_{t+1}/(1-Π_t·μ_{t+1})·m_t] / (√(v_t/c₂) + ε).
On the step clock the step starting at τ has t = τ+1; write M(τ) = μ(τ+1). The flow is

    ṁ  = (1-β₁)(g - m)          v̇ = (1-β₂)(g² - v)          ċ₂ = (1-β₂)(1 - c₂)
    Ṗ  = -(1 - M(τ))·P,         P(0) = 1                      (the μ-product, ``mu_product``)
    Ẇ  = -η(τ)·[ (1-M(τ))/(1 - P·M(τ))·g + M(τ+1)/(1 - P·M(τ)·M(τ+1))·m ] / (√(v/c₂) + ε)
         - η(τ)·λ·W                                           (decoupled_weight_decay only)

The partitioned Euler order is (m, v, c₂), W, P: W sees the μ-product *before* this step's
factor and applies the look-ahead P·M(τ) itself, so one unit step is torch's
(Π_{t} = Π_{t-1}·μ_t computed in torch's scalar dtype, then Π_t·μ_{t+1} in Python floats).

The start. The naive field, with the μ-product already advanced (1 - Π in the denominators
as torch writes it after its update), has 1 - P(0) = 0: its g-coefficient (1-M)/(1-P) grows
like 1/τ near τ = 0, which is not integrable, so that flow is not defined from the real start.
The Nesterov look-ahead makes the singularity disappear: with P·M(τ) (the μ-product at the
*end* of the step) the denominators start at 1 - μ₁ > 0, and at τ = 0 the only 0/0 is
v/c₂ → g² (as Adam's). The field is smooth in τ (M is), so `rates` converges at order 1.
The look-ahead M(τ+1) and P·M(τ) are the unit step of the configured optimizer, stated in
the field: along `rates` the Euler step h is of this ODE (not torch's NAdam at other
hyperparameters — its schedule counts steps, not τ).

RAdam. With ρ_∞ = 2/(1-β₂) - 1 and ρ(τ) = ρ_∞ - 2t·β₂ᵗ/(1-β₂ᵗ) at t = τ+1,

    ṁ  = (1-β₁)(g - m)     v̇ = (1-β₂)(g² - v)     ċᵢ = (1-βᵢ)(1 - cᵢ),  cᵢ(0) = 0
    Ẇ  = -η(τ)·(m/c₁)·r(τ)·√c₂/(√v + ε)          where ρ(τ) > 5
    Ẇ  = -η(τ)·(m/c₁)                             where ρ(τ) ≤ 5      (- ηλW if decoupled)
    r(τ) = √[(ρ-4)(ρ-2)ρ_∞ / ((ρ_∞-4)(ρ_∞-2)ρ)]   (the variance rectification)

ρ(0) = 1, so the flow starts as momentum gradient descent (m/c₁ → g at τ = 0, no 0/0 in the
adaptive part) and switches to rectified Adam at the single time τ* where ρ(τ*) = 5 (τ* ≈ 4.0
for β₂ = 0.999): the field jumps there (``jump_times``; adaptive solvers stop at τ*). torch's
step from τ = k is rectified exactly when ρ(k) > 5, i.e. k > τ*.

Limits (``fluxode.flows.capabilities``), along betas-fixed (fluxode's path: auxiliary rates
÷ h, the τ-schedules M(τ), ρ(τ) held in τ):

    NAdam   m → g, v → g², c₂ → 1, P → 0:
              Ẇ = -η·γ(τ)·g/(|g| + ε) - ηλW,   γ(τ) = 1 - M(τ) + M(τ+1)
            (a sign flow with gain γ ∈ (1, 1 + β₁/2·0.04ψ); ``NAdamSignLimit``)
    RAdam   m → g, v → g², c → 1:
              Ẇ = -η·g                              for ρ(τ) ≤ 5
              Ẇ = -η·r(τ)·g/(|g| + ε)               for ρ(τ) > 5       (- ηλW if decoupled)
            (``RAdamSignLimit``: gradient flow, then a rectified sign flow)

(torch's own optimizer with lr·h and β fixed counts steps, t = τ/h, so there μ_t → β₁ and
ρ_t → ρ_∞ for every τ > 0 and both limits become the plain sign flow; fluxode's path holds
the schedules on the step clock, and the limits above are the ones its runs converge to.)

Square-root path (``sqrt_point(κ)``: batch × κ, Σ → Σ/κ, one step covers κ units of τ).
Adam's rule (Malladi et al. 2022) holds for both, because it keeps every term of the step
invariant in the noise-dominated regime (√v ∝ σ ∝ 1/√κ): lr → √κ·lr, 1-βᵢ → κ(1-βᵢ),
ε → ε/√κ; a decoupled decay lr·λ is a rate per step like 1-β, so λ → √κ·λ (coupled L2
decay is part of the loss: λ unchanged). What each adds:

    NAdam   μ(t) counts steps: ψ → κψ keeps 0.96^{tψ} = 0.96^{τψ} a function of τ, so the
            mixing weights agree at equal τ up to (κ-1)(1-β₁), the order the rule neglects.
            The direct term (1-μ)/(1-Π)·g/(√v+ε) is then invariant like Adam's m term: a
            step moves W by κ·lr·a·g'/√v (√v' = √v/√κ, a = (1-μ)/(1-Π)), so per unit τ
            (1/κ steps, g' with noise σ/√κ) the drift is lr·a·∇L/√v and the variance
            (lr·a·σ)²/v, as at κ = 1.
    RAdam   r(τ) depends on β₂ and t only through x = (1-β₂)·t = (1-β₂)τ to leading order:
            ρ/ρ_∞ → 1 - x/(eˣ - 1), so r'(τ/κ) = r(τ) up to O(1/ρ); the un-rectified start
            (ρ ≤ 5) is about 5 steps at every κ (ρ(t) ≈ t for (1-β₂)t ≪ 1), each moving W by
            lr·m̂, whose noise lr·σ is invariant along the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import validation as check
from .adam import adam_sqrt_point, moment_floor, moment_rates
from .base import Block, Flow, Var
from .capabilities import SqrtPoint
from .rates import Clock, Linear, Term, Toward


def scalar_dtype() -> torch.dtype:
    """The dtype torch.optim keeps its scalar state tensors in (``_get_scalar_dtype``): float64
    when the default dtype is float64, else float32."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def momentum_schedule(beta1: float, psi: float, t: float) -> float:
    """μ(t) = β₁(1 - ½·0.96^{tψ}), as torch.optim.NAdam evaluates it (t: its step count)."""
    return beta1 * (1.0 - 0.5 * (0.96 ** (t * psi)))


@dataclass(frozen=True)
class ScalarDecay(Linear):
    """ẋ = -decay·x on a scalar kept by torch in its scalar dtype: the unit step is torch's
    ``x *= keep`` in that dtype (float32 unless the default dtype is float64)."""

    def euler_(self, x: Tensor, h: float) -> None:
        if h == 1.0 and self.keep is not None:
            x.copy_(x.to(scalar_dtype()).mul_(self.keep))
        else:
            super().euler_(x, h)


@dataclass(frozen=True)
class NesterovPosition:
    """NAdam's Ẇ = -η[(1-M)/(1-P·M)·g + M'/(1-P·M·M')·m]/denom - decay·W.

    At h = 1 the look-ahead product P·M is rounded to torch's scalar dtype (its μ-product
    tensor) and the step is torch's ``mul_`` and two ``addcdiv_``."""

    g: Tensor
    m: Tensor
    denom: Tensor
    eta: float
    mu: float
    mu_next: float
    product: float
    decay: float = 0.0
    keep: float = 1.0

    def _coefs(self, rounded: bool) -> tuple[float, float]:
        if rounded:
            p1 = float(torch.tensor(self.product, dtype=scalar_dtype()) * self.mu)
        else:
            p1 = self.product * self.mu
        return (-self.eta * (1.0 - self.mu) / (1.0 - p1),
                (-self.eta * self.mu_next) / (1.0 - p1 * self.mu_next))

    def rate(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        a, b = self._coefs(False)
        r = self.g * a / self.denom + self.m * b / self.denom
        if self.decay:
            r = r - self.decay * x
        return r if out is None else out.copy_(r)

    def euler_(self, x: Tensor, h: float) -> None:
        a, b = self._coefs(h == 1.0)
        factor = self.keep if h == 1.0 else 1.0 - h * self.decay
        if factor != 1.0:
            x.mul_(factor)
        if h != 1.0:
            a, b = h * a, h * b
        x.addcdiv_(self.g, self.denom, value=a)
        x.addcdiv_(self.m, self.denom, value=b)


class NAdam(Flow):
    name = "nadam"
    summary = ("NAdam: Adam with a scheduled Nesterov look-ahead and its μ-product "
               "(torch.optim.NAdam)")
    torch_twin = "NAdam"
    torch_names = {"m": "exp_avg", "v": "exp_avg_sq", "mu_product": "mu_product"}
    default_lr = 2e-3

    def __init__(self, lr=None, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, maximize=False,
                 schedule=None, max_grad_norm=None):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule,
                         max_grad_norm=max_grad_norm)
        self.betas = check.betas(betas)
        self.eps = check.positive("eps", eps)
        self.momentum_decay = check.at_least("momentum_decay", momentum_decay, 0.0)
        self.decoupled_decay = check.flag("decoupled_weight_decay", decoupled_weight_decay)

    def variables(self):
        return (Var("m"), Var("v"), Var("c2", "scalar", dtype="float64"),
                Var("mu_product", "scalar", init=1.0, dtype="float64"))

    def admissible(self, S):
        """v ≥ Adam's moment floor (1-β₂)/(1-β₁)·m²/c₁, with c₁ = 1 - (1-c₂)^((1-β₁)/(1-β₂)),
        the first-moment clock of the exact flow read off c₂ (NAdam keeps no c₁): a Runge–Kutta
        stage from m = v = 0 cannot hold v < 0 (or v ≪ m²) where the field is unbounded."""
        b1, b2 = self.betas
        c1 = 1 - (1 - S["c2"]) ** ((1 - b1) / (1 - b2))
        floor = moment_floor(self.betas, S["m"], c1)
        return self._raise_to(S, {"v": 0.0 if floor is None else floor})

    def M(self, tau: float) -> float:
        """M(τ) = μ(τ + 1): the momentum coefficient of the step that starts at τ."""
        return momentum_schedule(self.betas[0], self.momentum_decay, float(tau) + 1.0)

    def clock_values(self, step):
        """c₂ = 1 - β₂ᵏ and the μ-product μ₁⋯μ_k (in torch's scalar dtype) after k steps."""
        out = super().clock_values(step)
        p = torch.tensor(1.0, dtype=scalar_dtype())
        for k in range(step):
            p *= self.M(k)
        out["mu_product"] = float(p)
        return out

    def blocks(self):
        b1, b2 = self.betas

        def moments(tau, S, g):
            return (Toward(1 - b1, g), Linear((Term(1 - b2, g, g, "mul"),), decay=1 - b2, keep=b2),
                    Clock(b2, tau))

        def position(tau, S, g):
            eta = self.eta(tau)
            decay = eta * self.weight_decay if self.decoupled_decay else 0.0
            bc2 = float(S["c2"])
            if bc2 == 0:  # τ = 0 in the continuous flow: v/c₂ → g²
                denom = g.abs().add_(self.eps)
            else:
                denom = S["v"].div(bc2).sqrt().add_(self.eps)
            return (NesterovPosition(g, S["m"], denom, eta, self.M(tau), self.M(float(tau) + 1),
                                     float(S["mu_product"]), decay, 1 - decay),)

        def product(tau, S, g):
            mu = self.M(tau)
            return (ScalarDecay((), decay=1 - mu, keep=mu),)

        return [Block(("m", "v", "c2"), moments), Block(("W",), position),
                Block(("mu_product",), product)]

    def equations(self):
        b1, b2 = self.betas
        decay = " - η(τ)·λ·W" if self.decoupled_decay and self.weight_decay else ""
        return [f"ṁ  = (1-β₁)(g - m)            β₁={b1:g}",
                f"v̇  = (1-β₂)(g² - v)           β₂={b2:g}",
                "ċ₂ = (1-β₂)(1 - c₂),  c₂(0) = 0",
                f"M(τ) = β₁(1 - ½·0.96^((τ+1)ψ))    ψ={self.momentum_decay:g}",
                "Ṗ  = -(1 - M(τ))·P,  P(0) = 1   (μ-product)",
                "Ẇ  = -η(τ)·[(1-M(τ))/(1-P·M(τ))·g + M(τ+1)/(1-P·M(τ)·M(τ+1))·m]"
                f"/(√(v/c₂) + ε){decay}    ε={self.eps:g}"]

    # --- capabilities ------------------------------------------------------------------------
    def betas_fixed_limit(self):
        """Ẇ = -η·γ(τ)·g/(|g|+ε) - ηλW, γ = 1 - M(τ) + M(τ+1): m → g, v → g², c₂ → 1, P → 0."""
        self._require_constant_lr("betas-fixed limits")
        return NAdamSignLimit(lr=self.lr, beta1=self.betas[0],
                              momentum_decay=self.momentum_decay, eps=self.eps,
                              weight_decay=self.weight_decay, decoupled=self.decoupled_decay,
                              maximize=self.maximize)

    def sqrt_point(self, h):
        """lr → √h·lr, βᵢ → 1 - h(1-βᵢ), ε → ε/√h, ψ → h·ψ, λ → √h·λ (decoupled only),
        Σ → Σ/h: Adam's rule, and ψ as a rate per step (M stays a function of τ)."""
        return adam_sqrt_point(self, h, momentum_decay=self.momentum_decay)

    def hyperparameters(self):
        return {**super().hyperparameters(), "betas": self.betas, "eps": self.eps,
                "momentum_decay": self.momentum_decay,
                "decoupled_weight_decay": self.decoupled_decay}

    @classmethod
    def option_grid(cls):
        return [dict(weight_decay=wd, decoupled_weight_decay=dw, momentum_decay=md, maximize=mx,
                     betas=b)
                for wd, dw in ((0.0, False), (1e-2, False), (1e-2, True))
                for md in (4e-3, 0.5) for mx in (False, True)
                for b in ((0.9, 0.999), (0.8, 0.9)) if not (mx and b != (0.9, 0.999))]

    @classmethod
    def invalid_options(cls):
        return super().invalid_options() + [
            {"betas": (1.0, 0.999)}, {"eps": 0.0}, {"momentum_decay": -1.0},
            {"decoupled_weight_decay": "yes"}]


class RAdam(Flow):
    name = "radam"
    summary = "RAdam: Adam with variance rectification after ρ(τ) > 5 (torch.optim.RAdam)"
    torch_twin = "RAdam"
    torch_names = {"m": "exp_avg", "v": "exp_avg_sq"}
    vectors = ("m", "v")
    clocks = ("c1", "c2")

    def __init__(self, lr=None, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, *, maximize=False, schedule=None,
                 max_grad_norm=None):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule,
                         max_grad_norm=max_grad_norm)
        self.betas = check.betas(betas)
        self.eps = check.positive("eps", eps)
        self.decoupled_decay = check.flag("decoupled_weight_decay", decoupled_weight_decay)

    def admissible(self, S):
        """v ≥ Adam's moment floor (``adam.moment_floor``): no stage with v < 0 beside m ≠ 0."""
        floor = moment_floor(self.betas, S["m"], S["c1"])
        return self._raise_to(S, {"v": 0.0 if floor is None else floor})

    @property
    def rho_inf(self) -> float:
        return 2 / (1 - self.betas[1]) - 1

    def rho(self, tau: float) -> float:
        """ρ(τ) = ρ_∞ - 2t·β₂ᵗ/(1 - β₂ᵗ), t = τ + 1 (torch's expression, its step count)."""
        b2, step = self.betas[1], float(tau) + 1.0
        return self.rho_inf - 2 * step * (b2 ** step) / (1 - b2 ** step)

    def rectification(self, tau: float) -> float:
        rho_t, rho_inf = self.rho(tau), self.rho_inf
        num = (rho_t - 4) * (rho_t - 2) * rho_inf
        return (num / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5

    def switch_time(self) -> float:
        """τ* with ρ(τ*) = 5 (ρ increases from ρ(0) = 1 to ρ_∞); inf when ρ_∞ ≤ 5."""
        if self.rho_inf <= 5:
            return math.inf
        lo, hi = -1.0 + 1e-12, 1.0
        while self.rho(hi) <= 5:
            lo, hi = hi, 2 * hi + 1
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if self.rho(mid) > 5:
                hi = mid
            else:
                lo = mid
            if hi - lo <= 1e-15 * max(1.0, hi):
                break
        return hi

    def jump_times(self, T):
        t = self.switch_time()
        return [t] if 0 <= t <= T else []

    def blocks(self):
        def moments(tau, S, g):
            return moment_rates(self.betas, tau, g)

        def position(tau, S, g):
            lr = self.eta(tau)
            decay = lr * self.weight_decay if self.decoupled_decay else 0.0
            bc1, bc2 = float(S["c1"]), float(S["c2"])
            m_hat = g if bc1 == 0 else S["m"] / bc1  # τ = 0 in the continuous flow: m/c₁ → g
            if self.rho(tau) > 5.0:
                if bc2 == 0:  # only reachable with ρ_∞ > 5 at τ = 0, which ρ(0) = 1 excludes
                    raise ValueError("RAdam: rectified step before the first clock tick")
                adaptive = (bc2 ** 0.5) / S["v"].sqrt().add_(self.eps)
                u = m_hat * lr * adaptive * self.rectification(tau)
            else:
                u = m_hat * lr
            return (Linear((Term(-1.0, u),), decay, 1 - decay),)

        return [Block(("m", "v", "c1", "c2"), moments), Block(("W",), position)]

    def equations(self):
        b1, b2 = self.betas
        decay = " - η(τ)·λ·W" if self.decoupled_decay and self.weight_decay else ""
        return [f"ṁ  = (1-β₁)(g - m)            β₁={b1:g}",
                f"v̇  = (1-β₂)(g² - v)           β₂={b2:g}",
                "ċ₁ = (1-β₁)(1 - c₁),  ċ₂ = (1-β₂)(1 - c₂),  c₁(0) = c₂(0) = 0",
                f"ρ(τ) = ρ∞ - 2t·β₂ᵗ/(1-β₂ᵗ), t = τ+1, ρ∞={self.rho_inf:g}; "
                f"switch at τ*={self.switch_time():.6g}",
                "r(τ) = √[(ρ-4)(ρ-2)ρ∞/((ρ∞-4)(ρ∞-2)ρ)]",
                f"Ẇ  = -η(τ)·(m/c₁)·r(τ)·√c₂/(√v + ε){decay}   (ρ(τ) > 5)    ε={self.eps:g}",
                f"Ẇ  = -η(τ)·(m/c₁){decay}                     (ρ(τ) ≤ 5)"]

    # --- capabilities ------------------------------------------------------------------------
    def betas_fixed_limit(self):
        """Ẇ = -η·g (ρ ≤ 5), -η·r(τ)·g/(|g|+ε) (ρ > 5), - ηλW if decoupled."""
        self._require_constant_lr("betas-fixed limits")
        return RAdamSignLimit(lr=self.lr, beta2=self.betas[1], eps=self.eps,
                              weight_decay=self.weight_decay, decoupled=self.decoupled_decay,
                              maximize=self.maximize)

    def sqrt_point(self, h):
        """lr → √h·lr, βᵢ → 1 - h(1-βᵢ), ε → ε/√h, λ → √h·λ (decoupled only), Σ → Σ/h:
        Adam's rule; r(τ) is then a function of (1-β₂)τ, the same at every h."""
        return adam_sqrt_point(self, h)

    def hyperparameters(self):
        return {**super().hyperparameters(), "betas": self.betas, "eps": self.eps,
                "decoupled_weight_decay": self.decoupled_decay}

    @classmethod
    def option_grid(cls):
        return [dict(weight_decay=wd, decoupled_weight_decay=dw, maximize=mx, betas=b)
                for wd, dw in ((0.0, False), (1e-2, False), (1e-2, True))
                for mx in (False, True)
                for b in ((0.9, 0.999), (0.8, 0.9), (0.9, 0.5))
                if not (mx and b != (0.9, 0.999))]

    @classmethod
    def invalid_options(cls):
        return super().invalid_options() + [
            {"betas": (0.9, 1.0)}, {"eps": -1.0}, {"decoupled_weight_decay": 1}]


# --- betas-fixed limits --------------------------------------------------------------------------
class NAdamSignLimit(Flow):
    """Ẇ = -η·γ(τ)·g/(|g|+ε) - ηλW, γ(τ) = 1 - M(τ) + M(τ+1): NAdam along betas-fixed."""

    name = "nadam-sign-limit"
    summary = "NAdam's betas-fixed limit: a sign flow with the look-ahead gain 1 - M(τ) + M(τ+1)"

    def __init__(self, lr=2e-3, beta1=0.9, momentum_decay=4e-3, eps=1e-8, weight_decay=0.0,
                 decoupled=False, *, maximize=False):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize)
        self.decoupled_decay = check.flag("decoupled", decoupled)
        self.beta1 = check.unit_interval("beta1", beta1)
        self.momentum_decay = check.at_least("momentum_decay", momentum_decay, 0.0)
        self.eps = check.positive("eps", eps)

    def gain(self, tau: float) -> float:
        def M(s):
            return momentum_schedule(self.beta1, self.momentum_decay, float(s) + 1.0)

        return 1.0 - M(tau) + M(float(tau) + 1.0)

    def blocks(self):
        def position(tau, S, g):
            eta = self.eta(tau)
            decay = eta * self.weight_decay if self.decoupled_decay else 0.0
            return (Linear((Term(-eta * self.gain(tau), g, g.abs().add_(self.eps), "div"),),
                           decay, 1 - decay),)

        return [Block(("W",), position)]

    def equations(self):
        decay = " - η·λ·W" if self.decoupled_decay and self.weight_decay else ""
        return ["γ(τ) = 1 - M(τ) + M(τ+1),  M(τ) = β₁(1 - ½·0.96^((τ+1)ψ))",
                f"Ẇ  = -η·γ(τ)·g/(|g| + ε){decay}      ε={self.eps:g}"]

    def hyperparameters(self):
        return {**super().hyperparameters(), "beta1": self.beta1,
                "momentum_decay": self.momentum_decay, "eps": self.eps,
                "decoupled": self.decoupled_decay}


class RAdamSignLimit(Flow):
    """RAdam along betas-fixed: gradient flow until τ*, then Ẇ = -η·r(τ)·g/(|g|+ε)."""

    name = "radam-sign-limit"
    summary = "RAdam's betas-fixed limit: gradient flow, then a rectified sign flow after τ*"

    def __init__(self, lr=1e-3, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False, *,
                 maximize=False):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize)
        self.decoupled_decay = check.flag("decoupled", decoupled)
        self.beta2 = check.unit_interval("beta2", beta2)
        self.eps = check.positive("eps", eps)
        self._radam = RAdam(lr=lr, betas=(0.9, self.beta2), eps=eps)

    def jump_times(self, T):
        return self._radam.jump_times(T)

    def blocks(self):
        def position(tau, S, g):
            eta = self.eta(tau)
            decay = eta * self.weight_decay if self.decoupled_decay else 0.0
            if self._radam.rho(tau) > 5.0:
                r = self._radam.rectification(tau)
                return (Linear((Term(-eta * r, g, g.abs().add_(self.eps), "div"),),
                               decay, 1 - decay),)
            return (Linear((Term(-eta, g),), decay, 1 - decay),)

        return [Block(("W",), position)]

    def equations(self):
        decay = " - η·λ·W" if self.decoupled_decay and self.weight_decay else ""
        return [f"Ẇ  = -η·g{decay}                  τ < τ*={self._radam.switch_time():.6g}",
                f"Ẇ  = -η·r(τ)·g/(|g| + ε){decay}    τ > τ*    ε={self.eps:g}"]

    def hyperparameters(self):
        return {**super().hyperparameters(), "beta2": self.beta2, "eps": self.eps,
                "decoupled": self.decoupled_decay}
