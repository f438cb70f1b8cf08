"""The Su–Boyd–Candès ODE for Nesterov's accelerated gradient (no torch.optim twin).

In physical time t:  Ẍ + (3/t)·Ẋ + ∇f(X) = 0,  X(0) = x₀, Ẋ(0) = 0.
NAG with step s,  x_{k+1} = y_k - s∇f(y_k),  y_{k+1} = x_{k+1} + k/(k+3)·(x_{k+1} - x_k),
follows it with t ≈ k√s (Su, Boyd & Candès 2016). On the step clock τ = t/√s, with V = Ẋ:

    Ẇ = √s·V
    V̇ = -(3/τ)·V - √s·g             (at τ = 0, V = 0: V̇ = -√s·g/4, the limit of the ODE)

Its partitioned Euler step (V first, then W) is a NAG-like scheme with momentum 1 - 3/k;
``nag`` below is the classical scheme, kept beside it for the limit studies.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .base import Block, Flow
from .rates import Linear, Term


class NesterovODE(Flow):
    name = "nesterov-ode"
    summary = "Su–Boyd–Candès ODE Ẍ + (3/t)Ẋ + ∇f = 0 (continuous limit of NAG, lr = s)"
    vectors = ("V",)
    default_lr = 1e-2

    def blocks(self):
        def velocity(tau, S, g):
            rs = math.sqrt(self.eta(tau))
            tau = float(tau)
            if tau == 0:
                return (Linear((Term(-rs / 4, g),)),)
            return (Linear((Term(-rs, g),), decay=3 / tau, keep=1 - 3 / tau),)

        def position(tau, S, g):
            return (Linear((Term(math.sqrt(self.eta(tau)), S["V"]),)),)

        return [Block(("V",), velocity), Block(("W",), position)]

    def equations(self):
        return ["V̇  = -(3/τ)·V - √s·g            V(0) = 0, s = lr",
                "Ẇ  = √s·V                       (t = τ√s:  Ẍ + (3/t)Ẋ + ∇f = 0)"]


def nag(grad: Callable[[Tensor], Tensor], x0: Tensor, s: float, steps: int) -> Tensor:
    """Classical NAG for convex f (Nesterov 1983 in the Su–Boyd–Candès form); returns the
    iterates x_0..x_steps stacked along dim 0."""
    x_prev = x0.clone()
    y = x0.clone()
    xs = [x0.clone()]
    for k in range(steps):
        x = y - s * grad(y)
        y = x + (k / (k + 3)) * (x - x_prev)
        x_prev = x
        xs.append(x)
    return torch.stack(xs)
