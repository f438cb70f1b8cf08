"""Run a flow discretely (h = 1: torch.optim) and as an ODE from the same start; compare them.

Writes trajectories.png (2-D problems), losses.png, distance.png and summary.json to --out.
Hyperparameters use torch.optim's names; only the ones given are passed to the flow.
Without --flow/--problem, --demo writes the side-by-side demo panels (ravine, Rosenbrock).
"""

from __future__ import annotations

import json

import torch

from .. import io, threads
from ..flows import FLOWS, make_flow
from ..integrate import METHODS, BudgetError
from ..problems import PROBLEMS, make_problem
from .hyperparameters import add_flags, collect, flag

# what --demo ignores: refused when given with a value other than the default
RUN_FLAGS = {"method": "dopri5", "rtol": 1e-7, "atol": 1e-9, "step_size": None, "steps": 100,
             "h": 1.0, "refine": 4, "dtype": "float64", "max_steps": 100_000}


def add_arguments(p):
    p.add_argument("--flow", help=f"one of {sorted(FLOWS)}")
    p.add_argument("--problem", help=f"one of {sorted(PROBLEMS)}")
    p.add_argument("--method", default="dopri5", help=f"torchdiffeq solver: {', '.join(METHODS)}")
    p.add_argument("--rtol", type=float, default=1e-7)
    p.add_argument("--atol", type=float, default=1e-9)
    p.add_argument("--step-size", type=float, default=None, help="fixed-grid methods only")
    p.add_argument("--steps", type=int, default=100, help="discrete steps (T = steps·h)")
    p.add_argument("--h", type=float, default=1.0, help="discrete step size on the step clock")
    p.add_argument("--refine", type=int, default=4, help="ODE samples per step for plots")
    p.add_argument("--max-steps", type=int, default=100_000,
                   help="work budget: discrete steps and solver steps (default 100000)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--out", default="fluxode-compare", help="output folder")
    p.add_argument("--demo", action="store_true", help="write the demo panels instead")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_flags(p)  # last: a flow hyperparameter named like a flag above (--h) stays the command's


def run(args) -> int:
    from .. import compare as cmp
    from .. import plotting

    out = io.check_writable(args.out)
    if args.demo:
        given = [f for f, v in (("--flow", args.flow), ("--problem", args.problem)) if v]
        given += [flag(k) for k, v in RUN_FLAGS.items() if getattr(args, k) != v]
        given += [flag(k) for k in collect(args)]
        if given:
            raise ValueError(f"--demo runs its own flows and problems: drop {', '.join(given)} "
                             "(or drop --demo)")
        with threads.for_size(2):  # the ravine and Rosenbrock are 2-D
            summary = cmp.demo_panels(out)
        _report(args, summary, [f"{r['problem']:<10} {r['label']:<20} max ‖ΔW‖ "
                                f"{r['max_param_distance']:.3g}" for r in summary["runs"]])
        return 0
    if not args.flow or not args.problem:
        raise ValueError("give --flow and --problem (or --demo)")
    flow = make_flow(args.flow, **collect(args, flow=args.flow))
    problem = make_problem(args.problem, dtype=getattr(torch, args.dtype))
    try:
        with threads.for_size(problem.x0().numel()):
            comp = cmp.compare(flow, problem, args.steps, h=args.h, method=args.method,
                               rtol=args.rtol, atol=args.atol, step_size=args.step_size,
                               label=f"{flow.name}, lr={flow.lr:g}", refine=args.refine,
                               max_steps=args.max_steps)
    except BudgetError as err:
        raise ValueError(f"{err} (flags: --steps, --refine, --step-size, --max-steps)") from None
    figures = []
    if problem.dim == 2:
        figures.append(plotting.save(plotting.trajectory_panels(problem, [comp]),
                                     out / "trajectories.png"))
    figures.append(plotting.save(plotting.loss_curves([comp], title=f"{problem.name}: loss"),
                                 out / "losses.png"))
    figures.append(plotting.save(plotting.distance_curves([comp], title=problem.name),
                                 out / "distance.png"))
    summary = {**comp.summary(), "hyperparameters": flow.hyperparameters(),
               "figures": [str(f) for f in figures]}
    io.write_json(out / "summary.json", summary)
    _report(args, summary, [
        f"{flow.name} on {problem.name}: {summary['steps']} steps of h={args.h:g} vs "
        f"{args.method} (nfe {summary['nfe']}, {summary['accepted']} accepted, "
        f"{summary['rejected']} rejected)",
        f"  parameter distance: max {summary['max_param_distance']:.4g}, final "
        f"{summary['final_param_distance']:.4g}",
        f"  final loss: discrete {summary['final_loss_discrete']:.6g}, continuous "
        f"{summary['final_loss_continuous']:.6g}"])
    return 0


def _report(args, summary, lines):
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print("\n".join(lines))
        print(f"wrote {args.out}/")
