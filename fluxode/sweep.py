"""Batched hyperparameter sweeps: P points of one flow run as one computation.

The P points of a grid (e.g. lr × betas) share a batch dimension: W and every auxiliary state
is a (P, n) tensor, one row per point, and the flow's own blocks are evaluated once per step
(or field evaluation) on the whole batch. A hyperparameter that varies across the points
becomes a ``Column``: the P values as Python floats. Column arithmetic is elementwise in
Python floats, so every coefficient a flow derives (1-β, -η/c₁, 1-ηλ, …) has exactly the
value it has in the per-point run; where a Column meets a tensor it becomes a (P, 1) tensor
broadcast along the rows. The rate expressions are then applied with the same floating-point
operations as ``rates.*.euler_`` (``x.add_(a, alpha=c)`` ≡ ``x.addcmul_(a, c)``, ``x.addcmul_(a, b,
value=c)`` ≡ ``x.addcmul_(c·a, b)``, …), so the discrete sweep equals the per-point
``run_discrete`` bit for bit (checked in the tests); the continuous sweep integrates one ODE of
shape (P, size) with torchdiffeq.

Limits of the design (the flows read some values as Python scalars):
- Branches on a hyperparameter (``if momentum``, ``amsgrad``) must agree across the points.
- Clocks are scalars shared by a batch: points whose clocks run at different rates (Adam with
  different betas) are split into groups with equal clock rates, one batch each.
- The continuous sweep with an adaptive method controls the error of all points together
  (max over points of each point's RMS norm): same tolerance, different steps than per point.
"""

from __future__ import annotations

import copy
import itertools
import math
import operator
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import engine
from .discretize import run_discrete, vector_field
from .flows import Envelope, Flow, make_flow
from .flows.rates import Clock, Exact, Linear, Toward
from .problems import Problem, make_problem


class NotUniform(ValueError):
    """A flow branched on (or read as one float) a hyperparameter that differs across points."""


class Column:
    """P per-point values of one hyperparameter, acting like a float in the flows' arithmetic."""

    __slots__ = ("values",)

    def __init__(self, values):
        self.values = tuple(float(v) for v in values)

    def __len__(self):
        return len(self.values)

    def __repr__(self):
        return f"Column({list(self.values)})"

    # arithmetic: elementwise in Python floats (bitwise the per-point values)
    def _map(self, other, op):
        if isinstance(other, Column):
            return Column(op(a, b) for a, b in zip(self.values, other.values))
        if isinstance(other, (int, float)):
            return Column(op(a, other) for a in self.values)
        return NotImplemented

    def _rmap(self, other, op):
        if isinstance(other, (int, float)):
            return Column(op(other, a) for a in self.values)
        return NotImplemented

    def __add__(self, o): return self._map(o, operator.add)
    def __radd__(self, o): return self._rmap(o, operator.add)
    def __sub__(self, o): return self._map(o, operator.sub)
    def __rsub__(self, o): return self._rmap(o, operator.sub)
    def __mul__(self, o): return self._map(o, operator.mul)
    def __rmul__(self, o): return self._rmap(o, operator.mul)
    def __truediv__(self, o): return self._map(o, operator.truediv)
    def __rtruediv__(self, o): return self._rmap(o, operator.truediv)
    def __pow__(self, o): return self._map(o, operator.pow)
    def __rpow__(self, o): return self._rmap(o, operator.pow)
    def __neg__(self): return Column(-a for a in self.values)
    def __abs__(self): return Column(abs(a) for a in self.values)

    # branches: allowed only where every point takes the same one
    def _uniform(self, truths, what):
        truths = set(truths)
        if len(truths) > 1:
            raise NotUniform(f"the flow branches on a swept hyperparameter ({what} differs "
                             f"across the points {list(self.values)}): sweep it in separate calls")
        return truths.pop()

    def _cmp(self, other, op):
        if isinstance(other, Column):
            return self._uniform((op(a, b) for a, b in zip(self.values, other.values)),
                                 op.__name__)
        return self._uniform((op(a, other) for a in self.values), op.__name__)

    def __eq__(self, o): return self._cmp(o, operator.eq)
    def __ne__(self, o): return self._cmp(o, operator.ne)
    def __lt__(self, o): return self._cmp(o, operator.lt)
    def __le__(self, o): return self._cmp(o, operator.le)
    def __gt__(self, o): return self._cmp(o, operator.gt)
    def __ge__(self, o): return self._cmp(o, operator.ge)
    def __bool__(self): return self._uniform((bool(a) for a in self.values), "truth")
    __hash__ = None

    def __float__(self):
        return self._uniform(self.values, "a value read as one float")

    # tensors: a (P, 1) column broadcast along the rows
    def tensor(self, like: Tensor) -> Tensor:
        return torch.tensor(self.values, dtype=like.dtype, device=like.device).unsqueeze(1)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        like = next((a for a in itertools.chain(args, kwargs.values())
                     if isinstance(a, Tensor)), None)
        if like is None:
            like = torch.empty(0, dtype=torch.float64)

        def conv(a):
            return a.tensor(like) if isinstance(a, Column) else a

        return func(*map(conv, args), **{k: conv(v) for k, v in kwargs.items()})


