"""Flows: the built-in ones register here through the same registry plugins use (``registry``)."""

from __future__ import annotations

from .accelerated import NesterovODE, nag
from .adafactor import Adafactor
from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adamax import Adamax
from .asgd import ASGD
from .base import Block, Envelope, Flow, State, Var
from .lion import Lion
from .modified import ModifiedSGD, SignFlow
from .nadam import NAdam, RAdam
from .muon import Muon
from .newton import Newton
from .registry import FLOWS, make_flow, register_flow
from . import refusals  # noqa: F401  (SparseAdam, LBFGS: make_flow names the reason)
from .rmsprop import RMSprop
from .rprop import Rprop
from .schedulefree import ScheduleFreeAdamW, ScheduleFreeSGD
from .sgd import SGD
from .shampoo import Shampoo

for _cls in (SGD, Adagrad, RMSprop, Adam, AdamW, Newton, NesterovODE, ModifiedSGD, SignFlow,
             Adafactor, Muon, Lion, ScheduleFreeSGD, ScheduleFreeAdamW, Shampoo,
             NAdam, RAdam, Adamax, Adadelta, ASGD, Rprop):
    register_flow(_cls)

__all__ = ["FLOWS", "make_flow", "register_flow", "Flow", "Block", "Envelope", "State", "Var",
           "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Newton", "NesterovODE", "ModifiedSGD",
           "SignFlow", "nag",
           "Adafactor", "Muon", "Lion", "ScheduleFreeSGD", "ScheduleFreeAdamW", "Shampoo",
           "NAdam", "RAdam", "Adamax", "Adadelta", "ASGD", "Rprop"]
