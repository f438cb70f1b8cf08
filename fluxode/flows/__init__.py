"""Registry of flows. Adding an optimizer = one flow module + one entry here."""

from __future__ import annotations

from .accelerated import NesterovODE, nag
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .base import Block, Envelope, Flow, State
from .modified import ModifiedSGD, SignFlow
from .newton import Newton
from .rmsprop import RMSprop
from .sgd import SGD

FLOWS: dict[str, type[Flow]] = {
    cls.name: cls for cls in (SGD, Adagrad, RMSprop, Adam, AdamW, Newton, NesterovODE,
                              ModifiedSGD, SignFlow)
}


def make_flow(name: str | Flow, **hyperparameters) -> Flow:
    """Build a registered flow by name, e.g. ``make_flow("adamw", lr=1e-3)``."""
    if isinstance(name, Flow):
        if hyperparameters:
            raise ValueError("hyperparameters given with a ready-made flow")
        return name
    try:
        cls = FLOWS[name]
    except KeyError:
        raise ValueError(f"flow must be one of {sorted(FLOWS)}, got {name!r}") from None
    try:
        return cls(**hyperparameters)
    except TypeError as err:
        raise ValueError(f"flow {name!r}: {err}") from None


__all__ = ["FLOWS", "make_flow", "Flow", "Block", "Envelope", "State", "SGD", "Adagrad",
           "RMSprop", "Adam", "AdamW", "Newton", "NesterovODE", "ModifiedSGD", "SignFlow", "nag"]