def _has_column(*xs) -> bool:
    return any(isinstance(x, Column) for x in xs)


# --- grids and batched flows -------------------------------------------------------------------
def grid_points(grid: dict) -> list[dict]:
    """The Cartesian product of ``grid`` ({name: [values...]}) as a list of points, in order."""
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"grid must be a non-empty dict {{hyperparameter: [values]}}, got {grid!r}")
    for k, vs in grid.items():
        if not isinstance(vs, (list, tuple)) or not vs:
            raise ValueError(f"grid[{k!r}] must be a non-empty list of values, got {vs!r}")
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*grid.values())]


def _column_of(name: str, values: list):
    first = values[0]
    if all(v == first and type(v) is type(first) for v in values):
        return first
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return Column(values)
    if all(isinstance(v, tuple) for v in values) and len({len(v) for v in values}) == 1:
        return tuple(_column_of(f"{name}[{i}]", [v[i] for v in values])
                     for i in range(len(first)))
    raise NotUniform(f"{name} changes the flow's structure across the points "
                     f"({first!r} vs others): sweep it in separate calls")


def batched_flow(flows: list[Flow]) -> Flow:
    """One flow whose varying numeric attributes are Columns over ``flows`` (all validated on
    construction, one per point, same class and structure)."""
    proto = flows[0]
    if any(type(f) is not type(proto) for f in flows):
        raise ValueError("all points must use the same flow")
    bf = copy.copy(proto)
    for name in vars(proto):
        setattr(bf, name, _column_of(name, [vars(f)[name] for f in flows]))
    return bf


def clock_rates(flow: Flow) -> tuple:
    """The flow's clock rates (the keeps of its ``Clock`` expressions), probed at τ = 0 on a
    one-parameter state: points with equal clock rates share their clocks in a batch."""
    if not flow.clocks:
        return ()
    W = torch.zeros(1, dtype=torch.float64)
    g = torch.ones(1, dtype=torch.float64)
    S = flow.init(W, flow.effective_gradient(W, g))
    out = []
    for block in flow.blocks():
        if isinstance(block, Envelope) or not set(block.names) & set(flow.clocks):
            continue
        for name, rate in zip(block.names, block.field(0.0, S, g)):
            if isinstance(rate, Clock):
                out.append((name, rate.keep))
    return tuple(out)


def _groups(flows: list[Flow]) -> list[list[int]]:
    keys: dict = {}
    for i, f in enumerate(flows):
        keys.setdefault(clock_rates(f), []).append(i)
    return list(keys.values())


