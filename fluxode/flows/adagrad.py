"""AdaGrad as a flow (torch.optim.Adagrad semantics).

    ṡ = g²,                   s(0) = initial_accumulator_value
    Ẇ = -η(τ)/(1 + τ·lr_decay) · g / (√s + ε)

torch's ``lr_decay`` is the schedule factor 1/(1 + τ·lr_decay) on the step clock.
"""

from __future__ import annotations

from .. import validation as check
from .base import Block, Flow
from .rates import Linear, Term


class Adagrad(Flow):
    name = "adagrad"
    summary = "AdaGrad: accumulated squared gradients (torch.optim.Adagrad)"
    torch_twin = "Adagrad"
    torch_names = {"s": "sum"}
    vectors = ("s",)
    default_lr = 1e-2

    def __init__(self, lr=None, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10, *, maximize=False, schedule=None, max_grad_norm=None):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule,
                         max_grad_norm=max_grad_norm)
        self.lr_decay = check.at_least("lr_decay", lr_decay, 0.0)
        self.initial_accumulator_value = check.at_least(
            "initial_accumulator_value", initial_accumulator_value, 0.0)
        self.eps = check.positive("eps", eps)

    def eta(self, tau):
        tau = float(tau)
        return self.schedule(self.lr, tau) / (1 + tau * self.lr_decay)

    def init(self, W, g0=None):
        S = super().init(W, g0)
        S["s"].fill_(self.initial_accumulator_value)
        return S

    def singular_start(self):
        """s(0) = 0 (initial_accumulator_value = 0): Ẇ ≈ -η·sign(g)/√τ as τ → 0."""
        if self.initial_accumulator_value > 0:
            return None
        return ("s(0) = initial_accumulator_value = 0, so Ẇ ≈ -η·sign(g)/√τ near τ = 0 and "
                "|Ẇ| = η|g|/ε at τ = 0")

    def admissible(self, S):
        """s ≥ s(0): the accumulator only grows."""
        return self._raise_to(S, {"s": self.initial_accumulator_value})

    def blocks(self):
        def accumulator(tau, S, g):
            return (Linear((Term(1, g, g, "mul"),)),)

        def position(tau, S, g):
            std = S["s"].sqrt().add_(self.eps)
            return (Linear((Term(-self.eta(tau), g, std, "div"),)),)

        return [Block(("s",), accumulator), Block(("W",), position)]

    def equations(self):
        return [f"ṡ  = g²                       s(0)={self.initial_accumulator_value:g}",
                f"Ẇ  = -η(τ)/(1 + τ·{self.lr_decay:g}) · g/(√s + ε)    ε={self.eps:g}"]

    def hyperparameters(self):
        return {**super().hyperparameters(), "lr_decay": self.lr_decay, "eps": self.eps,
                "initial_accumulator_value": self.initial_accumulator_value}

    @classmethod
    def option_grid(cls):
        return [dict(lr_decay=ld, weight_decay=wd, initial_accumulator_value=a, maximize=mx)
                for ld in (0.0, 1e-3) for wd in (0.0, 1e-2) for a in (0.0, 0.1)
                for mx in (False, True) if not (a and mx)]

    @classmethod
    def invalid_options(cls):
        return super().invalid_options() + [
            {"lr_decay": -1.0}, {"initial_accumulator_value": -0.5}, {"eps": 0.0},
            {"eps": float("inf")}]
