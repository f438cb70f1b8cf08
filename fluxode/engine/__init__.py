"""The engine: one discrete step and loop, one continuous solve, one state layout.

    step_(flow, S, g, τ, h)     partitioned Euler (torch.optim's update at h = 1)
    start / run                 the initial state and the only discrete loop
    solve(rhs, y0, times, …)    the only call into the ODE library (torchdiffeq)
    Layout(flow, shapes)        per-tensor state packed into one flat buffer for solvers
    check_start(flows, method)  fixed steps refused from a singular start (Flow.singular_start)

Everything else (the torch.optim front-end, trajectories, sweeps, limits, sharpness,
stability, training) is a caller of these.
"""

from .layout import Layout, check_start
from .solve import (
                    ADAPTIVE,
                    FIXED,
                    METHODS,
                    IntegrationError,
                    all_finite,
                    check_method,
                    check_positive,
                    solve,
)
from .step import Oracle, evaluate, run, start, step_

__all__ = [
                    "ADAPTIVE",
                    "FIXED",
                    "METHODS",
                    "IntegrationError",
                    "Layout",
                    "Oracle",
                    "all_finite",
                    "check_method",
                    "check_start",
                    "check_positive",
                    "evaluate",
                    "run",
                    "solve",
                    "start",
                    "step_",
]
