"""Flows: the built-in ones register here through the same registry plugins use (``registry``)."""

from __future__ import annotations

from .accelerated import NesterovODE, nag
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .base import Block, Envelope, Flow, State, Var
from .modified import ModifiedSGD, SignFlow
from .newton import Newton
from .registry import FLOWS, make_flow, register_flow
from .rmsprop import RMSprop
from .sgd import SGD

for _cls in (SGD, Adagrad, RMSprop, Adam, AdamW, Newton, NesterovODE, ModifiedSGD, SignFlow):
    register_flow(_cls)

__all__ = ["FLOWS", "make_flow", "register_flow", "Flow", "Block", "Envelope", "State", "Var",
           "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Newton", "NesterovODE", "ModifiedSGD",
           "SignFlow", "nag"]