# --- batched oracle ------------------------------------------------------------------------------
def batched_grad(problem: Problem):
    """(W (P, n), τ) → ∇L per row, by ``torch.func.vmap`` over the problem's gradient (or over
    ``torch.func.grad`` of its loss when the gradient uses autograd directly)."""
    vg = torch.func.vmap(problem.grad, in_dims=(0, None))
    try:
        vg(problem.x0().unsqueeze(0), 0.0)
        return vg
    except Exception:  # noqa: BLE001 - autograd-based oracles are not vmappable
        def loss(w, tau):
            return problem.loss(w, tau) if problem.piecewise else problem.loss(w)
        return torch.func.vmap(torch.func.grad(loss), in_dims=(0, None))


def clip_rows_(G: Tensor, max_norm) -> None:
    """``clip_gradients_`` per row (point): g ← g·min(1, max_norm/(‖g‖ + 1e-6))."""
    if max_norm is None:
        return
    norm = torch.linalg.vector_norm(torch.linalg.vector_norm(G, dim=1, keepdim=True), dim=1,
                                    keepdim=True)
    G.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))


# --- the batched discrete map --------------------------------------------------------------------
def _euler_(rate, x: Tensor, h: float) -> None:
    """``rate.euler_(x, h)`` with Column coefficients as (P, 1) tensors, same operations."""
    if isinstance(rate, Exact):
        if h == rate.step:
            x.copy_(rate.value)
        else:
            _euler_(rate.inner, x, h)
        return
    if isinstance(rate, Linear) and _has_column(rate.decay, rate.keep,
                                                *(t.coef for t in rate.terms)):
        factor = rate.keep if h == 1.0 and rate.keep is not None else 1.0 - h * rate.decay
        if isinstance(factor, Column):
            x.mul_(factor.tensor(x))  # a factor of 1.0 is exact
        elif factor != 1.0:
            x.mul_(factor)
        for t in rate.terms:
            c = t.coef if h == 1.0 else h * t.coef
            if not isinstance(c, Column):
                Linear((t,)).euler_(x, h)  # the per-point operation itself
            elif t.op == "mul":
                x.addcmul_(c.tensor(x) * t.a, t.b)         # x + (c·a)·b
            elif t.op == "div":
                x.addcdiv_(c.tensor(x) * t.a, t.b)         # x + (c·a)/b
            elif isinstance(t.a, Tensor):
                x.addcmul_(t.a, c.tensor(x))               # x.add_(a, alpha=c)
            else:
                x.add_((c * t.a).tensor(x))
    elif isinstance(rate, Toward) and _has_column(rate.rate_, rate.target):
        w = rate.rate_ if h == 1.0 else h * rate.rate_
        target = rate.target.tensor(x).expand_as(x) if isinstance(rate.target, Column) \
            else rate.target if isinstance(rate.target, Tensor) else torch.full_like(x, rate.target)
        x.lerp_(target, w.tensor(x) if isinstance(w, Column) else w)
    elif isinstance(rate, Clock) and _has_column(rate.keep):  # pragma: no cover - grouped away
        raise NotUniform("clocks with per-point rates cannot share a batch")
    else:
        rate.euler_(x, h)


def _clip_rows(grads: list[Tensor], max_norm) -> None:
    """The engine's clipping hook for a batched gradient: per row."""
    clip_rows_(grads[0], max_norm)


def _euler_step_(flow: Flow, S: dict, g: Tensor, tau: float, h: float, H=None) -> None:
    """``discretize.euler_step_`` on a batched state (rows = points): the engine's stepper."""
    ge = flow.effective_gradient(S["W"], g)
    for block in flow.blocks():
        if isinstance(block, Envelope):
            torch.maximum(S[block.name], S[block.source], out=S[block.name])
            continue
        for name, rate in zip(block.names, block.field(tau, S, ge)):
            _euler_(rate, S[name], h)


