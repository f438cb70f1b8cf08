"""Newton's flow (no torch.optim twin).

    Ẇ = -η(τ)·H(W)⁻¹·g,     H = ∇²L(W) (+ λI with L2 decay)

Along it ∇L(W(t)) = e^{-ηt}·∇L(W(0)): the gradient decays at one rate in every direction.
The Hessian is formed explicitly, so the flow refuses parameter vectors larger than
``max_dim`` (default 4096) with a ValueError.
"""

from __future__ import annotations

import torch

from .. import validation as check
from .base import Block, Flow
from .rates import Linear, Term


class Newton(Flow):
    name = "newton"
    summary = "Newton's flow Ẇ = -η·H⁻¹g (explicit Hessian, small problems)"
    needs_hessian = True
    default_lr = 1.0

    def __init__(self, lr=None, weight_decay=0.0, max_dim=4096, *, maximize=False,
                 schedule=None, max_grad_norm=None):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule,
                         max_grad_norm=max_grad_norm)
        self.max_dim = check.positive_int("max_dim", max_dim)

    def effective_gradient(self, W, g, H=None):
        n = W.numel()
        if n > self.max_dim:
            raise ValueError(f"Newton's flow forms the Hessian explicitly: parameter count {n} "
                             f"exceeds max_dim={self.max_dim} (raise max_dim up to what fits "
                             "in memory as an n×n matrix)")
        if H is None:
            raise ValueError("Newton's flow needs the Hessian H (pass a problem with a Hessian)")
        g = super().effective_gradient(W, g)
        H = H.reshape(n, n)
        if self.weight_decay:
            H = H + self.weight_decay * torch.eye(n, dtype=H.dtype, device=H.device)
        if self.maximize:
            H = -H
        return torch.linalg.solve(H, g.reshape(n)).reshape(W.shape)

    def blocks(self):
        def position(tau, S, d):
            return (Linear((Term(-self.eta(tau), d),)),)

        return [Block(("W",), position)]

    def equations(self):
        return ["Ẇ  = -η(τ)·H⁻¹g,   H = ∇²L(W)" + (" + λI" if self.weight_decay else "")]

    def hyperparameters(self):
        return {**super().hyperparameters(), "max_dim": self.max_dim}

    @classmethod
    def invalid_options(cls):
        return super().invalid_options() + [{"max_dim": 0}, {"max_dim": 2.5}]
