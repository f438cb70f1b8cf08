"""SGD, heavy-ball momentum and Nesterov momentum as flows (torch.optim.SGD semantics).

    plain:     Ẇ = -η(τ)·g
    momentum:  ḃ = (1-d)·g - (1-μ)·b,   Ẇ = -η(τ)·b              (heavy ball)
    nesterov:  ḃ = g - (1-μ)·b,         Ẇ = -η(τ)·(g + μ·b)

torch sets ``buf = g`` on the first step. That is the same equation started from the
consistent initial condition b(0) = d·g₀/μ, since then μ·b(0) + (1-d)·g₀ = g₀.
"""

from __future__ import annotations

from .. import validation as check
from .base import Block, Flow
from .rates import Linear, Term


class SGD(Flow):
    name = "sgd"
    summary = "gradient descent, heavy-ball and Nesterov momentum (torch.optim.SGD)"
    torch_twin = "SGD"

    def __init__(self, lr=None, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                 *, maximize=False, schedule=None, max_grad_norm=None):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule,
                         max_grad_norm=max_grad_norm)
        # momentum > 1 makes the buffer grow without bound: a flow that does not dissipate.
        self.momentum = check.unit_interval("momentum", momentum, closed_right=True)
        self.dampening = check.unit_interval("dampening", dampening, closed_right=True)
        self.nesterov = check.flag("nesterov", nesterov)
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError("nesterov=True requires momentum in (0, 1] and dampening = 0, "
                             f"got momentum={momentum!r}, dampening={dampening!r}")
        self.vectors = ("b",) if self.momentum else ()

    default_lr = 1e-2

    def init(self, W, g0=None):
        S = super().init(W, g0)
        if self.momentum and self.dampening and g0 is not None:
            S["b"] = g0 * (self.dampening / self.momentum)
        return S

    def blocks(self):
        mu, d = self.momentum, self.dampening

        def buffer(tau, S, g):
            return (Linear((Term(1 - d, g),), decay=1 - mu, keep=mu),)

        def position(tau, S, g):
            eta = self.eta(tau)
            if not mu:
                return (Linear((Term(-eta, g),)),)
            u = g.add(S["b"], alpha=mu) if self.nesterov else S["b"]
            return (Linear((Term(-eta, u),)),)

        return ([Block(("b",), buffer)] if mu else []) + [Block(("W",), position)]

    def equations(self):
        mu, d = self.momentum, self.dampening
        if not mu:
            return ["Ẇ  = -η(τ)·g"]
        if self.nesterov:
            return [f"ḃ  = g - (1-μ)·b            μ={mu:g}, b(0)=0",
                    "Ẇ  = -η(τ)·(g + μ·b)"]
        return [f"ḃ  = (1-d)·g - (1-μ)·b        μ={mu:g}, d={d:g}, b(0)=d·g₀/μ",
                "Ẇ  = -η(τ)·b"]

    def hyperparameters(self):
        return {**super().hyperparameters(), "momentum": self.momentum,
                "dampening": self.dampening, "nesterov": self.nesterov}

    @classmethod
    def option_grid(cls):
        return [dict(momentum=m, dampening=d, nesterov=n, weight_decay=wd, maximize=mx)
                for m, d, n in [(0.0, 0.0, False), (0.9, 0.0, False), (0.9, 0.1, False),
                                (0.9, 0.0, True)]
                for wd in (0.0, 1e-2) for mx in (False, True)]

    @classmethod
    def invalid_options(cls):
        return super().invalid_options() + [
            {"momentum": -0.1}, {"momentum": 1.5}, {"dampening": -1.0},
            {"nesterov": True}, {"nesterov": True, "momentum": 0.9, "dampening": 0.1}]
