"""Largest stable lr on L = ½λw²: bisection on the discrete map vs the closed-form threshold.

GD 2/λ, heavy ball (2+2μ)/λ, Nesterov (2+2μ)/((1+2μ)λ), RMSprop (2+2μ)(√v+ε)/λ and Adam
(2+2β₁)(√v+ε)/((1-β₁)λ) with the second moment v frozen. Example:

    fluxode stability --flow sgd --lam 1 10 100 --momentum 0 0.9

Any registered flow may be measured (every hyperparameter is a flag); the closed-form column
is "—" for a flow without a known threshold.
"""

from __future__ import annotations

import inspect
import json

from .. import threads
from ..flows.registry import FLOWS, flow_class, hyperparameter_names
from ..stability import formula_lr, max_stable_lr
from .hyperparameters import add_flags, collect

ALIASES = {"nesterov": ("sgd", {"nesterov": True})}  # kept from the fixed-choice CLI


def add_arguments(p):
    p.add_argument("--flow", default="sgd",
                   help=f"a flow ({', '.join(sorted(FLOWS))}) or nesterov (= sgd --nesterov)")
    p.add_argument("--lam", type=float, nargs="+", default=[1.0, 10.0, 100.0],
                   help="curvatures λ")
    p.add_argument("--momentum", type=float, nargs="+", default=None,
                   help="momenta μ to sweep: the flow's momentum, or β₁ of its betas "
                        "(default 0 0.9; none for a flow with neither)")
    p.add_argument("--v", type=float, default=1e-2, help="frozen second moment (adam, rmsprop)")
    add_flags(p, skip=("lr", "momentum"))  # lr is what is measured; --momentum is swept
    p.add_argument("--json", action="store_true")


def _momentum(cls, mu: float, hp: dict) -> dict:
    """μ as the flow's momentum hyperparameter, or as β₁ of its betas (from the signature)."""
    known = hyperparameter_names(cls) or ()
    if "momentum" in known:
        return {"momentum": mu}
    if "betas" in known:
        betas = hp.get("betas", inspect.signature(cls).parameters["betas"].default)
        return {"betas": (mu, *tuple(betas)[1:])}
    raise ValueError(f"flow {cls.name!r} has no momentum or betas hyperparameter to sweep "
                     "with --momentum")


def run(args) -> int:
    name, fixed = ALIASES.get(args.flow, (args.flow, {}))
    cls = flow_class(name)
    hp = {**fixed, **collect(args, flow=cls)}
    known = hyperparameter_names(cls) or ()
    momenta = args.momentum
    if momenta is None:
        momenta = [0.0, 0.9] if {"momentum", "betas"} & set(known) else [None]
    rows = []
    for lam in args.lam:
        for mu in momenta:
            opts = hp if mu is None else {**hp, **_momentum(cls, mu, hp)}
            with threads.for_size(1):  # L = ½λw²: one number
                num = max_stable_lr(name, lam, v=args.v, **opts)
            try:
                ref = formula_lr(name, lam, v=args.v, **opts)
            except ValueError:  # no closed form for this flow or these options
                ref = None
            rows.append({"flow": args.flow, "lam": lam, "momentum": mu, "numerical": num,
                         "formula": ref,
                         "rel_diff": None if ref is None else abs(num - ref) / ref})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'flow':<9}{'λ':>9}{'μ':>7}{'bisection':>14}{'formula':>14}{'rel diff':>10}")
    for r in rows:
        mu = "—" if r["momentum"] is None else f"{r['momentum']:g}"
        ref = "—" if r["formula"] is None else f"{r['formula']:.8g}"
        diff = "—" if r["rel_diff"] is None else f"{r['rel_diff']:.1e}"
        print(f"{r['flow']:<9}{r['lam']:>9g}{mu:>7}{r['numerical']:>14.8g}{ref:>14}{diff:>10}")
    return 0
