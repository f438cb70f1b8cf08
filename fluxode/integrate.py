"""Integrate a flow on a problem, and run its discrete map, as ``Trajectory`` records.

The state y = [W | aux… | clocks] (``fluxode.engine.Layout``) starts from the consistent
initial condition

    S(0) = flow.init(W₀, G(W₀, clip(∇L(W₀)), H₀))

(or from any given state at any τ₀) and ``fluxode.engine.solve`` integrates dy/dτ = F(τ, y)
on the step clock, F = the flow's field with g = clip(∇L(W)) from the problem's oracle
(H = ∇²L(W) for Newton's flow). Each field call writes dy/dτ into one buffer through views:
no per-evaluation concatenation.

Jumps. Minibatch problems have a field that jumps at the integers (batch k on [k, k+1)), and
a flow may declare jump times of its own (``Flow.jump_times``); the solver gets them all, so
no step straddles one. Guards, non-finite values and statistics: ``fluxode.engine.solve``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import engine
from .engine import ADAPTIVE, FIXED, METHODS, IntegrationError, Layout, all_finite
from .engine.layout import ADAPTIVE_REMEDY
from .engine.solve import check_max_steps
from .flows import Flow, State, make_flow
from .problems import Problem, make_problem

__all__ = [
    "ADAPTIVE",
    "FIXED",
    "METHODS",
    "IntegrationError",
    "Trajectory",
    "all_finite",
    "initial_state",
    "integrate",
    "run_discrete_trajectory",
]


@dataclass
class Trajectory:
    """A run sampled at step-clock times: ``states[name]`` has one row per time."""

    times: Tensor                      # (S,) float64 step-clock times τ
    states: dict[str, Tensor]          # "W": (S, n), aux: (S, …), clocks: (S,)
    losses: Tensor                     # (S,) float64 L(W(τ))
    kind: str                          # "continuous" or "discrete"
    flow: str
    problem: str
    stats: dict = field(default_factory=dict)

    @property
    def W(self) -> Tensor:
        return self.states["W"]

    def summary(self) -> dict:
        return {"kind": self.kind, "flow": self.flow, "problem": self.problem,
                "T": float(self.times[-1]), "final_loss": float(self.losses[-1]), **self.stats}


# --- validation ------------------------------------------------------------------------------
def _save_times(T, save_at, tau0: float = 0.0) -> Tensor:
    if save_at is None:
        if T is None:
            raise ValueError("give T (the final step-clock time) or save_at (the save times)")
        T = engine.check_positive("T", T)
        if T <= tau0:
            raise ValueError(f"T must be in (tau0, inf) = ({tau0:g}, inf), got {T!r}")
        span = T - tau0
        n = int(span) if float(span).is_integer() and span <= 2000 else 200
        return torch.linspace(tau0, T, n + 1, dtype=torch.float64)
    t = torch.as_tensor(save_at, dtype=torch.float64).detach().cpu().reshape(-1)
    if t.numel() < 1 or not torch.isfinite(t).all() or (t < tau0).any():
        raise ValueError(f"save_at must be finite times in [tau0, inf) = [{tau0:g}, inf)")
    if t.numel() > 1 and not (t[1:] > t[:-1]).all():
        raise ValueError("save_at times must be strictly increasing")
    if T is not None and float(T) != float(t[-1]):
        raise ValueError(f"T={T!r} disagrees with the last save time {float(t[-1])!r}")
    if t[-1] <= tau0:
        raise ValueError(f"save_at must reach past τ = {tau0:g}")
    return t


MAX_SAVED_BYTES = 2 ** 31  # the saved states of one run: 2 GiB


class BudgetError(ValueError):
    """A run whose work or memory, estimated before anything is allocated, is over budget."""


def check_budget(times: Tensor, method: str, step_size: float | None, max_steps: int,
                 size: int, itemsize: int = 8) -> None:
    """Refuse, before allocating, a solve over ``times`` whose fixed grid (step_size) has more
    than ``max_steps`` steps, or whose saved states (len(times) × ``size`` numbers) exceed
    ``MAX_SAVED_BYTES``. Adaptive methods are bounded while they run (``max_steps``)."""
    t0, T = float(times[0]), float(times[-1])
    if method in FIXED and isinstance(step_size, (int, float)) and 0 < step_size < math.inf:
        n = math.ceil((T - t0) / float(step_size))
        if n > max_steps:
            raise BudgetError(
                f"step_size={step_size:g} over [{t0:g}, {T:g}] is {n:.3g} solver steps, more "
                f"than max_steps={max_steps}: raise step_size, lower T, or raise max_steps")
    nbytes = len(times) * size * itemsize
    if nbytes > MAX_SAVED_BYTES:
        raise BudgetError(
            f"saving {len(times)} points of {size} numbers needs {nbytes / 2**30:.3g} GiB, over "
            f"the {MAX_SAVED_BYTES / 2**30:g} GiB budget: save fewer points or shorten T")


def _problem_and_start(flow, problem, x0, dtype, device) -> tuple[Flow, Problem, Tensor]:
    flow = make_flow(flow) if isinstance(flow, (str, type)) else flow
    problem = make_problem(problem) if isinstance(problem, str) else problem
    if dtype is not None and dtype != problem.dtype:
        raise ValueError(f"dtype {dtype} does not match the problem's {problem.dtype} "
                         "(mismatched dtypes: build the problem with this dtype)")
    if device is not None and torch.device(device).type != problem.device.type:
        raise ValueError(f"device {device} does not match the problem's {problem.device} "
                         "(mismatched devices: build the problem on this device)")
    W0 = problem.x0() if x0 is None else x0
    return flow, problem, problem.check_point(W0, "x0").detach().clone()


def _start_point(x0, state):
    """W₀: the given state's W when a state is given, else x0 (None: the problem's)."""
    return state["W"] if isinstance(state, dict) and "W" in state else x0


def initial_state(flow: Flow, problem: Problem, W0: Tensor, tau0: float = 0.0):
    """S(τ₀) = flow.init(W₀, G(W₀, clip(∇L(W₀)), H₀)) and the raw clipped g₀, H₀."""
    return engine.start(flow, problem, W0, tau0)


def _given_state(flow: Flow, problem: Problem, state: State) -> State:
    """A copy of a user-given start state, checked against the flow's declared variables."""
    if not isinstance(state, dict) or "W" not in state:
        raise ValueError("state must be a dict with 'W' and the flow's state variables")
    W = problem.check_point(state["W"], "state['W']").detach().clone()
    S = {"W": W}
    for v in flow.variables():
        if v.name not in state:
            raise ValueError(f"state lacks {v.name!r} (flow {flow.name!r} has "
                             f"{', '.join(flow.state_names)})")
        x = torch.as_tensor(state[v.name], dtype=W.dtype, device=W.device).detach().clone()
        if tuple(x.shape) != v.shape_for(W.shape):
            raise ValueError(f"state[{v.name!r}] has shape {tuple(x.shape)}, expected "
                             f"{v.shape_for(W.shape)}")
        S[v.name] = x
    return S


