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
shape (P, size) with ``fluxode.engine.solve``.

Per-row clocks and steps: a flow's scalar clocks (Adam's c₁ = 1 - β₁ᵏ, c₂) hold one value
per row: in the discrete sweep a Column advanced by the per-point ``Clock`` arithmetic, in the
continuous sweep a (P, 1) column of the ODE state (one number while the rows agree). So points
with different betas share one batch. A grid over the step size h (``grid={"h": [...]}``)
runs row j as ``run_discrete(discrete_flow(flow_j, h_j), …)``: h and τ = k·h_j are Columns,
η(τ) is each point's own, each row takes its own number of steps (⌊T/h_j⌋, or ``steps``) and
is frozen once it has taken them; the result's ``times`` are then per row, (P, K).

Limits of the design (the flows read some values as Python scalars):
- A flow that reads its clocks as numbers (RAdam, Adamax, NAdam under a betas sweep) or whose
  rates have no per-row step (NAG, NAdam under an h sweep) refuses the one batch; it then runs
  one batch per group of points with equal clock rates and h (``stats["batches"]``).
- Inside a batch, branches on a hyperparameter (``if momentum``, ``weight_decay != 0``,
  ``amsgrad``) must agree across the points, and so must a value the flow reads as one
  number. Otherwise ``NotUniform`` says which: sweep that hyperparameter in separate calls.
