"""Optimizers fluxode declines to write as flows, and why (``make_flow`` and ``FlowOptimizer``
raise these reasons; README, "Flows").

SparseAdam. torch.optim.SparseAdam updates, on each step, only the rows (entries) present in
that step's sparse gradient: m, v and W of every other entry stay frozen, and the bias
correction counts *global* steps. Its dynamics therefore depend on which entries the sampler
touched at each step: the map is a different function at every step, chosen by the support of
the minibatch gradient, not a field of the state. In a deterministic continuous limit every
entry would be "touched" at every instant and the flow would be Adam's (already here, with
``torch.optim.Adam`` as its twin); the laziness — SparseAdam's only difference from Adam — is a
property of the sampling, which an ODE in τ cannot state honestly (the right object is a
jump process over row supports). fluxode refuses it rather than calling Adam by its name.

LBFGS. torch.optim.LBFGS is not a step map of a fixed state dimension: each ``step(closure)``
runs up to ``max_iter`` inner iterations with repeated closure calls, an optional strong-Wolfe
line search, tolerance-based early exits (``tolerance_grad``, ``tolerance_change``), and a
curvature history of the last ``history_size`` pairs (s, y) whose two-loop recursion is
reset and truncated by data-dependent branches. Its natural continuous counterpart is a
quasi-Newton flow Ẇ = -Bₜ⁻¹∇L with Bₜ the BFGS matrix of the *trajectory's* curvature — but
limited memory, the line search and the stopping tests have no h → 0 form, and the discrete
map at h = 1 would not be torch's. Newton's flow (``newton``) is fluxode's second-order flow.
"""

from __future__ import annotations

from .registry import REFUSED

SPARSE_ADAM = ("SparseAdam updates only the entries present in each step's sparse gradient: "
               "its map changes with the gradient's support at every step, a property of the "
               "sampling that no ODE in the state can state (a deterministic limit touches every "
               "entry and is Adam: use flow 'adam'). See fluxode.flows.refusals.")
LBFGS = ("torch.optim.LBFGS runs inner iterations per step with repeated closure calls, a "
         "strong-Wolfe line search, tolerance-based exits and a truncated (s, y) history: "
         "none has an h -> 0 form, so no flow's Euler step at h = 1 would be torch's. Its "
         "continuous relative is a quasi-Newton flow; fluxode's second-order flow is 'newton'. "
         "See fluxode.flows.refusals.")

for _name in ("sparse-adam", "sparseadam", "SparseAdam"):
    REFUSED[_name] = SPARSE_ADAM
for _name in ("lbfgs", "LBFGS"):
    REFUSED[_name] = LBFGS