@dataclass
class SweepResult:
    """Per-point results, rows in the order of ``points``."""

    flow: str
    problem: str
    points: list[dict]
    times: Tensor                   # (K,) step-clock times
    W: Tensor                       # (P, K, n) trajectories
    final_loss: Tensor              # (P,)
    final_error: Tensor | None      # (P,) ‖W(T) - W*‖ when the problem knows W*
    stats: dict = field(default_factory=dict)
    diverged: Tensor | None = None  # (P,) bool: the point's trajectory turned non-finite

    def report(self) -> list[str]:
        """One line per diverged point: the point and the first time it was non-finite."""
        return [f"point {d['point']} diverged (non-finite from τ = {d['time']:g})"
                for d in self.stats.get("diverged", [])]


def _setup(flow_name, problem, grid, fixed):
    problem = make_problem(problem) if isinstance(problem, str) else problem
    points = grid_points(grid)
    for p in points:
        clash = set(p) & set(fixed)
        if clash:
            raise ValueError(f"{sorted(clash)} given both in grid and as fixed hyperparameters")
    flows = [make_flow(flow_name, **fixed, **p) for p in points]
    if flows[0].needs_hessian:
        raise ValueError(f"flow {flow_name!r} needs a Hessian: batched sweeps support "
                         "first-order flows")
    return problem, points, flows


def _start(problem: Problem, W0) -> Tensor:
    W0 = problem.x0() if W0 is None else W0
    return problem.check_point(W0, "W0").detach().clone()


def _result(flow_name, problem, points, times, W, stats) -> SweepResult:
    with torch.no_grad():
        losses = torch.stack([problem.loss(w) for w in W[:, -1]]).double()
    err = None
    if getattr(problem, "minimizer", None) is not None:
        err = torch.linalg.vector_norm(W[:, -1] - problem.minimizer, dim=1).double()
    return SweepResult(flow_name, problem.name, points, times, W, losses, err, stats)


def _batched(fn):
    """Run a batched kernel, turning a hyperparameter the flow cannot batch into a ValueError."""
    try:
        return fn()
    except NotUniform:
        raise
    except TypeError as err:
        if "Column" not in str(err):
            raise
        raise ValueError(f"a swept hyperparameter reaches an operation that needs one number "
                         f"({err}); sweep it in separate calls") from None


