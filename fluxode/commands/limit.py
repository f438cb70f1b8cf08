"""Sweep the step h along a scaling path: discrete runs vs the continuous flow, fitted order.

Runs the discrete optimizer at each h to step-clock time T and integrates the path's limit
flow (or, with --modified, the flow's first-order modified flow: GD/heavy ball, RMSprop,
Adam) with dopri5 at 1e-12 in float64; prints the global error at T, the max error over
[0, T] and the fitted order with a 95% t-interval. A flow whose field is singular at its
declared start (``Flow.singular_start``: RMSprop, AdaGrad from v = 0) gets a note: its error
is not a power series in h from there, so the orders fall below the path's (½ for the
plain flow, 1 for the modified one). Example:

    fluxode limit --flow sgd --problem ravine --lr 0.01 --modified --out out/limit
"""

from __future__ import annotations

import json

import torch

from .. import threads
from ..flows import make_flow
from ..limits import default_hs, sweep
from ..paths import PATHS
from ..problems import make_problem
from .hyperparameters import add_flags, collect


def add_arguments(p):
    p.add_argument("--flow", default="sgd", help="flow name (see `fluxode flows`)")
    p.add_argument("--problem", default="quadratic", help="problem name (fluxode.problems)")
    p.add_argument("--path", default="rates", choices=[x for x in PATHS if x != "sqrt"])
    p.add_argument("--hs", type=float, nargs="+", help="step sizes (each must divide the largest)")
    p.add_argument("--T", type=float, default=10.0, help="end time on the step clock")
    p.add_argument("--modified", action="store_true", help="compare to the modified flow")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", help="write limit.json and limit.png into this folder")
    p.add_argument("--max-steps", type=int, default=100_000,
                   help="work budget: discrete steps at the smallest h, and solver steps of "
                        "the reference (default 100000)")
    add_flags(p)  # every hyperparameter of every flow: --lr, --momentum, --betas, ...


def run(args) -> int:
    from ..integrate import BudgetError

    flow = make_flow(args.flow, **collect(args, flow=args.flow))
    if args.out is not None:
        from ..io import check_writable

        check_writable(args.out)
    hs = args.hs or default_hs(args.T, 5, h_max=None)
    problem = make_problem(args.problem, dtype=torch.float64)
    try:
        with threads.for_size(problem.x0().numel()):
            s = sweep(flow, problem, T=args.T, hs=hs, path=args.path, modified=args.modified,
                      max_steps=args.max_steps)
    except BudgetError as err:
        raise ValueError(f"{err} (flags: --T, --hs, --max-steps)") from None
    rec = s.to_dict()
    if args.out:
        from pathlib import Path

        from ..io import write_json
        from ..plotting import plot_sweeps

        write_json(Path(args.out) / "limit.json", rec)
        rec["figure"] = str(plot_sweeps(s, Path(args.out) / "limit.png"))
    if args.json:
        print(json.dumps(rec, indent=1, default=str))
        return 0
    print(f"{s.flow} on {s.problem}, path {s.path}, vs {s.reference} flow, T = {s.T:g}")
    print(f"{'h':>10} {'error(T)':>12} {'max error':>12}")
    for h, e, m in zip(s.hs, s.errors, s.max_errors):
        print(f"{h:>10.4g} {e:>12.4e} {m:>12.4e}")
    lo, hi = s.order_ci
    print(f"order {s.order:.3f}  (95% CI [{lo:.3f}, {hi:.3f}]);  max-error order {s.max_order:.3f}")
    why = flow.singular_start()
    if why:
        print(f"note: {flow.name} starts where its field is singular ({why}); from there the "
              "error is not a power series in h, and the fitted order falls below the path's")
    if args.out:
        print(f"wrote {args.out}/limit.json, {rec['figure']}")
    return 0
