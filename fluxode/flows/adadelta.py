"""Adadelta as a flow (torch.optim.Adadelta semantics).

    v̇  = (1-ρ)(g² - v)                       (square_avg)
    d  = √(a + ε)/√(v + ε) · g                (the unit-consistent step)
    ȧ  = (1-ρ)(d² - a)                       (acc_delta)
    Ẇ  = -η(τ)·d

torch's step: v first, then d from the new v and the old a, W ← W - lr·d, and a from the same
d. The partitioned Euler order is v, W, a (a's and W's fields both read d at the new v and
the old a), so one unit step is torch's, operation for operation. The field is smooth and
finite from torch's start v = a = 0 (d = g at τ = 0: ε regularizes both roots).

The start is a family of solutions. With ε = 0 the ratio q = a/v is conserved exactly
(q̇ = ȧ/v - a·v̇/v² = 0), and d = √q·g: Adadelta is gradient descent at the rate η√q with q
fixed by the start. The flow from v = a = 0 reaches q ≈ 1 within τ ~ ε/((1-ρ)g²); a discrete
run with step h sits on q ≈ ε/((1-ρ)h·g²) after its first step. So the discrete runs do
converge to the flow along ``rates`` (order 1, measured), but only for
h ≪ ε/((1-ρ)g²): at torch's ε = 1e-6 and |g| ~ 1 that is h ≪ 1e-5, and at practical h the
sweep sees no convergence (``experiments/zoo_table.py``: measured order ≈ 0 on quadratic).

lr is therefore not a length in W's units but a multiplier of a step whose size the flow sets
(``lr_is_step_length = False``): from the start the effective rate is lr·√q with q small, and
torch's default lr = 1 is the natural scale (a "small" lr such as 0.05 barely moves W in
hundreds of steps, as torch's Adadelta does).

Capabilities (``fluxode.flows.capabilities``):

    betas-fixed limit   v → g², and a → d² with d² = (a + ε)g²/(g² + ε), whose fixed point is
                        a = g², d = g:  Ẇ = -η·g  (gradient flow at rate lr; ``SGD``).
                        The slaving of a is slow: along the path a relaxes at rate
                        (1-ρ)ε/((g² + ε)h), so the limit shows only for h ≪ (1-ρ)ε·T/(g²+ε).
    sqrt path at κ      lr → κ·lr, ρ → 1 - κ(1-ρ), ε unchanged, Σ → Σ/κ (batch × κ; one step
                        covers κ units of τ). Not Adam's rule: the step is d = √q·g with
                        q = (a+ε)/(v+ε), and from torch's start v = a = 0 the flow settles
                        (within τ ~ 1/(1-ρ)) on q ≈ ε/((1-ρ)σ²) (σ²: the gradient's mean
                        square, noise-dominated), which then moves only at O(1-ρ). The rule
                        keeps (1-ρ)σ² invariant, so a fixed ε keeps q (ε/κ, Adam's choice,
                        would divide it by κ). The step is then SGD's on a fixed
                        preconditioner, and SGD's rule is linear: per unit τ (1/κ steps, noise
                        σ/√κ) the drift lr'·√q·∇L/κ and the variance lr'²·q·σ²/κ² are the
                        κ = 1 values only with lr' = κ·lr. Coupled decay λ belongs to the
                        loss: unchanged. (Measured: Monte Carlo moments at κ = 1/4 and 4 in
                        tests/test_zoo_torch.py.)
"""

from __future__ import annotations

from .. import validation as check
from .base import Block, Flow
from .capabilities import SqrtPoint
from .rates import Linear, Term
from .sgd import SGD


class Adadelta(Flow):
    name = "adadelta"
    summary = "Adadelta: ratio of running RMS of updates and gradients (torch.optim.Adadelta)"
    torch_twin = "Adadelta"
    torch_names = {"v": "square_avg", "a": "acc_delta"}
    vectors = ("v", "a")
    default_lr = 1.0
    lr_is_step_length = False  # lr multiplies √(a+ε)/√(v+ε)·g, whose scale the flow sets

    def __init__(self, lr=None, rho=0.9, eps=1e-6, weight_decay=0.0, *, maximize=False,
                 schedule=None, max_grad_norm=None):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule,
                         max_grad_norm=max_grad_norm)
        self.rho = check.unit_interval("rho", rho)
        self.eps = check.positive("eps", eps)

    def admissible(self, S):
        """v, a ≥ 0: running means of squares."""
        return self._raise_to(S, {"v": 0.0, "a": 0.0})

    def _delta(self, S, g):
        std = S["v"].add(self.eps).sqrt_()
        delta = S["a"].add(self.eps).sqrt_()
        return delta.div_(std).mul_(g)

    def blocks(self):
        r = self.rho

        def square_avg(tau, S, g):
            return (Linear((Term(1 - r, g, g, "mul"),), decay=1 - r, keep=r),)

        def position(tau, S, g):
            return (Linear((Term(-self.eta(tau), self._delta(S, g)),)),)

        def acc_delta(tau, S, g):
            d = self._delta(S, g)
            return (Linear((Term(1 - r, d, d, "mul"),), decay=1 - r, keep=r),)

        return [Block(("v",), square_avg), Block(("W",), position), Block(("a",), acc_delta)]

    def equations(self):
        return [f"v̇  = (1-ρ)(g² - v)             ρ={self.rho:g}",
                f"d  = √(a + ε)/√(v + ε)·g        ε={self.eps:g}",
                "ȧ  = (1-ρ)(d² - a)",
                "Ẇ  = -η(τ)·d"]

    # --- capabilities ------------------------------------------------------------------------
    def betas_fixed_limit(self):
        """Ẇ = -η·g: v → g², a → g², d → g (gradient flow at rate lr, coupled decay in g)."""
        self._require_constant_lr("betas-fixed limits")
        return SGD(lr=self.lr, weight_decay=self.weight_decay, maximize=self.maximize)

    def sqrt_point(self, h):
        """lr → h·lr, ρ → 1 - h(1-ρ), ε fixed, Σ → Σ/h: the start sets the preconditioner
        q = a/v ≈ ε/((1-ρ)σ²), invariant along the rule, so lr follows SGD's linear rule."""
        h = self._path_step(h)[0]
        return SqrtPoint(self.replace(lr=self.lr * h, rho=1 - h * (1 - self.rho)), 1.0 / h)

    def hyperparameters(self):
        return {**super().hyperparameters(), "rho": self.rho, "eps": self.eps}

    @classmethod
    def option_grid(cls):
        return [dict(rho=r, weight_decay=wd, maximize=mx)
                for r in (0.9, 0.5) for wd in (0.0, 1e-2) for mx in (False, True)
                if not (mx and r != 0.9)]

    @classmethod
    def invalid_options(cls):
        return super().invalid_options() + [{"rho": 1.0}, {"rho": -0.1}, {"eps": 0.0}]
