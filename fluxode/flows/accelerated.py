"""The Su–Boyd–Candès ODE for Nesterov's accelerated gradient (no torch.optim twin).

In physical time t:  Ẍ + (3/t)·Ẋ + ∇f(X) = 0,  X(0) = x₀, Ẋ(0) = 0.
NAG with step s,  x_{k+1} = y_k - s∇f(y_k),  y_{k+1} = x_{k+1} + k/(k+3)·(x_{k+1} - x_k),
follows it with t ≈ k√s (Su, Boyd & Candès 2016). On the step clock τ = t/√s, with V = Ẋ:

    Ẇ = √s·V
    V̇ = -(3/τ)·V - √s·g             (at τ = 0, V = 0: V̇ = -√s·g/4, the limit of the ODE)

Its partitioned Euler step (V first, then W) is a NAG-like scheme with momentum 1 - 3/k,
*not* NAG. The classical scheme is the discrete flow ``NAG`` ("nag"), and ``nag`` below the
same iterates as a plain function.

NAG as a discrete flow. The state is y = W (where the gradient is taken), the previous
iterate x and its last increment d; one partitioned Euler step of size h (blocks d, x, W)
is NAG with step s = h²·lr and k = τ/h:

    d ← (W - s·∇f(W)) - x,    x ← x + d,    W ← x + k/(k+3)·d        (x(0) = W₀, d(0) = 0)

so h = 1 is NAG with s = lr, and along the ``rates`` path (``fluxode.paths.discrete_flow``,
which calls ``NAG.at_step``) the step-clock time τ = k·h is the physical time t = k√s over
√lr. As h → 0 (s → 0 at fixed t) the iterates tend to the Su–Boyd–Candès ODE, which is
``NAG.limit("rates")`` = ``NesterovODE(lr)``; the gap at fixed t shrinks like h ∝ √s
(order ½ in s, Su, Boyd & Candès 2016, Thm. 2), which ``fluxode limit --flow nag`` fits.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .. import validation as check
from .base import Block, Flow, Var
from .rates import Linear, Term
from .registry import register_flow


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


@register_flow
class NAG(Flow):
    """Nesterov's accelerated gradient in the Su–Boyd–Candès form, as a discrete flow whose
    Euler step h is NAG with s = h²·lr (module doc); h = 1: NAG with s = lr. Its limit along
    ``rates`` is the Su–Boyd–Candès ODE (``NesterovODE``)."""

    name = "nag"
    summary = "NAG (Su–Boyd–Candès form): Euler step h = NAG with s = h²·lr, k/(k+3) momentum"
    default_lr = 1e-2

    def __init__(self, lr=None, h=1.0):
        from ..paths import check_step

        super().__init__(lr)
        self.h = check_step(h)
        self.path_step = self.h  # a discrete scheme: its runs take exactly this step

    def variables(self):
        return (Var("d"), Var("x", init=lambda W, g0: W.detach().clone()))

    def at_step(self, h: float) -> NAG:
        """The NAG flow whose Euler step h is NAG with s = h²·lr (the ``rates`` path)."""
        return NAG(lr=self.lr, h=h)

    def blocks(self):
        h = self.h
        s = h * h * self.lr

        def increment(tau, S, g):  # d ← (W - s·g) - x
            return (Linear((Term(1 / h, S["W"]), Term(-1 / h, S["x"]), Term(-s / h, g)),
                           decay=1 / h, keep=0.0),)

        def iterate(tau, S, g):  # x ← x + d
            return (Linear((Term(1 / h, S["d"]),)),)

        def point(tau, S, g):  # W ← x + k/(k+3)·d
            k = round(float(tau) / h)
            c = k / (k + 3)
            return (Linear((Term(1 / h, S["x"]), Term(c / h, S["d"])), decay=1 / h, keep=0.0),)

        return [Block(("d",), increment), Block(("x",), iterate), Block(("W",), point)]

    def limit(self, path: str = "rates") -> Flow:
        """rates: the Su–Boyd–Candès ODE ``NesterovODE(lr)`` on the step clock τ = t/√lr."""
        from ..paths import check_path

        if check_path(path) == "rates":
            return NesterovODE(lr=self.lr)
        raise ValueError(f"flow 'nag' has a limit along path='rates' only (the Su–Boyd–Candès "
                         f"ODE), got path={path!r}")

    def equations(self):
        return [f"ḋ  = (W - x)/h - h·lr·g - d/h,   ẋ = d/h,   Ẇ = (x + k/(k+3)·d - W)/h",
                f"Euler step h = {self.h:g}: d ← (W - s·g) - x, x ← x + d, W ← x + k/(k+3)·d, "
                f"s = h²·lr = {self.h ** 2 * self.lr:g}, k = τ/h;  x(0) = W₀, d(0) = 0",
                "limit h → 0 (rates): Ẍ + (3/t)Ẋ + ∇f = 0, t = τ√lr  (nesterov-ode)"]

    def hyperparameters(self):
        return {"lr": self.lr, "h": self.h}


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
