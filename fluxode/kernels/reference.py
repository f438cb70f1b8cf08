"""Reference kernels: the core discretizer itself, on flat buffers, for any flow.

``backend="reference"`` is fluxode's generic partitioned Euler step (``fluxode.discretize``),
which equals torch.optim's single-tensor step bit for bit; the fused CPU path and the Triton
kernels are tested against it. ``step_(flow, τ, S, g)`` and ``field(flow, τ, S, g)`` take the
flow itself. Buffers are flat 1-D. When W is bfloat16 the update is computed on a float32
copy of W and rounded back once, round to nearest even ("fp32 master math, one rounding per
step"); the same holds for float16 W, for a gradient in W's dtype and for states kept in W's
dtype (torch.optim's layout for low-precision parameters): every low-precision buffer is
stepped on a float32 copy and rounded back once. (torch's single-tensor code instead rounds
after every op in such a dtype; its fused=True op rounds once, like this.)

The keyword entry points ``adam_step_``, ``rmsprop_step_``, ``adam_field`` (the kernel API of
``fluxode.kernels``, shared with the CPU and Triton backends) describe the optimizer by its
numbers; they build its flow (``Adam``/``AdamW``/``RMSprop``) and call the generic pair.
Adam/AdamW step k (k ≥ 1) is the Euler step from τ = k-1 with the clocks c_i = 1 - β_iᵏ⁻¹;
the equations are the flows' (``fluxode flows``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..discretize import euler_step_, vector_field
from ..flows.adam import Adam, AdamW
from ..flows.rmsprop import RMSprop
from ._checks import LOW, state_dtype_for


def _master(w: torch.Tensor) -> torch.Tensor:
    return w.float() if w.dtype in LOW else w


def _clock(x) -> torch.Tensor:
    """A clock as a 0-d float64 tensor (a tensor stays on its device)."""
    if isinstance(x, torch.Tensor):
        return x.to(torch.float64)
    return torch.tensor(x, dtype=torch.float64)


def step_(flow, tau: float, S: dict, g: torch.Tensor) -> None:
    """S ← the partitioned Euler step (h = 1) of ``flow`` at τ, in place; low-precision
    (bfloat16/float16) buffers are stepped on float32 copies and rounded back once."""
    M = {n: _master(x) for n, x in S.items()}
    euler_step_(flow, tau, M, _master(g))
    for n, x in S.items():
        if M[n] is not x:
            x.copy_(M[n])


def field(flow, tau: float, S: dict, g: torch.Tensor) -> dict:
    """dS/dτ of ``flow`` at (τ, S), every buffer taken in the master dtype (float32, float64
    for float64 W)."""
    dt = state_dtype_for(S["W"])
    return vector_field(flow, tau, {n: x.to(dt) if x.dim() else x for n, x in S.items()},
                        g.to(dt))


def _adam_flow(lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize):
    cls = AdamW if decoupled else Adam
    return cls(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay,
               amsgrad=amsgrad, maximize=maximize)


def adam_step_(w: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, *,
               step: int, lr: float, beta1: float, beta2: float, eps: float,
               weight_decay: float, decoupled: bool, amsgrad: bool,
               vmax: torch.Tensor | None, maximize: bool) -> None:
    """One Adam (decoupled=False) or AdamW (decoupled=True) step, in place."""
    flow = _adam_flow(lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize)
    S = {"W": w, "m": m, "v": v, "c1": _clock(1 - beta1 ** float(step - 1)),
         "c2": _clock(1 - beta2 ** float(step - 1))}
    if amsgrad:
        S["vmax"] = vmax
    step_(flow, step - 1, S, g)


def rmsprop_step_(w: torch.Tensor, g: torch.Tensor, square_avg: torch.Tensor, *,
                  lr: float, alpha: float, eps: float, weight_decay: float, momentum: float,
                  centered: bool, grad_avg: torch.Tensor | None,
                  momentum_buf: torch.Tensor | None, maximize: bool) -> None:
    """One RMSprop step (plain, centered, momentum, weight decay), in place."""
    flow = RMSprop(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                   centered=centered, maximize=maximize)
    S = {"W": w, "v": square_avg}
    if centered:
        S["gbar"] = grad_avg
    if momentum:
        S["b"] = momentum_buf
    step_(flow, 0.0, S, g)


def adam_field(w: torch.Tensor, m: torch.Tensor, v: torch.Tensor, c1: float, c2: float,
               g: torch.Tensor, *, lr: float, beta1: float, beta2: float, eps: float,
               weight_decay: float, decoupled: bool, maximize: bool,
               out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any, Any]:
    """(dW, dm, dv, dc1, dc2) of the Adam/AdamW step-clock field; dW is in the state dtype;
    dc1, dc2 are floats for float clocks, 0-d float64 tensors for tensor clocks."""
    flow = _adam_flow(lr, beta1, beta2, eps, weight_decay, decoupled, False, maximize)
    d = field(flow, 0.0, {"W": w, "m": m, "v": v, "c1": _clock(c1), "c2": _clock(c2)}, g)
    dw, dm, dv = d["W"], d["m"], d["v"]
    if out is not None:
        for o, r in zip(out, (dw, dm, dv)):
            o.copy_(r)
        dw, dm, dv = out
    if isinstance(c1, torch.Tensor):
        return dw, dm, dv, d["c1"], d["c2"]
    return dw, dm, dv, float(d["c1"]), float(d["c2"])


def adam_group_step_(ws, gs, ms, vs, *, steps, lr, beta1, beta2, eps, weight_decay, decoupled,
                     amsgrad, vmaxs, maximize) -> None:
    """Adam/AdamW on each tensor of a list at its own step count (one call per tensor)."""
    for i, (w, g, m, v) in enumerate(zip(ws, gs, ms, vs)):
        adam_step_(w.view(-1), g.view(-1), m.view(-1), v.view(-1), step=steps[i], lr=lr,
                   beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                   decoupled=decoupled, amsgrad=amsgrad,
                   vmax=vmaxs[i].view(-1) if amsgrad else None, maximize=maximize)


def rmsprop_group_step_(ws, gs, ss, *, lr, alpha, eps, weight_decay, momentum, centered,
                        grad_avgs, momentum_bufs, maximize) -> None:
    """RMSprop on each tensor of a list (one call per tensor)."""
    for i, (w, g, s) in enumerate(zip(ws, gs, ss)):
        rmsprop_step_(w.view(-1), g.view(-1), s.view(-1), lr=lr, alpha=alpha, eps=eps,
                      weight_decay=weight_decay, momentum=momentum, centered=centered,
                      grad_avg=grad_avgs[i].view(-1) if centered else None,
                      momentum_buf=momentum_bufs[i].view(-1) if momentum > 0 else None,
                      maximize=maximize)
