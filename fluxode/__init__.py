"""fluxode: optimizers as honest ODE flows, for PyTorch.

    >>> import fluxode
    >>> flow = fluxode.make_flow("adamw", lr=1e-3)
    >>> print(flow.describe())                      # its ODE system and state
    >>> opt = fluxode.FlowOptimizer(model.parameters(), "adamw", lr=1e-3)   # = torch.optim.AdamW
"""

from .flows import FLOWS, Flow, make_flow, register_flow
from .optim import FlowOptimizer

__version__ = "0.1.0"
__all__ = ["FLOWS", "Flow", "make_flow", "register_flow", "FlowOptimizer", "__version__"]
