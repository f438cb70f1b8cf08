"""The one discrete engine: the partitioned Euler step, its start and its loop.

    S(τ₀)     = flow.init(W₀, G(W₀, clip(∇L(W₀)), H₀))            (``start``)
    S(τ + h)  = partitioned Euler step of size h from (τ, S)        (``step_``)

``step_`` runs the flow's fused kernel where it has one and the backend allows it, else the
generic scheme (``fluxode.discretize.euler_step_``); at h = 1 both are torch.optim's update.
``run`` is the only discrete loop: trajectories, limits, sweeps, sharpness tracking and the
stability checks all call it, with a gradient oracle (an object with ``grad(W, τ)`` and, for
flows that need one, ``hessian(W)``: a Problem, or ``Oracle(grad_fn)``). A run may start from
any state at any τ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from ..discretize import euler_step_
from ..flows import Flow, State
from ..forces import clip_gradients_


@dataclass(frozen=True)
class Oracle:
    """A gradient oracle from functions: ``grad(W, τ)`` and optionally ``hessian(W)``."""

    grad_fn: Callable[[Tensor, float], Tensor]
    hessian_fn: Callable[[Tensor], Tensor] | None = None

    def grad(self, W: Tensor, tau: float = 0.0) -> Tensor:
        return self.grad_fn(W, tau)

    def hessian(self, W: Tensor) -> Tensor:
        if self.hessian_fn is None:
            raise ValueError("this flow needs a Hessian and the oracle has none")
        return self.hessian_fn(W)


def step_(flow: Flow, S: State, g: Tensor, tau: float, h: float = 1.0,
          H: Tensor | None = None, backend: str = "reference", blocks: list | None = None
          ) -> None:
    """One partitioned Euler step of size h from τ, in place on S (g: raw, already clipped;
    ``blocks``: ``flow.blocks()`` built once by a caller that steps many tensors; a fused
    kernel takes clocks as 0-d tensors, the generic step also as Python numbers)."""
    if backend != "reference" and H is None:
        from ..kernels import flow_step_

        if flow_step_(flow, tau, S, g, h, backend):
            return
    euler_step_(flow, tau, S, g, h, H, blocks)


def evaluate(flow: Flow, oracle, W: Tensor, tau: float,
             clip: Callable = clip_gradients_) -> tuple[Tensor, Tensor | None]:
    """(clip(∇L(W)), ∇²L(W) if the flow needs it) from the oracle at τ."""
    g = oracle.grad(W, tau)
    clip([g], flow.max_grad_norm)
    return g, (oracle.hessian(W) if flow.needs_hessian else None)


def start(flow: Flow, oracle, W0: Tensor, tau0: float = 0.0,
          clip: Callable = clip_gradients_) -> tuple[State, Tensor, Tensor | None]:
    """S(τ₀) = flow.init(W₀, G(W₀, g₀, H₀)) and the raw clipped g₀, H₀ it was built from."""
    g0, H0 = evaluate(flow, oracle, W0, tau0, clip)
    return flow.init(W0.clone(), flow.effective_gradient(W0, g0, H0)), g0, H0


def run(flow: Flow, oracle, S: State, steps: int, *, h: float = 1.0, tau0: float = 0.0,
        every: int = 1, first: tuple[Tensor, Tensor | None] | None = None,
        record: Callable[[State, float], object] = lambda S, tau: S["W"].clone(),
        stepper: Callable = step_, clip: Callable = clip_gradients_,
        before_step: Callable[[State, float], None] | None = None
        ) -> tuple[list[float], list]:
    """``steps`` steps of size h from (τ₀, S), in place on S.

    Returns the times τ₀ + k·h and ``record(S, τ)`` for k = 0 and every ``every``-th step (and
    the last). ``first`` = (g, H) already evaluated at (τ₀, S["W"]) (e.g. by ``start``);
    ``stepper``/``clip`` replace the per-point step and clipping (batched sweeps);
    ``before_step(S, τ)`` may change the state before each step (stability freezes v)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer in [0, inf), got {steps!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an integer in [1, inf), got {every!r}")
    taus, out = [tau0], [record(S, tau0)]
    for k in range(steps):
        tau = tau0 + k * h
        if before_step is not None:
            before_step(S, tau)
        g, H = first if (k == 0 and first is not None) else evaluate(flow, oracle, S["W"], tau,
                                                                     clip)
        stepper(flow, S, g, tau, h, H)
        if (k + 1) % every == 0 or k + 1 == steps:
            taus.append(tau0 + (k + 1) * h)
            out.append(record(S, taus[-1]))
    return taus, out