def sweep_discrete(flow_name: str, problem, grid: dict, steps: int, h: float = 1.0,
                   W0: Tensor | None = None, every: int = 1, **fixed) -> SweepResult:
    """The partitioned Euler map (h = 1: torch.optim) at every grid point, batched. Equal, bit
    for bit, to ``run_discrete(make_flow(flow_name, **fixed, **point), problem.grad, W0, steps,
    h)`` per point (when the batched gradient is)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer in [0, inf), got {steps!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an integer in [1, inf), got {every!r}")
    if not (isinstance(h, (int, float)) and math.isfinite(h) and h > 0):
        raise ValueError(f"h must be in (0, inf), got {h!r}")
    problem, points, flows = _setup(flow_name, problem, grid, fixed)
    W0 = _start(problem, W0)
    from .integrate import MAX_SAVED_BYTES, BudgetError

    saved = steps // every + 1 + (steps % every != 0)
    nbytes = len(points) * saved * W0.numel() * W0.element_size()
    if nbytes > MAX_SAVED_BYTES:
        raise BudgetError(f"{len(points)} points × {saved} saved steps of {W0.numel()} numbers "
                          f"need {nbytes / 2**30:.3g} GiB, over the {MAX_SAVED_BYTES / 2**30:g} "
                          "GiB budget: lower steps, raise every, or sweep fewer points")
    oracle = engine.Oracle(batched_grad(problem))
    keep = [k for k in range(0, steps + 1, every)] + ([steps] if steps % every else [])
    W = torch.empty(len(points), len(keep), W0.numel(), dtype=W0.dtype, device=W0.device)
    start = time.perf_counter()
    groups = _groups(flows)
    for rows in groups:
        flow = batched_flow([flows[i] for i in rows])

        def run(rows=rows, flow=flow):
            Wb = W0.expand(len(rows), -1).clone()
            S, g, _ = engine.start(flow, oracle, Wb, clip=_clip_rows)
            _, traj = engine.run(flow, oracle, S, steps, h=h, every=every, first=(g, None),
                                 stepper=_euler_step_, clip=_clip_rows)
            W[rows] = torch.stack(traj, 1)

        _batched(run)
    stats = {"kind": "discrete", "h": h, "steps": steps, "batches": len(groups),
             "wall_time_s": time.perf_counter() - start}
    times = torch.tensor(keep, dtype=torch.float64) * h
    finite = torch.isfinite(W).all(dim=2)  # (P, K)
    diverged = ~finite.all(dim=1)
    stats["diverged"] = [{"point": points[i], "index": i,
                          "time": float(times[int((~finite[i]).nonzero()[0])])}
                         for i in diverged.nonzero().flatten().tolist()]
    res = _result(flow_name, problem, points, times, W, stats)
    res.diverged = diverged
    if stats["diverged"]:
        import warnings

        lines = res.report()
        warnings.warn(f"sweep_discrete: {len(lines)} of {len(points)} points diverged "
                      f"(rows marked in .diverged, NaN/inf in W): {'; '.join(lines[:5])}"
                      + (" ..." if len(lines) > 5 else ""), RuntimeWarning, stacklevel=2)
    return res


def sweep_continuous(flow_name: str, problem, grid: dict, T: float, save_at=None,
                     method: str = "rk4", step_size: float = 0.25, rtol: float = 1e-7,
                     atol: float = 1e-9, W0: Tensor | None = None, max_steps: int = 100_000,
                     **fixed) -> SweepResult:
    """The continuous flow at every grid point, integrated as one ODE of shape (P, size) by
    ``fluxode.engine.solve``. Fixed-grid methods use the grid of ``fluxode.integrate.integrate``
    (step ``step_size``) and equal its per-point solution; adaptive methods accept a step only
    when every point meets rtol/atol (max over points of the RMS error ratio) and stop after
    ``max_steps`` steps. A point whose trajectory is not finite raises, naming the point."""
    from .integrate import _save_times

    engine.check_method(method)
    for name, v in (("step_size", step_size), ("rtol", rtol), ("atol", atol)):
        engine.check_positive(name, v)
    problem, points, flows = _setup(flow_name, problem, grid, fixed)
    if problem.piecewise:
        raise ValueError("continuous sweeps need a smooth field (not a minibatch sequence)")
    times = _save_times(T, save_at)
    t = times if times[0] == 0 else torch.cat([torch.zeros(1, dtype=torch.float64), times])
    W0 = _start(problem, W0)
    oracle = engine.Oracle(batched_grad(problem))
    layout = engine.Layout(flows[0], [(W0.numel(),)])
    from .engine.solve import check_max_steps
    from .integrate import check_budget

    check_budget(t, method, step_size, check_max_steps(max_steps),
                 len(points) * layout.size, W0.element_size())
    slices = layout.slices
    W = torch.empty(len(points), len(times), W0.numel(), dtype=W0.dtype, device=W0.device)
    nfe = [0]
    start = time.perf_counter()
    groups = _groups(flows)
    for rows in groups:
        flow = batched_flow([flows[i] for i in rows])
        clocks = {v.name for v in flow.variables() if v.shape == "scalar"}

        def views(y, clocks=clocks):
            return {n: (y[0, sl].view(()) if n in clocks else y[:, sl])
                    for n, sl in slices.items()}

        def rhs(tau, y, flow=flow, clocks=clocks):
            S = views(y)
            g, _ = engine.evaluate(flow, oracle, S["W"], tau, clip=_clip_rows)
            out = torch.empty_like(y)
            for n, r in vector_field(flow, tau, S, g).items():
                out[:, slices[n]] = r.reshape(-1, 1) if n in clocks else r
            return out

        def run(rows=rows, flow=flow, clocks=clocks, rhs=rhs):
            Wb = W0.expand(len(rows), -1).clone()
            S0, _, _ = engine.start(flow, oracle, Wb, clip=_clip_rows)
            y0 = torch.empty(len(rows), layout.size, dtype=W0.dtype, device=W0.device)
            for n, sl in slices.items():
                y0[:, sl] = S0[n].reshape(-1, 1) if n in clocks else S0[n]
            kw = dict(step_size=step_size) if method in engine.FIXED else dict(options={
                "norm": lambda e: e.reshape(len(rows), -1).pow(2).mean(1).sqrt().max()})
            try:
                sol, st = engine.solve(rhs, y0, t, method=method, rtol=rtol, atol=atol,
                                       max_steps=max_steps, check_finite=False, **kw)
            except engine.IntegrationError as err:
                who = [points[i] for i in rows]
                raise engine.IntegrationError(
                    f"continuous sweep of {len(who)} point(s) {who[:4]}"
                    f"{' ...' if len(who) > 4 else ''} stopped: {err} (a stiff point slows "
                    "the whole batch: sweep it separately, lower its lr, or use a fixed-step "
                    "method)") from None
            nfe[0] += st["nfe"]
            sol = sol if times[0] == 0 else sol[1:]
            W[rows] = sol[:, :, slices["W"]].transpose(0, 1)

        _batched(run)
    stats = {"kind": "continuous", "method": method, "nfe": nfe[0], "batches": len(groups),
             "wall_time_s": time.perf_counter() - start}
    if not torch.isfinite(W).all():
        bad = [points[i] for i in range(len(points)) if not torch.isfinite(W[i]).all()]
        raise FloatingPointError(f"non-finite trajectories at points {bad}")
    return _result(flow_name, problem, points, times, W, stats)


# --- the per-point loops (references and benchmark peers) ----------------------------------------
def sequential_discrete(flow_name: str, problem, grid: dict, steps: int, h: float = 1.0,
                        W0: Tensor | None = None, **fixed) -> Tensor:
    """``run_discrete`` point by point: (P, steps + 1, n)."""
    problem, _, flows = _setup(flow_name, problem, grid, fixed)
    W0 = _start(problem, W0)
    return torch.stack([run_discrete(f, problem.grad, W0, steps, h=h)[1] for f in flows])


def sequential_continuous(flow_name: str, problem, grid: dict, T: float, save_at=None,
                          method: str = "rk4", step_size: float = 0.25, rtol: float = 1e-7,
                          atol: float = 1e-9, W0: Tensor | None = None, **fixed) -> Tensor:
    """``fluxode.integrate.integrate`` point by point: (P, len(save times), n)."""
    from .integrate import FIXED, integrate

    problem, _, flows = _setup(flow_name, problem, grid, fixed)
    kw = {"step_size": step_size} if method in FIXED else {}
    return torch.stack([integrate(f, problem, x0=W0, T=T, save_at=save_at, method=method,
                                  rtol=rtol, atol=atol, **kw).W for f in flows])


# --- demo ------------------------------------------------------------------------------------------
def demo_sweep(out_dir) -> dict:
    """Heavy ball on the ravine over an 8 × 8 grid of lr × momentum, 100 steps, one batched run:
    writes sweep_heavy_ball.png (log10 final loss) and sweep_heavy_ball.json; returns the record."""
    from pathlib import Path

    from .io import write_json
    from .plotting import final_loss_map, save

    out = Path(out_dir)
    lrs = [0.001 * 1.6 ** i for i in range(8)]
    mus = [0.1 * i for i in range(1, 9)]
    res = sweep_discrete("sgd", "ravine", {"lr": lrs, "momentum": mus}, steps=100)
    fig = final_loss_map(res.final_loss, lrs, mus,
                         title="heavy ball on the ravine, 100 steps: log₁₀ L(W₁₀₀)\n"
                               "(64 points, one batched run)")
    png = save(fig, out / "sweep_heavy_ball.png", dpi=120)
    record = {"points": res.points, "final_loss": res.final_loss.tolist(),
              "seconds": res.stats["wall_time_s"], "figure": str(png)}
    write_json(out / "sweep_heavy_ball.json", record)
    return record
