"""A flow's state in one flat buffer, the solver's private business.

The state is kept per *unit* — one parameter tensor with its own shape, or, for an
elementwise flow (``Flow.elementwise``), several parameters flattened into one vector — as a
dict {W, var₁, var₂, …} of tensors shaped by each variable's declaration (``flows.base.Var``).
For a solver, the units are laid end to end:

    y = [ unit 1: W | var₁ | var₂ | … | unit 2: W | var₁ | … ]

``views(y)`` gives each unit's state dict as views into y (no copies), so the field is
evaluated without concatenating tensors on every call, and ``field_into`` writes dy/dτ into
a preallocated buffer. Scalar clocks are stored in y in y's dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..discretize import vector_field
from ..flows import Flow, State
from ..validation import backend as check_backend


class Layout:
    """Offsets of every state variable of ``flow`` for units whose W have ``shapes``."""

    def __init__(self, flow: Flow, shapes, backend: str = "reference"):
        shapes = [tuple(s) for s in shapes]
        if not shapes or any(math.prod(s) < 1 for s in shapes):
            raise ValueError(f"shapes must be a non-empty list of non-empty parameter shapes, "
                             f"got {shapes}")
        self.flow, self.backend = flow, check_backend(backend)
        self.units: list[dict[str, tuple[slice, tuple[int, ...]]]] = []
        offset = 0
        for shape in shapes:
            unit = {}
            for name, shp in (("W", shape), *((v.name, v.shape_for(shape))
                                              for v in flow.variables())):
                n = math.prod(shp)
                unit[name] = (slice(offset, offset + n), shp)
                offset += n
            self.units.append(unit)
        self.size = offset

    @property
    def slices(self) -> dict[str, slice]:
        """Slices of the single unit's variables (for one flat parameter vector)."""
        if len(self.units) != 1:
            raise ValueError(f"slices is for a one-unit layout, this one has {len(self.units)}")
        return {name: sl for name, (sl, _) in self.units[0].items()}

    def views(self, y: Tensor) -> list[State]:
        """Each unit's state dict as views into y."""
        if y.shape != (self.size,):
            raise ValueError(f"flat state must have shape ({self.size},), got {tuple(y.shape)}")
        return [{name: y[sl].view(shp) for name, (sl, shp) in unit.items()}
                for unit in self.units]

    def pack(self, states: list[State], out: Tensor | None = None) -> Tensor:
        """A flat buffer (``out`` or a new one, in W's dtype) holding the units' states."""
        W = states[0]["W"]
        y = torch.empty(self.size, dtype=W.dtype, device=W.device) if out is None else out
        for S, views in zip(states, self.views(y), strict=True):
            for name, view in views.items():
                view.copy_(S[name].reshape(view.shape))
        return y

    def field_into(self, taus, y: Tensor, grads: list[Tensor], out: Tensor,
                   H: Tensor | None = None) -> Tensor:
        """out ← dy/dτ at y, unit u at step-clock time ``taus[u]`` (or one τ for all) with raw
        (clipped) gradient ``grads[u]``; the flow's fused field where the backend allows."""
        taus = [taus] * len(self.units) if isinstance(taus, (int, float)) else taus
        for tau, S, g, dst in zip(taus, self.views(y), grads, self.views(out), strict=True):
            if self.backend != "reference" and H is None:
                from ..kernels import flow_field_into

                if flow_field_into(self.flow, tau, S, g, dst, self.backend):
                    continue
            vector_field(self.flow, tau, S, g, H, out=dst)
        return out

    def explain(self, tau: float, y: Tensor, dy: Tensor | None = None,
                grads: list[Tensor] | None = None) -> str | None:
        """Which state variable, gradient or rate is non-finite at τ (None if none is)."""
        where = lambda u: f" of tensor {u}" if len(self.units) > 1 else ""
        for u, S in enumerate(self.views(y)):
            for name, v in S.items():
                if not torch.isfinite(v).all():
                    return f"non-finite {name!r}{where(u)} at τ={tau:.6g}"
        for u, g in enumerate(grads or ()):
            if not torch.isfinite(g).all():
                return f"non-finite gradient ∇L(W){where(u)} at τ={tau:.6g}"
        if dy is not None:
            for u, S in enumerate(self.views(dy)):
                for name, v in S.items():
                    if not torch.isfinite(v).all():
                        return f"non-finite rate d{name}/dτ{where(u)} at τ={tau:.6g}"
        return None


ADAPTIVE_REMEDY = ("use an adaptive method (e.g. 'dopri5'), whose step-size control resolves "
                   "the start")


def check_start(flows, method: str, remedy: str = ADAPTIVE_REMEDY) -> None:
    """Refuse a fixed-step ``method`` from the declared initial state of any of ``flows`` whose
    field is singular there (``Flow.singular_start``): its first stage would be evaluated at
    τ = 0, where only an adaptive step size resolves the start (``remedy``: what the caller
    offers instead)."""
    from .solve import FIXED

    if method not in FIXED:
        return
    for flow in flows:
        why = flow.singular_start()
        if why:
            raise ValueError(f"method {method!r} takes fixed steps from the start of flow "
                             f"{flow.name!r}, where its field is singular ({why}): {remedy}")