def _jumps(flow: Flow, problem: Problem, T: float) -> list[float]:
    return sorted({*problem.jump_times(T), *flow.jump_times(T)})


def integrate(flow: Flow | str, problem: Problem | str, x0: Tensor | None = None,
              T: float | None = None, save_at=None, method: str = "dopri5",
              rtol: float = 1e-7, atol: float = 1e-9, step_size: float | None = None,
              options: dict | None = None, dtype: torch.dtype | None = None, device=None,
              min_step: float | None = None, max_steps: int = 100_000,
              check_finite: bool = True, dense: bool = True,
              backend: str = "reference", state: State | None = None,
              tau0: float = 0.0, solver: str = "torchdiffeq") -> Trajectory:
    """Solve the flow's ODE from S(τ₀) over [τ₀, T], sampled at ``save_at`` (default: every
    integer when T - τ₀ is a whole number ≤ 2000, else 201 points).

    ``method``: any torchdiffeq solver in ``METHODS``. Adaptive ones use ``rtol``/``atol``;
    fixed-grid ones take ``step_size`` (default 1/4 of a step) on a grid that contains every
    save time and jump. ``dense=False`` makes adaptive solvers step onto every save time, so
    saved values carry the method's order. ``options`` go to torchdiffeq as-is.
    ``state``: start from this state (a dict with W and every state variable; default: the
    consistent start from x0) at step-clock time ``tau0``. ``dtype``/``device``, when given,
    must match the problem's. ``backend``: "reference" evaluates the flow's field with the
    core; "fused"/"auto" use the flow's one-pass fused field where it has one. ``solver``:
    "torchdiffeq" (default) or "torchode" (dopri5/euler, no jumps; ``engine.solve``)."""
    flow, problem, W0 = _problem_and_start(flow, problem, _start_point(x0, state), dtype,
                                           device)
    tau0 = float(tau0) if tau0 == 0 else engine.check_positive("tau0", tau0)
    times = _save_times(T, save_at, tau0)
    min_step = 0.0 if min_step is None else engine.check_positive("min_step", min_step)
    if method in FIXED and step_size is None:
        step_size = 0.25
    S0 = initial_state(flow, problem, W0, tau0)[0] if state is None \
        else _given_state(flow, problem, state)
    layout = Layout(flow, [W0.shape], backend)
    if state is None:
        engine.check_start([flow], method, f"{ADAPTIVE_REMEDY}, or start past it (state=, "
                           "tau0=)")
    check_budget(times, method, step_size, check_max_steps(max_steps), layout.size,
                 W0.element_size())
    y0 = layout.pack([S0])
    msg = layout.explain(tau0, y0)
    if msg:
        raise ValueError(f"initial state: {msg}")
    sl = layout.slices["W"]

    def rhs(tau: float, y: Tensor, out: Tensor) -> Tensor:
        g, H = engine.evaluate(flow, problem, y[sl], tau)
        return layout.field_into(tau, y, [g], out, H)

    t = times if times[0] == tau0 else torch.cat([torch.tensor([tau0], dtype=torch.float64),
                                                  times])
    Tend = float(times[-1])
    sol, stats = engine.solve(rhs, y0, t, method=engine.check_method(method), rtol=rtol,
                              atol=atol, step_size=step_size,
                              jumps=_jumps(flow, problem, Tend), max_steps=max_steps,
                              min_step=min_step, options=options, dense=dense,
                              check_finite=check_finite, into=True, solver=solver,
                              explain=lambda tau, y, dy: layout.explain(tau, y, dy))
    if times[0] != tau0:
        sol = sol[1:]
    return _trajectory(layout, problem, times, sol, "continuous", flow, stats)


