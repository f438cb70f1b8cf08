"""Discrete vs continuous: the same flow, the same start S(0), aligned on the step clock.

The discrete run is the partitioned Euler map with step h (h = 1: torch.optim) at τ = k·h;
the continuous run is the ODE solved with a torchdiffeq method and sampled at exactly those
τ. Their gap over time:

    parameter distance   d(τ) = ‖W_disc(τ) - W_cont(τ)‖₂
    loss gap             Δ(τ) = L(W_disc(τ)) - L(W_cont(τ))

For gradient descent (Ẇ = -η∇L) the gap is O(h) over a fixed time as h → 0 (Euler's global
error), which tests check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import io
from .flows import Flow, make_flow
from .integrate import Trajectory, integrate, run_discrete_trajectory
from .problems import Problem, make_problem


@dataclass
class Comparison:
    """``continuous`` is sampled ``refine`` times per discrete step (for smooth plots);
    ``continuous_aligned`` is its rows at the discrete times, which the distances use."""

    discrete: Trajectory
    continuous: Trajectory
    label: str = ""
    refine: int = 1

    @property
    def continuous_aligned(self) -> Trajectory:
        c, r = self.continuous, self.refine
        if r == 1:
            return c
        return Trajectory(c.times[::r], {k: v[::r] for k, v in c.states.items()},
                          c.losses[::r], c.kind, c.flow, c.problem, c.stats)

    @property
    def times(self) -> Tensor:
        return self.discrete.times

    @property
    def param_distance(self) -> Tensor:
        diff = (self.discrete.W - self.continuous_aligned.W).double()
        return torch.linalg.vector_norm(diff, dim=1).cpu()

    @property
    def loss_gap(self) -> Tensor:
        return self.discrete.losses - self.continuous_aligned.losses

    def summary(self) -> dict:
        d = self.param_distance
        c = self.continuous.stats
        return {
            "flow": self.discrete.flow, "problem": self.discrete.problem, "label": self.label,
            "steps": self.discrete.stats["steps"],
            "h": self.discrete.stats["h"], "T": float(self.times[-1]),
            "max_param_distance": float(d.max()), "final_param_distance": float(d[-1]),
            "max_abs_loss_gap": float(self.loss_gap.abs().max()),
            "final_loss_discrete": float(self.discrete.losses[-1]),
            "final_loss_continuous": float(self.continuous.losses[-1]),
            "initial_loss": float(self.discrete.losses[0]),
            "method": c["method"], "nfe": c["nfe"], "solver_steps": c["steps"],
            "accepted": c["accepted"], "rejected": c["rejected"],
            "wall_time_continuous_s": c["wall_time_s"],
            "wall_time_discrete_s": self.discrete.stats["wall_time_s"],
        }


def compare(flow: Flow | str, problem: Problem | str, steps: int, h: float = 1.0,
            x0: Tensor | None = None, method: str = "dopri5", rtol: float = 1e-7,
            atol: float = 1e-9, step_size: float | None = None, options: dict | None = None,
            label: str = "", refine: int = 1, max_steps: int = 100_000) -> Comparison:
    """Run the discretizer for ``steps`` steps of size h and integrate the flow to T = steps·h
    from the same S(0); both sampled at τ = k·h (the ODE also ``refine`` - 1 times between).

    Work is bounded before anything runs: ``steps`` (and the solver's steps) at most
    ``max_steps``, and the saved states within ``integrate.MAX_SAVED_BYTES``."""
    flow = make_flow(flow) if isinstance(flow, str) else flow
    problem = make_problem(problem) if isinstance(problem, str) else problem
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer in [1, inf) for a comparison, got {steps!r}")
    if isinstance(refine, bool) or not isinstance(refine, int) or refine < 1:
        raise ValueError(f"refine must be an integer in [1, inf), got {refine!r}")
    from .engine.solve import check_max_steps
    from .integrate import MAX_SAVED_BYTES, BudgetError

    check_max_steps(max_steps)
    if steps > max_steps:
        raise BudgetError(f"steps={steps} is more than max_steps={max_steps} (the work budget "
                          "of the discrete run and of the solver): lower steps or raise "
                          "max_steps")
    n = problem.x0().numel() * (1 + len(flow.variables()))
    nbytes = (steps * refine + 1) * n * 8 * 2
    if nbytes > MAX_SAVED_BYTES:
        raise BudgetError(f"{steps} steps × refine {refine} of {n} numbers need "
                          f"{nbytes / 2**30:.3g} GiB of saved states, over the "
                          f"{MAX_SAVED_BYTES / 2**30:g} GiB budget: lower steps or refine")
    disc = run_discrete_trajectory(flow, problem, steps, h=h, x0=x0)
    k = torch.arange(steps * refine + 1, dtype=torch.float64)
    save_at = disc.times if refine == 1 else k * (float(h) / refine)
    if refine > 1:
        save_at[::refine] = disc.times  # the aligned samples sit exactly on τ = k·h
    cont = integrate(flow, problem, x0=x0, save_at=save_at, method=method, rtol=rtol,
                     atol=atol, step_size=step_size, options=options, max_steps=max_steps)
    return Comparison(disc, cont, label or flow.name, refine)


# --- the demo: a ball in a ravine, and Rosenbrock's banana --------------------------------------
DEMO_FLOWS: dict[str, list[tuple[str, str, dict]]] = {
    # (label, flow, hyperparameters) per problem; rates chosen stable for the discrete map
    "ravine": [
        ("SGD", "sgd", dict(lr=0.015)),
        ("SGD + momentum 0.9", "sgd", dict(lr=0.015, momentum=0.9)),
        ("RMSprop", "rmsprop", dict(lr=0.01)),
        ("Adam", "adam", dict(lr=0.05)),
    ],
    "rosenbrock": [
        ("SGD", "sgd", dict(lr=1e-3)),
        ("SGD + momentum 0.9", "sgd", dict(lr=1e-3, momentum=0.9)),
        ("RMSprop", "rmsprop", dict(lr=3e-3)),
        ("Adam", "adam", dict(lr=5e-2)),
    ],
}
DEMO_STEPS = {"ravine": 100, "rosenbrock": 400}


def demo_comparisons(dtype: torch.dtype = torch.float64) -> dict[str, list[Comparison]]:
    """Discrete (h = 1, torch.optim) vs continuous (dopri5) runs of four optimizers on the
    ravine and on Rosenbrock."""
    out = {}
    for pname, rows in DEMO_FLOWS.items():
        problem = make_problem(pname, dtype=dtype)
        out[pname] = [compare(make_flow(f, **hp), problem, DEMO_STEPS[pname], rtol=1e-5,
                              atol=1e-7, label=label, refine=4) for label, f, hp in rows]
    return out


def demo_panels(out_dir: str | Path) -> dict:
    """Write the side-by-side figures (trajectories over loss contours, loss curves,
    distance over time) and ``compare_summary.json`` to ``out_dir``; return the summary."""
    from . import plotting

    start = time.perf_counter()
    out_dir = Path(out_dir)
    runs = demo_comparisons()
    figures = []
    for pname, comps in runs.items():
        problem = make_problem(pname)
        figures.append(plotting.save(plotting.trajectory_panels(problem, comps),
                                     out_dir / f"{pname}_trajectories.png"))
        figures.append(plotting.save(plotting.loss_curves(comps, title=f"{pname}: loss"),
                                     out_dir / f"{pname}_losses.png"))
        figures.append(plotting.save(plotting.distance_curves(comps,
                                                              title=f"{pname}: discrete vs continuous"),
                                     out_dir / f"{pname}_distance.png"))
    summary = {"runs": [c.summary() for comps in runs.values() for c in comps],
               "figures": [str(p) for p in figures],
               "wall_time_s": time.perf_counter() - start}
    io.write_json(out_dir / "compare_summary.json", summary)
    return summary
