"""``ODEOptimizer``: the torch.optim front-end with an ODE method by default.

``ODEOptimizer(params, flow, method="rk4", ...)`` is ``fluxode.optim.FlowOptimizer`` whose
default method is a solver rather than the discrete map; everything else (param groups,
schedulers, closures, state dicts, ``method="discrete"``) is FlowOptimizer's.
"""

from __future__ import annotations

from .engine import ADAPTIVE, FIXED
from .optim import FlowOptimizer

METHODS = ("discrete", *FIXED, *ADAPTIVE)


class ODEOptimizer(FlowOptimizer):
    """``FlowOptimizer`` with ``method="rk4"`` by default."""

    default_method = "rk4"


__all__ = ["METHODS", "ODEOptimizer"]
