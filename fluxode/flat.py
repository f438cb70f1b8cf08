"""A flow's whole state in one flat buffer, for ODE solvers.

Layout for a flow with auxiliaries (a₁, …) and clocks (c₁, …) over n parameters:

    y = [ W (n) | a₁ (n) | a₂ (n) | … | c₁ | c₂ | … ]

``views(y)`` gives the state dict as views into y (no copies), so a solver that works on y
evaluates the field without concatenating tensors on every call; ``field_into`` writes
dy/dτ into a preallocated buffer. With ``backend="fused"`` or ``"auto"`` the Adam-family
field is evaluated in one pass by ``fluxode.kernels`` (Triton on CUDA); ``"reference"``
(default) is ``fluxode.discretize.vector_field``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .discretize import vector_field
from .flows import Flow, State
from .validation import backend as check_backend


class FlatLayout:
    """Offsets of each state variable of ``flow`` in a flat buffer over ``n`` parameters."""

    def __init__(self, flow: Flow, n: int, backend: str = "reference"):
        if n < 1:
            raise ValueError(f"n (parameter count) must be in [1, inf), got {n}")
        self.flow, self.n, self.backend = flow, n, check_backend(backend)
        self.slices: dict[str, slice] = {}
        offset = 0
        for name in ("W", *flow.vectors):
            self.slices[name] = slice(offset, offset + n)
            offset += n
        for name in flow.clocks:
            self.slices[name] = slice(offset, offset + 1)
            offset += 1
        self.size = offset

    def views(self, y: Tensor) -> State:
        """State dict of views into y (clocks as 0-d views)."""
        if y.shape != (self.size,):
            raise ValueError(f"flat state must have shape ({self.size},), got {tuple(y.shape)}")
        S = {}
        for name, sl in self.slices.items():
            v = y[sl]
            S[name] = v.view(()) if name in self.flow.clocks else v
        return S

    def pack(self, S: State) -> Tensor:
        """A new flat buffer holding the state dict S."""
        W = S["W"]
        y = torch.empty(self.size, dtype=W.dtype, device=W.device)
        for name, view in self.views(y).items():
            view.copy_(S[name].reshape(view.shape))
        return y

    def field_into(self, tau: float, y: Tensor, g: Tensor, out: Tensor,
                   H: Tensor | None = None) -> Tensor:
        """out ← dy/dτ of the continuous flow at (τ, y) with raw (clipped) gradient g."""
        dst = self.views(out)
        if self.backend != "reference" and H is None:
            from .kernels import flow_field_into

            if flow_field_into(self.flow, tau, self.views(y), g, dst, self.backend):
                return out
        vector_field(self.flow, tau, self.views(y), g, H, out=dst)
        return out
