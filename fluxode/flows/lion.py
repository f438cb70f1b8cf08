"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms") as a flow, with the
``lion-pytorch`` package's ``Lion`` as its reference (bit for bit at h = 1).

lion-pytorch's step, per parameter (stepweight decay, the update with the *old* momentum, then
the momentum):

    p ← p·(1 - lr·λ);   p ← p - lr·sign(β₁m + (1-β₁)g);   m ← β₂m + (1-β₂)g

As an ODE on the step clock τ (W first, then m: the partitioned order of the reference):

    Ẇ = -η(τ)·[sign(β₁m + (1-β₁)g) + λ'W]        λ' = λ, or λ/lr₀ (decoupled_weight_decay)
    ṁ = (1-β₂)(g - m)                            m(0) = 0

``decoupled_weight_decay=True`` is lion-pytorch's switch that divides λ by the initial lr
(the flow's ``lr``), so the per-step decay is 1 - η(τ)·λ/lr₀.

The field is discontinuous: sign(·) jumps where β₁m + (1-β₁)g crosses 0 in any coordinate.
It is a Filippov (differential-inclusion) flow; along a trajectory that crosses the switching
surfaces transversally the Euler iterates still converge at order 1, while on a sliding mode
(a coordinate whose argument keeps returning to 0, e.g. near a minimum) they chatter with
amplitude O(h·η) and the global error is O(h) only in the sup of the chattering band.
``tests/test_zoo_modern.py`` measures the order along ``rates`` on a problem whose minimum
is not reached in the window, and states it.

Start. m(0) = 0 is Lion's own start, and the field is defined there: at τ = 0,
Ẇ = -η·sign((1-β₁)g) = -η·sign(g).

Limits (``fluxode.flows.capabilities``):

    betas-fixed   lr → h·lr with β₁, β₂ fixed: per unit of step-clock time m takes
                  (1-β₂)/h steps toward g, so m → g (slaved) and the argument of the sign
                  tends to β₁g + (1-β₁)g = g:
                      Ẇ = -η·[sign(g) + λ'W]        (the sign flow, signSGD's ODE)
                  which is Lion with β₁ = 0 (W's equation then ignores m).
    sqrt          not declared: the sign map is not scale-covariant, so Malladi et al.'s
                  square-root rule (derived for adaptive rules with ε → ε/√h) has no
                  Lion form here.
"""

from __future__ import annotations

from .. import validation as check
from .base import Block, Flow
from .rates import Linear, Term


class Lion(Flow):
    name = "lion"
    summary = "Lion: the sign of the interpolated momentum (reference: lion-pytorch)"
    reference = "lion_pytorch:Lion"
    default_lr = 1e-4
    vectors = ("m",)
    decoupled_decay = True  # decay acts on W directly (stepweight decay), not through g
    torch_names = {"m": "exp_avg"}

    def __init__(self, lr=None, betas=(0.9, 0.99), weight_decay=0.0,
                 decoupled_weight_decay=False, *, maximize=False, schedule=None,
                 max_grad_norm=None):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule,
                         max_grad_norm=max_grad_norm)
        self.betas = check.betas(betas)
        self.decoupled_weight_decay = check.flag("decoupled_weight_decay",
                                                 decoupled_weight_decay)
        if self.decoupled_weight_decay and self.lr == 0 and self.weight_decay:
            raise ValueError("decoupled_weight_decay divides weight_decay by lr, which is 0")

    def decay_rate(self) -> float:
        """λ' = λ, or λ/lr₀ with decoupled_weight_decay (lion-pytorch's ``wd /= init_lr``)."""
        if self.decoupled_weight_decay and self.weight_decay:
            return self.weight_decay / self.lr
        return self.weight_decay

    def blocks(self):
        b1, b2 = self.betas
        wd = self.decay_rate()

        def position(tau, S, g):
            eta = self.eta(tau)
            # lion-pytorch: exp_avg.clone().mul_(β₁).add(g, alpha=1-β₁).sgn_()
            u = S["m"].clone().mul_(b1).add(g, alpha=1.0 - b1).sgn_()
            return (Linear((Term(-eta, u),), decay=eta * wd, keep=1.0 - eta * wd),)

        def momentum(tau, S, g):  # exp_avg.mul_(β₂).add_(g, alpha=1-β₂)
            return (Linear((Term(1.0 - b2, g),), decay=1.0 - b2, keep=b2),)

        return [Block(("W",), position), Block(("m",), momentum)]

    def equations(self):
        b1, b2 = self.betas
        lam = "λ/lr₀" if self.decoupled_weight_decay else "λ"
        return [f"Ẇ  = -η(τ)·[sign(β₁m + (1-β₁)g) + {lam}·W]     β₁={b1:g}",
                f"ṁ  = (1-β₂)(g - m),  m(0) = 0                  β₂={b2:g}"]

    def hyperparameters(self):
        return {**super().hyperparameters(), "betas": self.betas,
                "decoupled_weight_decay": self.decoupled_weight_decay}

    def torch_kwargs(self):
        kw = super().torch_kwargs()
        if kw.pop("maximize"):
            raise ValueError("lion-pytorch has no maximize; the reference cannot run it")
        return kw

    # --- capabilities ------------------------------------------------------------------------
    def betas_fixed_limit(self):
        """Ẇ = -η·[sign(g) + λ'W]: Lion with β₁ = 0 (m → g, so sign(β₁m + (1-β₁)g) → sign g)."""
        self._require_constant_lr("betas-fixed limits")
        return self.replace(betas=(0.0, self.betas[1]))

    @classmethod
    def option_grid(cls):
        return [dict(betas=b, weight_decay=wd, decoupled_weight_decay=d)
                for b in ((0.9, 0.99), (0.95, 0.98)) for wd in (0.0, 0.1)
                for d in (False, True) if not (d and wd == 0.0)]

    @classmethod
    def invalid_options(cls):
        return super().invalid_options() + [{"betas": (1.0, 0.99)}, {"betas": 0.9},
                                            {"decoupled_weight_decay": "no"}]
