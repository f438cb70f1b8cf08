"""Rprop as a flow (torch.optim.Rprop semantics): a sign flow with adaptive per-entry speeds.

torch's step: F = η₊ where g·p > 0, η₋ where g·p < 0, 1 where g·p = 0 (p: the previous,
masked gradient); s ← clamp(F·s, s_min, s_max); ĝ = g with the entries where F = η₋ zeroed;
W ← W - s·sign(ĝ); p ← ĝ. The flow whose unit Euler step is that update:

    ṡ  = (F(g·p) - 1)·s,  projected onto [s_min, s_max]      s(0) = lr   (step_size)
    ṗ  = ĝ - p                                                p(0) = 0    (prev)
    Ẇ  = -s ⊙ sign(ĝ)                                         ĝ = g·1{g·p ≥ 0}

The continuous object. The field is discontinuous (a Filippov system): F, ĝ and sign(ĝ)
jump where a gradient entry or its product with p changes sign. Its solutions are those of a
sign flow whose speeds grow like e^{(η₊-1)τ} (up to s_max) while an entry's gradient keeps
its sign; when g_i changes sign against p_i the entry stops (ĝ_i = 0), its speed decays like
e^{(η₋-1)τ} towards s_min and p_i relaxes to 0 — the entry sits where its gradient changed
sign (the continuous counterpart of Rprop's shrinking oscillation about a minimum) until
g_i turns back. torch's start p = 0 gives F = 1 and ĝ = g: the flow is defined from τ = 0.
Nothing is smooth here, so no order is assumed: along ``rates`` (Euler step h of this
system) the error is measured (``experiments/zoo_table.py``; about O(h) away from switching
times, worse where entries stop).

Limits. Along betas-fixed (torch's Rprop with lr·h; etas and step_sizes fixed, as they are
per step) the step-h run is the Euler step h of the path's flow with s counted per unit of
τ (s = torch's step_size/h, clamped to [s_min/h, s_max/h]; ``StepSize.divided``). lr only
sets s(0): while signs agree s grows by η₊ per *step*, so torch's step length forgets its
start h·lr within log(1/h)/log η₊ steps and then lives in [s_min, s_max] whatever h is —
W's speed is that length per step, ~1/h per unit τ. As h → 0 the runs cover any fixed
distance in τ = O(h·log(1/h)) (measured, lr 0.01 on ``quadratic``: half the distance to
the minimizer is crossed at τ = 0.625, 0.344, 0.184 for h = 1/64, 1/128, 1/256, i.e. after
40, 44, 47 steps; tests/test_zoo_torch.py), so the whole trajectory collapses
onto τ = 0⁺: no flow is its limit, and ``betas_fixed_limit`` refuses with that reason.
There is no square-root path for a sign method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import schedules
from .. import validation as check
from .base import Block, Flow, Var
from .rates import Exact, Linear, Term, Toward


@dataclass(frozen=True)
class StepSize:
    """ṡ = (F - 1)·s projected onto [lo, hi]; the unit step is torch's
    ``s.mul_(F).clamp_(lo, hi)``."""

    factor: Tensor
    lo: float
    hi: float
    per: float = 1.0  # torch's step on the clock (betas-fixed: h; s is then torch's s/h)

    def rate(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        r = (self.factor - 1).mul_(x)
        if self.per != 1.0:
            r.div_(self.per)
        r = torch.where(((x >= self.hi) & (r > 0)) | ((x <= self.lo) & (r < 0)),
                        torch.zeros_like(r), r)
        return r if out is None else out.copy_(r)

    def euler_(self, x: Tensor, h: float) -> None:
        if h == self.per:
            x.mul_(self.factor).clamp_(self.lo, self.hi)
        else:
            x.add_((self.factor - 1).mul_(x), alpha=h / self.per).clamp_(self.lo, self.hi)

    def divided(self, h: float) -> StepSize:
        """Along betas-fixed: F per step of size h, bounds s_min/h, s_max/h (torch's per-step
        lengths, counted per unit of τ)."""
        return StepSize(self.factor, self.lo / h, self.hi / h, self.per * h)


class Rprop(Flow):
    name = "rprop"
    summary = "Rprop: a sign flow with per-entry speeds adapted by gradient sign agreement " \
              "(torch.optim.Rprop)"
    torch_twin = "Rprop"
    torch_names = {"s": "step_size", "p": "prev"}
    default_lr = 1e-2

    def __init__(self, lr=None, etas=(0.5, 1.2), step_sizes=(1e-6, 50), *, maximize=False,
                 schedule=None, max_grad_norm=None):
        super().__init__(lr, maximize=maximize, schedule=schedule, max_grad_norm=max_grad_norm)
        if not isinstance(self.schedule, schedules.Constant):
            raise ValueError("Rprop's lr is only its initial step size; a schedule has no "
                             "effect (torch ignores lr after the first step)")
        etas = tuple(etas) if isinstance(etas, (tuple, list)) else etas
        if not (isinstance(etas, tuple) and len(etas) == 2):
            raise ValueError(f"etas must be a pair (etaminus, etaplus), got {etas!r}")
        em, ep = check.positive("etas[0]", etas[0]), check.positive("etas[1]", etas[1])
        if not 0.0 < em < 1.0 < ep:
            raise ValueError(f"etas must satisfy 0 < etas[0] < 1 < etas[1] (etaminus, etaplus), "
                             f"got {etas!r}")
        self.etas = (em, ep)
        sizes = tuple(step_sizes) if isinstance(step_sizes, (tuple, list)) else step_sizes
        if not (isinstance(sizes, tuple) and len(sizes) == 2):
            raise ValueError(f"step_sizes must be a pair (min, max), got {step_sizes!r}")
        lo = check.at_least("step_sizes[0]", sizes[0], 0.0)   # the minimal step size
        hi = check.positive("step_sizes[1]", sizes[1])         # the maximal step size
        if lo > hi:
            raise ValueError(f"step_sizes must have min ≤ max, got {step_sizes!r}")
        self.step_sizes = (lo, hi)

    def variables(self):
        lr = self.lr
        return (Var("s", init=lambda W, g0: torch.full_like(W, lr)), Var("p"))

    def admissible(self, S):
        """s ∈ [s_min, s_max]."""
        lo, hi = self.step_sizes
        if bool((S["s"] < lo).any()) or bool((S["s"] > hi).any()):
            S = dict(S)
            S["s"] = S["s"].clamp(lo, hi)
        return S

    def _factor(self, g: Tensor, p: Tensor) -> Tensor:
        em, ep = self.etas
        sign = g.mul(p).sign()
        sign[sign.gt(0)] = ep
        sign[sign.lt(0)] = em
        sign[sign.eq(0)] = 1
        return sign

    def _masked(self, g: Tensor, factor: Tensor) -> Tensor:
        g = g.clone(memory_format=torch.preserve_format)
        g[factor.eq(self.etas[0])] = 0
        return g

    def blocks(self):
        lo, hi = self.step_sizes

        def step_size(tau, S, g):
            return (StepSize(self._factor(g, S["p"]), lo, hi),)

        def position(tau, S, g):
            gh = self._masked(g, self._factor(g, S["p"]))
            return (Linear((Term(-1, gh.sign(), S["s"], "mul"),)),)

        def prev(tau, S, g):
            gh = self._masked(g, self._factor(g, S["p"]))
            return (Exact(Toward(1.0, gh), gh),)

        return [Block(("s",), step_size), Block(("W",), position), Block(("p",), prev)]

    def equations(self):
        em, ep = self.etas
        lo, hi = self.step_sizes
        return [f"F  = η₊ (g·p > 0), η₋ (g·p < 0), 1 (g·p = 0)     η₋={em:g}, η₊={ep:g}",
                f"ṡ  = (F - 1)·s  on [{lo:g}, {hi:g}],  s(0) = lr",
                "ĝ  = g·1{g·p ≥ 0},   ṗ = ĝ - p,  p(0) = 0",
                "Ẇ  = -s ⊙ sign(ĝ)"]

    def betas_fixed_limit(self):
        raise ValueError(
            f"flow {self.name!r} declares no betas-fixed limit: along betas-fixed (lr → h·lr, "
            "etas and step_sizes fixed per step) the step length forgets lr within "
            "log(1/h)/log(etas[1]) steps and stays in [step_sizes[0], step_sizes[1]] per "
            "step, so W moves ~1/h per unit time and the runs collapse onto τ = 0 as h → 0: "
            "no flow is the limit (use path 'rates', or Rprop at h = 1)")

    def hyperparameters(self):
        hp = super().hyperparameters()
        hp.pop("weight_decay")
        return {**hp, "etas": self.etas, "step_sizes": self.step_sizes}

    @classmethod
    def option_grid(cls):
        return [dict(etas=e, step_sizes=s, maximize=mx)
                for e in ((0.5, 1.2), (0.3, 1.5)) for s in ((1e-6, 50), (1e-3, 0.05))
                for mx in (False, True) if not (mx and e != (0.5, 1.2))]

    @classmethod
    def invalid_options(cls):
        return [{"lr": -1.0}, {"lr": float("nan")}, {"maximize": "yes"},
                {"max_grad_norm": 0.0}, {"schedule": "bogus"}, {"etas": (1.5, 1.2)},
                {"etas": (0.5, 0.9)}, {"etas": 0.5}, {"step_sizes": (1.0, 0.1)},
                {"step_sizes": (-1.0, 1.0)}, {"step_sizes": (0.0, 0.0)},
                {"etas": (0.0, 1.2)}]