def _trajectory(layout, problem, times, sol, kind, flow, stats) -> Trajectory:
    """Per-variable rows of the saved states (W as (S, n); scalars as (S,))."""
    unit = layout.units[0]
    states = {name: sol[:, sl].reshape(len(sol), *shp) for name, (sl, shp) in unit.items()}
    with torch.no_grad():
        losses = torch.stack([problem.loss(w) for w in states["W"]]).double().cpu()
    return Trajectory(times.double().cpu(), states, losses, kind, flow.name, problem.name, stats)


def run_discrete_trajectory(flow: Flow | str, problem: Problem | str, steps: int,
                            h: float | None = None, x0: Tensor | None = None, every: int = 1,
                            dtype: torch.dtype | None = None, device=None,
                            state: State | None = None, tau0: float = 0.0,
                            backend: str = "reference") -> Trajectory:
    """The discretizer (partitioned Euler, step h; h = 1 is torch.optim) from the same S(τ₀)
    as ``integrate``, as a Trajectory at τ₀ + k·h for every ``every``-th k (and the last).
    h: the step the flow carries (``paths.discrete_flow``), else 1; a different h is refused."""
    from .paths import step_of

    flow, problem, W0 = _problem_and_start(flow, problem, _start_point(x0, state), dtype,
                                           device)
    h = engine.check_positive("h", step_of(flow, h))
    tau0 = float(tau0) if tau0 == 0 else engine.check_positive("tau0", tau0)
    layout = Layout(flow, [W0.shape])
    if state is None:
        S, g, H = initial_state(flow, problem, W0, tau0)
        first = (g, H)
    else:
        S, first = _given_state(flow, problem, state), None

    def record(S, tau):
        y = layout.pack([S])
        if not all_finite(y):
            raise IntegrationError(f"discrete run: {layout.explain(tau, y)} (a step diverged: "
                                   "lower lr)")
        return y

    def stepper(flow, S, g, tau, h, H):
        engine.step_(flow, S, g, tau, h, H, backend)

    start = time.perf_counter()
    taus, rows = engine.run(flow, problem, S, steps, h=h, tau0=tau0, every=every, first=first,
                            record=record, stepper=stepper)
    stats = {"method": "partitioned-euler", "h": h, "nfe": steps, "steps": steps,
             "accepted": steps, "rejected": 0, "wall_time_s": time.perf_counter() - start}
    return _trajectory(layout, problem, torch.tensor(taus, dtype=torch.float64),
                       torch.stack(rows), "discrete", flow, stats)
