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

These names (and every submodule) are imported on first use, so ``import fluxode`` costs
little beyond torch and a command imports only what it runs.
"""

from importlib import import_module
from importlib.util import find_spec

# public name → the submodule that defines it; imported on first use (module __getattr__), so
# ``import fluxode`` and commands that need little (``fluxode flows``) stay as quick as torch
_WHERE = {
    **dict.fromkeys(("FLOWS", "Flow", "make_flow", "nag", "register_flow"), "flows"),
    **dict.fromkeys(("Trajectory", "run_discrete_trajectory"), "integrate"),
    "fit_order": "limits", "FlowOptimizer": "optim",
    **dict.fromkeys(("discrete_flow", "limit_flow", "lr_time", "sqrt_point", "sqrt_scale",
                     "step_of", "step_time"), "paths"),
    **dict.fromkeys(("ModuleProblem", "Problem", "Quadratic", "classification"), "problems"),
    **dict.fromkeys(("SME", "noise_covariance", "per_example_gradients", "sgd_monte_carlo",
                     "sme_loss"), "sde"),
    **dict.fromkeys(("top_eigenpairs", "track"), "sharpness"),
    "max_stable_lr": "stability",
}
_RENAMED = {"limit_sweep": ("limits", "sweep")}

__version__ = "0.1.0"
__all__ = ["FLOWS", "Flow", "make_flow", "register_flow", "FlowOptimizer", "__version__",
           "Problem", "Quadratic", "ModuleProblem", "classification",
           "Trajectory", "integrate", "run_discrete_trajectory",
           "discrete_flow", "limit_flow", "sqrt_point", "sqrt_scale", "step_of", "lr_time",
           "step_time", "limit_sweep", "fit_order", "max_stable_lr", "sharpness", "top_eigenpairs",
           "track", "SME", "sme_loss", "sgd_monte_carlo", "per_example_gradients",
           "noise_covariance", "nag"]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    elif name in _RENAMED:
        module, attr = _RENAMED[name]
        value = getattr(import_module(f".{module}", __name__), attr)
    elif not name.startswith("_") and find_spec(f"{__name__}.{name}") is not None:
        value = import_module(f".{name}", __name__)  # a submodule: fluxode.integrate, ...
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