- The continuous sweep with an adaptive method controls the error of all points together
  (max over points of each point's RMS norm): same tolerance, different steps than per point.
"""

from __future__ import annotations

import array
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
from .flows.rates import Clock, Exact, Linear, Term, Toward
from .problems import Problem, make_problem


class NotUniform(ValueError):
    """A flow branched on (or read as one float) a hyperparameter that differs across points."""


class Column:
    """P per-point values of one hyperparameter, acting like a float in the flows' arithmetic."""

    __slots__ = ("_rows_of", "values")

    def __init__(self, values):
        self.values = tuple(map(float, values))
        self._rows_of = None

    @classmethod
    def _of(cls, values) -> Column:
        """A Column of values that are already floats (the results of float arithmetic)."""
        c = object.__new__(cls)
        c.values = tuple(values)
        c._rows_of = None
        return c

    def rows_of(self) -> dict:
        """{value: the rows holding it} (computed once: a swept h is one Column per sweep)."""
        if self._rows_of is None:
            rows: dict = {}
            for j, v in enumerate(self.values):
                rows.setdefault(v, []).append(j)
            self._rows_of = rows
        return self._rows_of

    def __len__(self):
        return len(self.values)

    def __repr__(self):
        return f"Column({list(self.values)})"

    # arithmetic: elementwise in Python floats (bitwise the per-point values)
    def _map(self, other, op):
        if isinstance(other, Column):
            return Column._of(map(op, self.values, other.values))
        if isinstance(other, (int, float)):
            return Column._of(map(op, self.values, itertools.repeat(other)))
        return NotImplemented

    def _rmap(self, other, op):
        if isinstance(other, (int, float)):
            return Column._of(map(op, itertools.repeat(other), self.values))
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
    def __neg__(self): return Column._of(map(operator.neg, self.values))
    def __abs__(self): return Column._of(map(abs, self.values))

    # branches: allowed only where every point takes the same one
    def _uniform(self, truths, what):
        truths = set(truths)
        if len(truths) > 1:
            raise NotUniform(f"the flow branches on a swept hyperparameter ({what} differs "
                             f"across the points {list(self.values)}): sweep it in separate calls")
        return truths.pop()

    def _cmp(self, other, op):
        if isinstance(other, Column):
            return self._uniform(map(op, self.values, other.values), op.__name__)
        return self._uniform(map(op, self.values, itertools.repeat(other)), op.__name__)

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
        t = torch.frombuffer(array.array("d", self.values), dtype=torch.float64)
        return t.to(dtype=like.dtype, device=like.device).unsqueeze(1)

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


def _at_step(h, unit, general):
    """A step's coefficient as the per-point rates write it: ``unit`` (torch's own value) where
    h = 1, else ``general(h)``; per row for a Column h (``general`` in Column arithmetic)."""
    if not isinstance(h, Column):
        return unit if h == 1.0 else general(h)
    ones = h.rows_of().get(1.0, ())
    if not ones:
        return general(h)
    if len(ones) == len(h):
        return unit
    values = list(general(h).values)
    for j in ones:
        values[j] = unit.values[j] if isinstance(unit, Column) else unit
    return Column(values)


def _rows(fn, *args):
    """``fn`` per point on the row values of ``args`` (Columns or plain values): a Column, or
    ``fn(*args)`` itself when no argument is a Column."""
    if not any(isinstance(a, Column) for a in args):
        return fn(*args)
    return Column(itertools.starmap(fn, zip(*(a.values if isinstance(a, Column)
                                              else itertools.repeat(a) for a in args))))


class _Cell:
    """Receives a clock's new value: ``Clock.euler_(cell, h)`` runs the per-point arithmetic."""

    __slots__ = ("value",)

    def fill_(self, value):
        self.value = value


def _clock_rows(rate: Clock, h: Column) -> Column:
    """The clock's new Column under a Column h: the per-point ``Clock.euler_`` once per distinct
    h_j (where τ = k·h_j is one number) on the keeps of the rows that share it."""
    out = [0.0] * len(h)
    for hj, rows in h.rows_of().items():
        keep = Column._of(map(rate.keep.values.__getitem__, rows)) \
            if isinstance(rate.keep, Column) else rate.keep
        tau = rate.tau.values[rows[0]] if isinstance(rate.tau, Column) else rate.tau
        cell = _Cell()
        Clock(keep, tau).euler_(cell, hj)
        values = cell.value.values if isinstance(cell.value, Column) else \
            itertools.repeat(cell.value)
        for j, v in zip(rows, values):
            out[j] = v
    return Column._of(out)


def _per_row_eta(bf: Flow, flows: list[Flow]) -> Flow:
    """``bf`` with η(τ) taken from each point's own flow at its own τ (τ a Column under an h
    sweep): η_j = flows[j].eta(τ_j), schedules and step-count decays included."""
    proto_eta = bf.eta

    def eta(tau):
        if not isinstance(tau, Column):
            return proto_eta(tau)
        return Column(f.eta(t) for f, t in zip(flows, tau.values))

    bf.eta = eta
    return bf


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
def _euler_(rate, x, h):
    """``rate.euler_(x, h)`` with Column coefficients (and a Column h: one step per row) as
    (P, 1) tensors, same operations per row; returns x, or a clock's new Column."""
    if isinstance(rate, Clock):  # x: the clock's Column (``_clock_columns``)
        if not isinstance(h, Column):
            cell = _Cell()
            rate.euler_(cell, h)  # the per-point arithmetic (Column keep: Column arithmetic)
            c = cell.value
            return c if isinstance(c, Column) else Column([c] * len(x))
        c = _clock_rows(rate, h)
        report = getattr(rate, "report", None)  # a later block may use the new value
        if report is not None:
            report(c)
        return c
    if isinstance(rate, Exact):
        at = _rows(lambda hj: hj == rate.step, h)
        if not isinstance(at, Column):
            return x.copy_(rate.value) if at else _euler_(rate.inner, x, h)
        if all(at.values) or not any(at.values):
            return x.copy_(rate.value) if all(at.values) else _euler_(rate.inner, x, h)
        _euler_(rate.inner, x, h)  # rows whose h is the exact step take the exact value
        rows = torch.tensor(at.values, dtype=torch.bool, device=x.device)
        x[rows] = rate.value[rows]
        return x
    if isinstance(rate, Linear) and _has_column(rate.decay, rate.keep, h,
                                                *(t.coef for t in rate.terms)):
        def general(hh, decay=rate.decay):
            return 1.0 - hh * decay

        factor = _at_step(h, general(1.0) if rate.keep is None else rate.keep, general)
        if isinstance(factor, Column):
            x.mul_(factor.tensor(x))  # a factor of 1.0 is exact
        elif factor != 1.0:
            x.mul_(factor)
        for t in rate.terms:
            c = _at_step(h, t.coef, lambda hh, coef=t.coef: hh * coef)
            if not isinstance(c, Column):
                Linear((Term(c, t.a, t.b, t.op),)).euler_(x, 1.0)  # the per-point operation
            elif t.op == "mul":
                x.addcmul_(c.tensor(x) * t.a, t.b)         # x + (c·a)·b
            elif t.op == "div":
                x.addcdiv_(c.tensor(x) * t.a, t.b)         # x + (c·a)/b
            elif isinstance(t.a, Tensor):
                x.addcmul_(t.a, c.tensor(x))               # x.add_(a, alpha=c)
            else:
                x.add_((c * t.a).tensor(x))
    elif isinstance(rate, Toward) and _has_column(rate.rate_, rate.target, h):
        w = _at_step(h, rate.rate_, lambda hh: hh * rate.rate_)
        target = rate.target.tensor(x).expand_as(x) if isinstance(rate.target, Column) \
            else rate.target if isinstance(rate.target, Tensor) else torch.full_like(x, rate.target)
        x.lerp_(target, w.tensor(x) if isinstance(w, Column) else w)
    else:
        if isinstance(h, Column):
            raise NotUniform(f"a {type(rate).__name__} rate has no per-row step: sweep h in "
                             "separate calls for this flow")
        rate.euler_(x, h)
    return x


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
            S[name] = _euler_(rate, S[name], h)


@dataclass
class SweepResult:
    """Per-point results, rows in the order of ``points``."""

    flow: str
    problem: str
    points: list[dict]
    times: Tensor                   # (K,) step-clock times; (P, K) per row under an h sweep
    W: Tensor                       # (P, K, n) trajectories
    final_loss: Tensor              # (P,)
    final_error: Tensor | None      # (P,) ‖W(T) - W*‖ when the problem knows W*
    stats: dict = field(default_factory=dict)
    diverged: Tensor | None = None  # (P,) bool: the point's trajectory turned non-finite

    def report(self) -> list[str]:
        """One line per diverged point: the point and the first time it was non-finite."""
        return [f"point {d['point']} diverged (non-finite from τ = {d['time']:g})"
                for d in self.stats.get("diverged", [])]


def _setup(flow_name, problem, grid, fixed, discrete: bool = False):
    """(problem, points, flows, hs): one validated flow per point; under a grid over the step
    size h (``discrete``), point j's flow is ``discrete_flow(flow_j, h_j)`` and hs its h."""
    problem = make_problem(problem) if isinstance(problem, str) else problem
    points = grid_points(grid)
    for p in points:
        clash = set(p) & set(fixed)
        if clash:
            raise ValueError(f"{sorted(clash)} given both in grid and as fixed hyperparameters")
    hs = None
    if "h" in grid:
        if not discrete:
            raise ValueError("h is the step size of the discrete map: sweep it with "
                             "sweep_discrete (the continuous flow has no h)")
        from .paths import discrete_flow

        hs = [p["h"] for p in points]
        flows = [discrete_flow(make_flow(flow_name, **fixed,
                                         **{k: v for k, v in p.items() if k != "h"}), p["h"])
                 for p in points]
    else:
        flows = [make_flow(flow_name, **fixed, **p) for p in points]
    if flows[0].needs_hessian:
        raise ValueError(f"flow {flow_name!r} needs a Hessian: batched sweeps support "
                         "first-order flows")
    return problem, points, flows, hs


def _steps_per_row(steps, T, hs: list[float]) -> list[int]:
    """Each row's step count: ``steps`` for all, or ⌊T/h_j⌋ (to 1e-9 of a step)."""
    if (steps is None) == (T is None):
        raise ValueError("give steps (every row's number of steps) or T (the horizon on the "
                         "step clock: row j takes ⌊T/h_j⌋ steps), exactly one of them")
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an integer in [0, inf), got {steps!r}")
        return [steps] * len(hs)
    if isinstance(T, bool) or not isinstance(T, (int, float)) or not math.isfinite(T) or T < 0:
        raise ValueError(f"T must be in [0, inf), got {T!r}")
    return [math.floor(T / hj + 1e-9) for hj in hs]


def _clock_columns(flow: Flow, S: dict, P: int) -> dict:
    """S with each clock that follows a ``Clock`` rate as a Column of P per-row values (all its
    start value); other scalar states stay one number for the batch."""
    for name in flow.clock_rates():
        S[name] = Column([float(S[name])] * P)
    return S


def _frozen_after(counts: list[int]):
    """``_euler_step_`` where row j takes ``counts[j]`` steps: after that its state is kept
    (restored after each batched step), so it holds its last iterate."""
    taken = [0]

    def stepper(flow, S, g, tau, h, H=None):
        k, taken[0] = taken[0], taken[0] + 1
        done = [j for j, n in enumerate(counts) if n <= k]
        if not done:
            return _euler_step_(flow, S, g, tau, h, H)
        P, frozen = len(counts), set(done)
        idx = torch.tensor(done, device=S["W"].device)
        kept = {n: x.index_select(0, idx) for n, x in S.items()
                if isinstance(x, Tensor) and x.dim() and x.shape[0] == P}
        clocks = {n: x for n, x in S.items() if isinstance(x, Column)}
        _euler_step_(flow, S, g, tau, h, H)
        for n, x in kept.items():
            S[n].index_copy_(0, idx, x)
        for n, old in clocks.items():
            S[n] = Column(old.values[j] if j in frozen else S[n].values[j] for j in range(P))

    return stepper


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
    """Run a batched kernel, turning a hyperparameter the flow cannot batch into NotUniform."""
    try:
        return fn()
    except TypeError as err:
        if "Column" not in str(err):
            raise
        raise NotUniform(f"a swept hyperparameter reaches an operation that needs one number "
                         f"({err}); sweep it in separate calls") from None
    except (ValueError, RuntimeError) as err:
        if isinstance(err, NotUniform) or "converted to" not in str(err):
            raise
        raise NotUniform(f"the flow reads a state that differs across the points as one number "
                         f"({err}); sweep the hyperparameters it depends on in separate "
                         "calls") from None


def _in_batches(run, keys: list, P: int, first_fails=None):
    """``run(rows)`` on all P rows at once; where the flow refuses that (``first_fails()``
    true, or the batched run raises), once per group of rows with equal ``keys`` (their clock
    rates, and h: per-row values a flow may be unable to take as columns), where an error is
    the run's own. Returns (results by group, groups)."""
    rows = list(range(P))
    groups: dict = {}
    for j, k in enumerate(keys):
        groups.setdefault(k, []).append(j)
    if len(groups) > 1 and first_fails is not None and first_fails():
        return [_batched(lambda g=g: run(g)) for g in groups.values()], list(groups.values())
    try:
        return [_batched(lambda: run(rows))], [rows]
    except Exception:
        if len(groups) == 1:
            raise
    return [_batched(lambda g=g: run(g)) for g in groups.values()], list(groups.values())


def _clock_key(flow: Flow) -> tuple:
    return tuple(sorted(flow.clock_rates().items()))


def sweep_discrete(flow_name: str, problem, grid: dict, steps: int | None = None,
                   h: float | None = None, W0: Tensor | None = None, every: int = 1,
                   T: float | None = None, **fixed) -> SweepResult:
    """The partitioned Euler map (h = 1: torch.optim) at every grid point, batched. Equal, bit
    for bit, to ``run_discrete(make_flow(flow_name, **fixed, **point), problem.grad, W0, steps,
    h)`` per point (when the batched gradient is).

    Give ``steps`` (every row's count) or the horizon ``T`` (⌊T/h⌋ steps). With ``"h"`` in the
    grid, row j is ``run_discrete(discrete_flow(flow_j, h_j), …)``, h_j ∈ (0, 1], and takes its
    own ``steps`` or ⌊T/h_j⌋ steps; the batch runs the most any row takes, a row that is done
    keeps its last iterate, and ``times`` is (P, K): row j's entry k is min(k·every,
    n_j)·h_j, so ``W[:, -1]`` is every row's last iterate."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an integer in [1, inf), got {every!r}")
    problem, points, flows, hs = _setup(flow_name, problem, grid, fixed, discrete=True)
    if h is not None and hs is not None:
        raise ValueError("h given both in grid and as the step size")
    h = 1.0 if h is None else h
    if not (isinstance(h, (int, float)) and math.isfinite(h) and h > 0):
        raise ValueError(f"h must be in (0, inf), got {h!r}")
    counts = _steps_per_row(steps, T, hs or [h] * len(points))
    K = max(counts)
    W0 = _start(problem, W0)
    from .integrate import MAX_SAVED_BYTES, BudgetError

    saved = K // every + 1 + (K % every != 0)
    nbytes = len(points) * saved * W0.numel() * W0.element_size()
    if nbytes > MAX_SAVED_BYTES:
        raise BudgetError(f"{len(points)} points × {saved} saved steps of {W0.numel()} numbers "
                          f"need {nbytes / 2**30:.3g} GiB, over the {MAX_SAVED_BYTES / 2**30:g} "
                          "GiB budget: lower steps, raise every, or sweep fewer points")
    oracle = engine.Oracle(batched_grad(problem))
    keep = [k for k in range(0, K + 1, every)] + ([K] if K % every else [])
    P = len(points)
    start = time.perf_counter()

    def run(rows):
        sub = [flows[j] for j in rows]
        flow, hh = batched_flow(sub), h
        if hs is not None and len({hs[j] for j in rows}) > 1:
            flow, hh = _per_row_eta(flow, sub), Column([hs[j] for j in rows])
        elif hs is not None:
            hh = hs[rows[0]]
        n = [counts[j] for j in rows]
        stepper = _euler_step_ if min(n) == K else _frozen_after(n)
        S, g, _ = engine.start(flow, oracle, W0.expand(len(rows), -1).clone(), clip=_clip_rows)
        _, traj = engine.run(flow, oracle, _clock_columns(flow, S, len(rows)), K, h=hh,
                             every=every, first=(g, None), stepper=stepper, clip=_clip_rows)
        return torch.stack(traj, 1)

    parts, groups = _in_batches(run, [(_clock_key(f), hj) for f, hj in
                                      zip(flows, hs or [h] * P)], P)
    W = torch.empty(P, len(keep), W0.numel(), dtype=W0.dtype, device=W0.device)
    for rows, part in zip(groups, parts):
        W[rows] = part
    stats = {"kind": "discrete", "h": hs or h, "steps": counts if hs else K,
             "batches": len(groups), "wall_time_s": time.perf_counter() - start}
    if hs is None:
        times = torch.tensor(keep, dtype=torch.float64) * h
    else:
        times = torch.tensor([[min(k, n) * hj for k in keep] for n, hj in zip(counts, hs)],
                             dtype=torch.float64)
    finite = torch.isfinite(W).all(dim=2)  # (P, K)
    diverged = ~finite.all(dim=1)
    stats["diverged"] = [{"point": points[i], "index": i,
                          "time": float((times if hs is None else times[i])[
                              int((~finite[i]).nonzero()[0])])}
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
    problem, points, flows, _ = _setup(flow_name, problem, grid, fixed)
    if problem.piecewise:
        raise ValueError("continuous sweeps need a smooth field (not a minibatch sequence)")
    times = _save_times(T, save_at)
    t = times if times[0] == 0 else torch.cat([torch.zeros(1, dtype=torch.float64), times])
    W0 = _start(problem, W0)
    oracle = engine.Oracle(batched_grad(problem))
    layout = engine.Layout(flows[0], [(W0.numel(),)])
    engine.check_start(flows, method)
    from .engine.solve import check_max_steps
    from .integrate import check_budget

    P = len(points)
    check_budget(t, method, step_size, check_max_steps(max_steps), P * layout.size,
                 W0.element_size())
    slices = layout.slices
    start = time.perf_counter()
    scalars = {v.name for v in flows[0].variables() if v.shape == "scalar"}

    def views(y):
        """The state at y: a scalar (clock) is one number while the rows agree on it, else a
        (R, 1) column (per-row clocks, e.g. Adam with different betas)."""
        S = {}
        for n, sl in slices.items():
            x = y[:, sl]
            S[n] = x if n not in scalars else x if bool((x != x[0]).any()) else x[0].view(())
        return S

    def put(out, n, r):
        out[:, slices[n]] = r.tensor(out) if isinstance(r, Column) else \
            r.reshape(-1, 1) if n in scalars else r

    def system(rows):
        """(rhs, y0): the rows' ODE, state (R, size) (or its flat view, as the solver keeps it)."""
        flow, R = batched_flow([flows[j] for j in rows]), len(rows)

        def rhs(tau, y):
            S = views(y.view(R, -1))
            g, _ = engine.evaluate(flow, oracle, S["W"], tau, clip=_clip_rows)
            out = torch.empty(R, layout.size, dtype=y.dtype, device=y.device)
            for n, r in vector_field(flow, tau, S, g).items():
                put(out, n, r)
            return out.view_as(y)

        S0, _, _ = engine.start(flow, oracle, W0.expand(R, -1).clone(), clip=_clip_rows)
        y0 = torch.empty(R, layout.size, dtype=W0.dtype, device=W0.device)
        for n in slices:
            put(y0, n, S0[n])
        return rhs, y0

    def per_row_clocks_fail() -> bool:
        """Whether the field refuses clocks that differ across the rows (probed once, at the
        start state with the clocks set to distinct values in (0, 1))."""
        rhs, y = system(list(range(P)))
        for n in scalars:
            y[:, slices[n]] = torch.linspace(0.25, 0.75, P, dtype=y.dtype).unsqueeze(1)
        try:
            rhs(0.0, y)
        except Exception:  # noqa: BLE001 - any refusal: the rows are run per clock group
            return True
        return False

    def run(rows):
        rhs, y0 = system(rows)
        kw = {"step_size": step_size} if method in engine.FIXED else {"options": {
            "norm": lambda e: e.reshape(len(rows), -1).pow(2).mean(1).sqrt().max()}}
        try:
            sol, st = engine.solve(rhs, y0, t, method=method, rtol=rtol, atol=atol,
                                   max_steps=max_steps, check_finite=False, **kw)
        except engine.IntegrationError as err:
            who = [points[j] for j in rows]
            raise engine.IntegrationError(
                f"continuous sweep of {len(who)} point(s) {who[:4]}"
                f"{' ...' if len(who) > 4 else ''} stopped: {err} (a stiff point slows the "
                "whole batch: sweep it separately, lower its lr, or use a fixed-step "
                "method)") from None
        sol = sol if times[0] == 0 else sol[1:]
        return sol[:, :, slices["W"]].transpose(0, 1), st["nfe"]

    parts, groups = _in_batches(run, [_clock_key(f) for f in flows], P,
                                first_fails=per_row_clocks_fail)
    W = torch.empty(P, len(times), W0.numel(), dtype=W0.dtype, device=W0.device)
    for rows, (part, _) in zip(groups, parts):
        W[rows] = part
    nfe = sum(n for _, n in parts)
    stats = {"kind": "continuous", "method": method, "nfe": nfe, "batches": len(groups),
             "wall_time_s": time.perf_counter() - start}
    if not torch.isfinite(W).all():
        bad = [points[i] for i in range(len(points)) if not torch.isfinite(W[i]).all()]
        raise FloatingPointError(f"non-finite trajectories at points {bad}")
    return _result(flow_name, problem, points, times, W, stats)


# --- the per-point loops (references and benchmark peers) ----------------------------------------
def sequential_discrete(flow_name: str, problem, grid: dict, steps: int | None = None,
                        h: float | None = None, W0: Tensor | None = None,
                        T: float | None = None, **fixed) -> Tensor:
    """``run_discrete`` point by point: (P, K + 1, n), K the most steps a row takes (a row
    with fewer repeats its last iterate, as in ``sweep_discrete``)."""
    problem, _, flows, hs = _setup(flow_name, problem, grid, fixed, discrete=True)
    counts = _steps_per_row(steps, T, hs or [1.0 if h is None else h] * len(flows))
    W0 = _start(problem, W0)
    rows = [run_discrete(f, problem.grad, W0, n, h=None if hs else h)[1]
            for f, n in zip(flows, counts)]
    K = max(counts)
    return torch.stack([torch.cat([r, r[-1:].expand(K + 1 - len(r), -1)]) for r in rows])


def sequential_continuous(flow_name: str, problem, grid: dict, T: float, save_at=None,
                          method: str = "rk4", step_size: float = 0.25, rtol: float = 1e-7,
                          atol: float = 1e-9, W0: Tensor | None = None, **fixed) -> Tensor:
    """``fluxode.integrate.integrate`` point by point: (P, len(save times), n)."""
    from .integrate import FIXED, integrate

    problem, _, flows, _ = _setup(flow_name, problem, grid, fixed)
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
