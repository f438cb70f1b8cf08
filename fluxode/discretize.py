"""The discretizer: one generic partitioned (semi-implicit) Euler scheme over a flow's blocks.

For blocks B₁, …, B_n (the last one moves W) and step h on the step clock,

    g  = G(W_k, ∇L(W_k))
    B₁ ← B₁ + h·f₁(τ_k, S, g)          each block sees the values the earlier blocks produced
    ⋮
    W  ← W  + h·f_n(τ_k, S, g)          τ_{k+1} = τ_k + h

With h = 1 this is torch.optim's update for every flow with a torch twin (the rate
expressions in ``flows.rates`` apply the same floating-point operations). The same blocks,
all evaluated on one state, give the continuous vector field (``vector_field``).
No optimizer-specific code lives here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .flows import Envelope, Flow, State


def vector_field(flow: Flow, tau: float, S: State, g: Tensor, H: Tensor | None = None,
                 out: State | None = None) -> dict[str, Tensor]:
    """dS/dτ for the continuous flow at (τ, S) with raw (already clipped) gradient g,
    evaluated at ``flow.admissible(S)``; written into the tensors of ``out`` when given."""
    S = flow.admissible(S)
    ge = flow.effective_gradient(S["W"], g, H)
    dst = out if out is not None else {}
    for block in flow.blocks():
        if isinstance(block, Envelope):
            x, src = S[block.name], S[block.source]
            r = torch.where(src >= x, dst[block.source].clamp(min=0), torch.zeros_like(x))
            if out is None:
                dst[block.name] = r
            else:
                dst[block.name].copy_(r)
            continue
        for name, rate in zip(block.names, block.field(tau, S, ge)):
            if out is None:
                dst[name] = rate.rate(S[name])
            else:
                rate.rate(S[name], dst[name])
    return dst


def euler_step_(flow: Flow, tau: float, S: State, g: Tensor, h: float = 1.0,
                H: Tensor | None = None, blocks: list | None = None) -> None:
    """One partitioned Euler step of size h, in place on S (g: raw, already clipped).

    A tensor state moves in place (``rate.euler_``); a scalar kept as a Python number (an
    exact clock) is replaced by its new value (``rate.euler``). ``blocks``: ``flow.blocks()``
    when the caller steps several tensors with one flow (built once, not per tensor)."""
    ge = flow.effective_gradient(S["W"], g, H)
    for block in flow.blocks() if blocks is None else blocks:
        if isinstance(block, Envelope):
            torch.maximum(S[block.name], S[block.source], out=S[block.name])
            continue
        rates = block.field(tau, S, ge)  # evaluated before any of this block's states move
        for name, rate in zip(block.names, rates):
            x = S[name]
            if isinstance(x, Tensor):
                rate.euler_(x, h)
            else:
                S[name] = rate.euler(x, h)


def run_discrete(flow: Flow, grad_fn: Callable[[Tensor], Tensor], W0: Tensor, steps: int,
                 h: float | None = None, hess_fn: Callable[[Tensor], Tensor] | None = None,
                 every: int = 1) -> tuple[Tensor, Tensor]:
    """Iterate the discrete map from W0 on a flat (or any-shape) parameter tensor: a thin
    caller of ``fluxode.engine.run`` with ``grad_fn(W)`` as the oracle.

    Returns (taus, Ws): step-clock times and the parameters every ``every``-th step,
    including the start."""
    from .engine import Oracle, run, start
    from .paths import step_of

    h = step_of(flow, h)  # the step the flow carries (paths.discrete_flow), else h or 1
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer in [0, inf), got {steps!r}")
    oracle = Oracle(lambda W, tau: grad_fn(W), hess_fn and (lambda W: hess_fn(W)))
    W0 = W0.detach()
    if steps == 0:
        return torch.zeros(1, dtype=torch.float64), W0.clone().unsqueeze(0)
    S, g, H = start(flow, oracle, W0)
    taus, Ws = run(flow, oracle, S, steps, h=h, every=every, first=(g, H))
    return torch.tensor(taus, dtype=torch.float64), torch.stack(Ws)
