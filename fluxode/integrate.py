"""Integrate a flow on a problem with torchdiffeq, on one flat state buffer.

The state y = [W | aux… | clocks] (``fluxode.flat.FlatLayout``) starts from the consistent
initial condition

    S(0) = flow.init(W₀, G(W₀, clip(∇L(W₀)), H₀))

and solves dy/dτ = F(τ, y) on the step clock, F = the flow's field with g = clip(∇L(W)) from
the problem's oracle (H = ∇²L(W) for Newton's flow). Each field call writes dy/dτ into one
freshly allocated buffer through views: no per-evaluation concatenation.

Minibatch problems have a field that jumps at the integers (batch k on [k, k+1)): adaptive
solvers get them as ``jump_t`` (they stop there and re-evaluate F on the new side), fixed-grid
solvers get a grid through every integer and ``perturb=True``, so no step straddles a jump.

Statistics. ``nfe`` counts field calls (our wrapper). Adaptive Runge–Kutta solvers report
accepted and rejected steps through torchdiffeq's ``callback_accept_step`` /
``callback_reject_step`` hooks, which our field module implements; fixed-grid solvers call
``callback_step`` once per (always accepted) step. The same ``callback_step`` watches the
step size: a step below ``min_step``, or more than ``max_steps`` steps, stops the run with an
``IntegrationError`` instead of looping: ``min_step`` (absolute, off by default), a step
too small to advance τ in float64 (dt < 1e-14·τ), or more than ``max_steps`` steps.

Non-finite values. A fixed-grid solver stops at the first field call with a non-finite
value and names the state component and the time ("non-finite 'v' at τ=12.3"). An adaptive
solver instead *rejects* a step whose stages went non-finite (its error norm reads +∞, so the
step shrinks, as in diffrax): flows with an integrable singularity at τ = 0 (RMSprop and
Adagrad start from v = 0, where Ẇ ~ 1/√τ) are resolved by small first steps. If the step
then collapses, the error quotes the last non-finite value seen.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torchdiffeq
from torch import Tensor, nn

from .discretize import euler_step_
from .flat import FlatLayout
from .flows import Flow, make_flow
from .forces import clip_gradients_
from .problems import Problem, make_problem

ADAPTIVE = ("dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun")
FIXED = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")
METHODS = ADAPTIVE + FIXED


def _rms_norm(x: Tensor) -> Tensor:
    """torchdiffeq's default error norm: √mean(x²)."""
    return x.abs().pow(2).mean().sqrt()


class IntegrationError(RuntimeError):
    """The integration could not continue (non-finite values, collapsing step size)."""


@dataclass
class Trajectory:
    """A run sampled at step-clock times: ``states[name]`` has one row per time."""

    times: Tensor                      # (S,) float64 step-clock times τ
    states: dict[str, Tensor]          # "W": (S, n), aux: (S, n), clocks: (S,)
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
def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    return method


