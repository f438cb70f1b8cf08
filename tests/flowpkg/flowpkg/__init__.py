"""Two flows written outside fluxode, as any package would: Lion and a factored second moment.

With ``tests/flowpkg`` on ``sys.path`` the neighbouring ``fluxode_flowpkg-0.1.dist-info`` makes
this an installed package whose entry points (group ``fluxode.flows``) name both classes, so
every ``fluxode`` command sees them; importing it also registers them (``@register_flow``).

    my-lion       Ẇ = -η(τ)·[sign(β₁m + (1-β₁)g) + λW]      ṁ = (1-β₂)(g - m)
    factored-rms  ṙ = (1-β₂)(mean_last(g²) - r)          ċ = (1-β₂)(mean_2nd-last(g²) - c)
                  v̂ = r cᵀ / mean(r)                     Ẇ = -η(τ)·g / (√v̂ + ε)
"""

from __future__ import annotations

import torch

from fluxode import register_flow, validation
from fluxode.flows import Block, Flow, Var
from fluxode.flows.rates import Linear, Term, Toward


# --- Lion (the README's "Write your own flow" example, line for line) -------------------------
@register_flow
class Lion(Flow):
    """Ẇ = -η(τ)·[sign(β₁m + (1-β₁)g) + λW],  ṁ = (1-β₂)(g - m): W first, with the old m."""
    name, summary, default_lr = "my-lion", "Lion: the sign of the interpolated momentum", 1e-4
    vectors, decoupled_decay = ("m",), True

    def __init__(self, lr=None, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False,
                 schedule=None, max_grad_norm=None):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule,
                         max_grad_norm=max_grad_norm)
        self.betas = validation.betas(betas)

    def blocks(self):
        b1, b2 = self.betas
        def position(tau, S, g):  # p.mul_(1 - lr·λ); p.add_(sign(β₁m + (1-β₁)g), alpha=-lr)
            eta, wd = self.eta(tau), self.weight_decay
            u = S["m"].mul(b1).add_(g, alpha=1 - b1).sign_()
            return (Linear((Term(-eta, u),), decay=eta * wd, keep=1 - eta * wd),)

        return [Block(("W",), position), Block(("m",), lambda tau, S, g: (Toward(1 - b2, g),))]

    def equations(self):
        return ["Ẇ  = -η(τ)·[sign(β₁m + (1-β₁)g) + λW]", "ṁ  = (1-β₂)(g - m)"]

    def hyperparameters(self):
        return {**super().hyperparameters(), "betas": self.betas}


# --- a factored second moment (Adafactor-style) -----------------------------------------------
def _rows(shape):
    """r's shape: W's without its last dimension ("rows"); like W when W has < 2 dimensions."""
    return shape[:-1] if len(shape) >= 2 else shape


def _cols(shape):
    """c's shape: W's without its second-to-last ("cols"); a scalar (unused) below 2-D."""
    return shape[:-2] + shape[-1:] if len(shape) >= 2 else ()


def _second_moment(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) targets of r and c: means of g² over the last / second-to-last dimension;
    below 2-D the full g² and a constant 1 for the unused c."""
    g2 = g * g
    if g.dim() < 2:
        return g2, torch.ones((), dtype=g.dtype, device=g.device)
    return g2.mean(-1), g2.mean(-2)


@register_flow
class FactoredRMS(Flow):
    """RMS-normalized gradient flow with a factored second moment (Adafactor's v̂ = r cᵀ/mean r).

    For W with ≥ 2 dimensions r is shaped like W's rows, c like its columns (O(n + m) memory
    for an n×m matrix); below 2 dimensions r is the full second moment v (shaped like W) and c
    an unused scalar, so the flow is RMSprop-like there. Both start at their targets for the
    first gradient g₀, so no bias correction is needed and the field is smooth in τ:

        ṙ = (1-β₂)(mean_last(g²) - r)        ċ = (1-β₂)(mean_{2nd-last}(g²) - c)
        v̂ = r cᵀ / mean(r)   (≥ 2-D; v̂ = r below)        Ẇ = -η(τ)·g / (√v̂ + ε)
    """

    name = "factored-rms"
    summary = "RMS-normalized flow with an Adafactor-style factored second moment"
    default_lr = 1e-2
    tensorwise = True

    def __init__(self, lr=None, beta2=0.999, eps=1e-8, weight_decay=0.0, *, maximize=False,
                 schedule=None, max_grad_norm=None):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule,
                         max_grad_norm=max_grad_norm)
        self.beta2 = validation.unit_interval("beta2", beta2)
        self.eps = validation.positive("eps", eps)

    def variables(self):
        def start(i):
            def init(W, g0):
                if g0 is None:  # no gradient yet: v̂ = 0 (the first step is then -η·g/ε)
                    return torch.zeros(_rows(W.shape) if i == 0 else _cols(W.shape),
                                       dtype=W.dtype, device=W.device)
                return _second_moment(g0)[i]
            return init

        return (Var("r", _rows, init=start(0)), Var("c", _cols, init=start(1)))

    @staticmethod
    def vhat(S) -> torch.Tensor:
        r, c = S["r"], S["c"]
        if S["W"].dim() < 2:
            return r
        scale = r.mean(-1, keepdim=True).clamp_min(torch.finfo(r.dtype).tiny)
        return (r / scale).unsqueeze(-1) * c.unsqueeze(-2)

    def admissible(self, S):
        return self._raise_to(S, {"r": 0.0, "c": 0.0})

    def blocks(self):
        b2 = self.beta2

        def moments(tau, S, g):
            row, col = _second_moment(g)
            return Toward(1 - b2, row), (Toward(1 - b2, col) if g.dim() >= 2 else Linear(()))

        def position(tau, S, g):
            denom = self.vhat(S).sqrt().add_(self.eps)
            return (Linear((Term(-self.eta(tau), g, denom, "div"),)),)

        return [Block(("r", "c"), moments), Block(("W",), position)]

    def equations(self):
        return [f"ṙ  = (1-β₂)(mean_last(g²) - r)          β₂={self.beta2:g}",
                "ċ  = (1-β₂)(mean_2nd-last(g²) - c)     (r, c: rows, cols; full v below 2-D)",
                f"v̂  = r cᵀ / mean(r),   Ẇ = -η(τ)·g / (√v̂ + ε)    ε={self.eps:g}"]

    def hyperparameters(self):
        return {**super().hyperparameters(), "beta2": self.beta2, "eps": self.eps}


__all__ = ["FactoredRMS", "Lion"]
