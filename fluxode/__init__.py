"""fluxode: optimizers as honest ODE flows, for PyTorch.

    >>> import fluxode
    >>> flow = fluxode.make_flow("adamw", lr=1e-3)
    >>> print(flow.describe())                      # its ODE system and state
    >>> opt = fluxode.FlowOptimizer(model.parameters(), "adamw", lr=1e-3)   # = torch.optim.AdamW

The study API (README "Studies in Python"): every run is on the step clock τ (τ = k at the
k-th torch step, k·h at step h of a path); lr-time is ``lr_time``/``step_time``.

    flows      make_flow, register_flow, Flow, FLOWS, FlowOptimizer
    problems   Problem (subclass: loss, x0), Quadratic, ModuleProblem, classification
    runs       integrate.integrate, run_discrete_trajectory, Trajectory
    paths      discrete_flow, limit_flow, sqrt_point, sqrt_scale, step_of, lr_time, step_time
    limits     limit_sweep (= limits.sweep), fit_order (orders and error constants)
    stability  max_stable_lr;  sharpness.sharpness, top_eigenpairs, track

Module names stay modules (``fluxode.integrate``, ``fluxode.sweep``, ``fluxode.sharpness``):
a function of the same name would hide them from ``import fluxode.integrate as I``.
    sde        SME, sme_loss, sgd_monte_carlo, per_example_gradients, noise_covariance
    NAG        nag (the classical iterates); make_flow("nag") is its discrete flow
"""

from .flows import FLOWS, Flow, make_flow, nag, register_flow
from . import integrate, sharpness
from .integrate import Trajectory, run_discrete_trajectory
from .limits import fit_order
from .limits import sweep as limit_sweep
from .optim import FlowOptimizer
from .paths import (discrete_flow, limit_flow, lr_time, sqrt_point, sqrt_scale, step_of,
                    step_time)
from .problems import ModuleProblem, Problem, Quadratic, classification
from .sde import SME, noise_covariance, per_example_gradients, sgd_monte_carlo, sme_loss
from .sharpness import top_eigenpairs, track
from .stability import max_stable_lr

__version__ = "0.1.0"
__all__ = ["FLOWS", "Flow", "make_flow", "register_flow", "FlowOptimizer", "__version__",
           "Problem", "Quadratic", "ModuleProblem", "classification",
           "Trajectory", "integrate", "run_discrete_trajectory",
           "discrete_flow", "limit_flow", "sqrt_point", "sqrt_scale", "step_of", "lr_time",
           "step_time", "limit_sweep", "fit_order", "max_stable_lr", "sharpness", "top_eigenpairs",
           "track", "SME", "sme_loss", "sgd_monte_carlo", "per_example_gradients",
           "noise_covariance", "nag"]