def _check_tol(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a number in (0, inf), got {value!r}")
    return float(value)


def _save_times(T, save_at) -> Tensor:
    if save_at is None:
        if T is None:
            raise ValueError("give T (the final step-clock time) or save_at (the save times)")
        T = _check_tol("T", T)
        n = int(T) if float(T).is_integer() and T <= 2000 else 200
        return torch.linspace(0.0, T, n + 1, dtype=torch.float64)
    t = torch.as_tensor(save_at, dtype=torch.float64).detach().cpu().reshape(-1)
    if t.numel() < 1 or not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError("save_at must be finite times in [0, inf)")
    if t.numel() > 1 and not (t[1:] > t[:-1]).all():
        raise ValueError("save_at times must be strictly increasing")
    if T is not None and float(T) != float(t[-1]):
        raise ValueError(f"T={T!r} disagrees with the last save time {float(t[-1])!r}")
    if t[-1] <= 0:
        raise ValueError("save_at must reach past τ = 0")
    return t


def _start(flow: Flow, problem: Problem, x0, dtype, device) -> Tensor:
    if dtype is not None and dtype != problem.dtype:
        raise ValueError(f"dtype {dtype} does not match the problem's {problem.dtype} "
                         "(mismatched dtypes: build the problem with this dtype)")
    if device is not None and torch.device(device).type != problem.device.type:
        raise ValueError(f"device {device} does not match the problem's {problem.device} "
                         "(mismatched devices: build the problem on this device)")
    W0 = problem.x0() if x0 is None else x0
    return problem.check_point(W0, "x0").detach().clone()


def initial_state(flow: Flow, problem: Problem, W0: Tensor):
    """S(0) = flow.init(W₀, G(W₀, clip(∇L(W₀)), H₀)) and the raw clipped g₀, H₀."""
    g0 = problem.grad(W0, 0.0)
    clip_gradients_([g0], flow.max_grad_norm)
    H0 = problem.hessian(W0) if flow.needs_hessian else None
    S = flow.init(W0.clone(), flow.effective_gradient(W0, g0, H0))
    return S, g0, H0


def _nonfinite_message(layout: FlatLayout, tau: float, y: Tensor, dy: Tensor | None,
                       g: Tensor | None) -> str | None:
    for name, sl in layout.slices.items():
        if not torch.isfinite(y[sl]).all():
            return f"non-finite {name!r} at τ={tau:.6g}"
    if g is not None and not torch.isfinite(g).all():
        return f"non-finite gradient ∇L(W) at τ={tau:.6g}"
    if dy is not None:
        for name, sl in layout.slices.items():
            if not torch.isfinite(dy[sl]).all():
                return f"non-finite rate d{name}/dτ at τ={tau:.6g}"
    return None


def all_finite(t: Tensor) -> bool:
    """True when every entry of t is finite. One summing pass decides the common case (a sum
    of finite numbers is finite unless it overflows); only then is it checked entry by entry."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


class _Field(nn.Module):
    """dy/dτ for torchdiffeq, with call counts, step hooks and finiteness checks."""

    def __init__(self, flow, problem, layout, min_step, max_steps, check_finite=True,
                 reject_nonfinite=False):
        super().__init__()
        self.flow, self.problem, self.layout = flow, problem, layout
        self.min_step, self.max_steps, self.check_finite = min_step, max_steps, check_finite
        self.reject_nonfinite = reject_nonfinite
        self.nfe = self.steps = self.accepted = self.rejected = 0
        self.min_dt = math.inf
        self.last_nonfinite: str | None = None

    def forward(self, t, y):
        self.nfe += 1
        tau = float(t)
        W = y[self.layout.slices["W"]]
        g = self.problem.grad(W, tau)
        clip_gradients_([g], self.flow.max_grad_norm)
        H = self.problem.hessian(W) if self.flow.needs_hessian else None
        out = torch.empty_like(y)
        self.layout.field_into(tau, y, g, out, H)
        if self.check_finite and not all_finite(out):
            msg = (_nonfinite_message(self.layout, tau, y, out, g)
                   or f"non-finite values at τ={tau:.6g}")
            if not self.reject_nonfinite:
                raise IntegrationError(msg)
            self.last_nonfinite = msg  # the adaptive solver's norm rejects this step
        return out

    def callback_step(self, t0, y0, dt):
        self.steps += 1
        dt = float(dt)
        self.min_dt = min(self.min_dt, dt)
        t0 = float(t0)
        if dt < self.min_step or dt <= 1e-14 * abs(t0) or not math.isfinite(dt):
            seen = f"; last problem seen: {self.last_nonfinite}" if self.last_nonfinite else ""
            raise IntegrationError(
                f"step size collapsed to {dt:.3g} at τ={t0:.6g} after {self.steps} steps "
                f"(min_step={self.min_step:.3g}): the flow is stiff or blowing up here{seen}; "
                "loosen rtol/atol, lower lr, or use a fixed-step method")
        if self.steps > self.max_steps:
            raise IntegrationError(
                f"more than max_steps={self.max_steps} solver steps before τ={float(t0):.6g} "
                f"(last step {dt:.3g}); raise max_steps or loosen rtol/atol")



class _AdaptiveField(_Field):
    """Adds torchdiffeq's accept/reject hooks (adaptive Runge–Kutta solvers only)."""

    def callback_accept_step(self, t0, y0, dt):
        self.accepted += 1
        self.last_nonfinite = None

    def callback_reject_step(self, t0, y0, dt):
        self.rejected += 1


def _finite_norm(norm):
    """An error norm that reads +∞ on non-finite input, so the solver rejects the step."""
    def wrapped(x):
        r = norm(x)
        r = torch.as_tensor(r)
        return torch.where(torch.isfinite(r), r, torch.full_like(r, math.inf))
    return wrapped


def _grid(times: Tensor, step: float, jumps: list[float]) -> Tensor:
    """Fixed-step grid: multiples of ``step`` plus every save time and jump, deduplicated."""
    T = float(times[-1])
    n = math.ceil(T / step - 1e-9)
    pts = torch.cat([torch.arange(n + 1, dtype=torch.float64) * step, times,
                     torch.tensor(jumps, dtype=torch.float64)])
    pts = torch.unique(pts.clamp(max=T))  # sorted
    keep = torch.ones_like(pts, dtype=torch.bool)
    keep[1:] = (pts[1:] - pts[:-1]) > 1e-9 * max(1.0, T)
    pts = pts[keep]
    # snap the save times and jumps themselves back onto the grid exactly
    for v in torch.cat([times, torch.tensor(jumps, dtype=torch.float64)]):
        pts[torch.argmin((pts - v).abs())] = v
    return pts


def integrate(flow: Flow | str, problem: Problem | str, x0: Tensor | None = None,
              T: float | None = None, save_at=None, method: str = "dopri5",
              rtol: float = 1e-7, atol: float = 1e-9, step_size: float | None = None,
              options: dict | None = None, dtype: torch.dtype | None = None, device=None,
              min_step: float | None = None, max_steps: int = 100_000,
              check_finite: bool = True, dense: bool = True,
              backend: str = "reference") -> Trajectory:
    """Solve the flow's ODE from S(0) over τ ∈ [0, T], sampled at ``save_at`` (default: every
    integer when T is a whole number ≤ 2000, else 201 points).

    ``method``: any torchdiffeq solver in ``METHODS``. Adaptive ones use ``rtol``/``atol``;
    fixed-grid ones take ``step_size`` (default 1/4 of a step) on a grid that contains every
    save time and minibatch boundary. ``explicit_adams`` defaults to ``max_order=5`` (the
    4th-order Adams–Bashforth method; torchdiffeq's default of 12 steps is unstable).
    ``dense=True`` reads adaptive solvers' save points off their dense output (free, but
    torchdiffeq's interpolant is 4th order, below dopri8's 8th); ``dense=False`` makes the
    solver step onto every save time (``step_t``), so saved values carry the method's order. ``options`` go to torchdiffeq as-is (e.g.
    ``max_order`` for the Adams methods). ``dtype``/``device``, when given, must match the
    problem's (the state lives where the problem does). ``backend``: "reference" evaluates the
    flow's field with the core (``vector_field``); "fused"/"auto" use the one-pass Adam-family
    field of ``fluxode.kernels`` (Triton on CUDA) where it applies."""
    flow = make_flow(flow) if isinstance(flow, str) else flow
    problem = make_problem(problem) if isinstance(problem, str) else problem
    method = _check_method(method)
    rtol, atol = _check_tol("rtol", rtol), _check_tol("atol", atol)
    times = _save_times(T, save_at)
    W0 = _start(flow, problem, x0, dtype, device)
    Tend = float(times[-1])
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an integer in [1, inf), got {max_steps!r}")
    min_step = 0.0 if min_step is None else _check_tol("min_step", min_step)

    S0, _, _ = initial_state(flow, problem, W0)
    layout = FlatLayout(flow, problem.dim, backend)
    y0 = layout.pack(S0)
    msg = _nonfinite_message(layout, 0.0, y0, None, None)
    if msg:
        raise ValueError(f"initial state: {msg}")

    t = times if times[0] == 0 else torch.cat([torch.zeros(1, dtype=torch.float64), times])
    jumps = problem.jump_times(Tend)
    opts = dict(options or {})
    if method in FIXED:
        step = 0.25 if step_size is None else _check_tol("step_size", step_size)
        if "step_size" in opts or "grid_constructor" in opts:
            raise ValueError("pass step_size as an argument, not in options")
        grid = _grid(t, step, jumps).to(y0.device)
        opts["grid_constructor"] = lambda f, y, tt: grid
        opts.setdefault("perturb", bool(jumps))
        if method == "explicit_adams":  # torchdiffeq's default (12) is unstable: AB4 instead
            opts.setdefault("max_order", 5)
    else:
        if step_size is not None:
            raise ValueError(f"step_size applies to fixed-grid methods {list(FIXED)}, "
                             f"not to {method!r} (use rtol/atol, or options['first_step'])")
        if jumps:
            opts["jump_t"] = torch.tensor(jumps, dtype=torch.float64)
        if not dense:
            on = [float(v) for v in t[1:-1] if float(v) not in set(jumps)]
            opts["step_t"] = torch.tensor(on, dtype=torch.float64)
        opts["norm"] = _finite_norm(opts.get("norm", _rms_norm))

    field_cls = _AdaptiveField if method in ADAPTIVE else _Field
    fn = field_cls(flow, problem, layout, min_step, max_steps, check_finite,
                   reject_nonfinite=method in ADAPTIVE)
    sync = y0.device.type == "cuda"
    start = time.perf_counter()
    try:
        with torch.no_grad():
            sol = torchdiffeq.odeint(fn, y0, t.to(y0.device), rtol=rtol, atol=atol,
                                     method=method, options=opts)
    except AssertionError as err:  # torchdiffeq's own guards: underflow, max_num_steps, NaN
        raise IntegrationError(f"{method}: {err} (at step {fn.steps}; loosen rtol/atol or "
                               "lower lr)") from None
    if sync:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    if times[0] != 0:
        sol = sol[1:]
    msg = _nonfinite_message(layout, Tend, sol[-1], None, None)
    if msg:
        raise IntegrationError(msg)

    stats = {"method": method, "nfe": fn.nfe, "steps": fn.steps, "wall_time_s": wall}
    if method in ADAPTIVE:
        stats.update(accepted=fn.accepted, rejected=fn.rejected, rtol=rtol, atol=atol,
                     min_step_taken=fn.min_dt)
    else:
        stats.update(accepted=fn.steps, rejected=0, step_size=step)
    return _trajectory(layout, problem, times, sol, "continuous", flow, stats)


def _trajectory(layout, problem, times, sol, kind, flow, stats) -> Trajectory:
    states = {}
    for name, sl in layout.slices.items():
        col = sol[:, sl]
        states[name] = col[:, 0] if name in flow.clocks else col
    with torch.no_grad():
        losses = torch.stack([problem.loss(w) for w in states["W"]]).double().cpu()
    return Trajectory(times.double().cpu(), states, losses, kind, flow.name, problem.name, stats)


def run_discrete_trajectory(flow: Flow | str, problem: Problem | str, steps: int,
                            h: float = 1.0, x0: Tensor | None = None, every: int = 1,
                            dtype: torch.dtype | None = None, device=None) -> Trajectory:
    """The discretizer (partitioned Euler, step h; h = 1 is torch.optim) from the same S(0),
    as a Trajectory at τ = k·h for every ``every``-th k (and the last)."""
    flow = make_flow(flow) if isinstance(flow, str) else flow
    problem = make_problem(problem) if isinstance(problem, str) else problem
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer in [0, inf), got {steps!r}")
    h = _check_tol("h", h)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an integer in [1, inf), got {every!r}")
    W0 = _start(flow, problem, x0, dtype, device)
    layout = FlatLayout(flow, problem.dim)
    start = time.perf_counter()
    S, g, H = initial_state(flow, problem, W0)
    taus, rows = [0.0], [layout.pack(S)]
    for k in range(steps):
        tau = k * h
        if k:
            g = problem.grad(S["W"], tau)
            clip_gradients_([g], flow.max_grad_norm)
            H = problem.hessian(S["W"]) if flow.needs_hessian else None
        euler_step_(flow, tau, S, g, h, H)
        if (k + 1) % every == 0 or k + 1 == steps:
            y = layout.pack(S)
            msg = _nonfinite_message(layout, (k + 1) * h, y, None, None)
            if msg:
                raise IntegrationError(f"discrete run: {msg} (step {k + 1})")
            taus.append((k + 1) * h)
            rows.append(y)
    wall = time.perf_counter() - start
    stats = {"method": "partitioned-euler", "h": h, "nfe": steps, "steps": steps,
             "accepted": steps, "rejected": 0, "wall_time_s": wall}
    return _trajectory(layout, problem, torch.tensor(taus, dtype=torch.float64),
                       torch.stack(rows), "discrete", flow, stats)
