"""The one continuous solve: dy/dτ = F(τ, y) on a flat state.

Every continuous run in fluxode — ``integrate``, the ODE optimizer's step, batched sweeps —
calls ``solve``; this is the only module that imports an ODE library.

Solvers. ``solver="torchdiffeq"`` (default): torchdiffeq's methods and semantics. Its explicit
Runge–Kutta methods (every adaptive one, and euler/midpoint/heun2/heun3/rk4) run here on
torchdiffeq's own tableaus with the stage arithmetic fused on the flat state: the s stage
derivatives are rows of one (s, n) buffer K and each stage input is one matrix–vector product

    yᵢ = y₀ + Δτ · Σⱼ βᵢⱼ kⱼ        (``torch.addmv`` over K's first i rows),

so no per-evaluation temporaries and one pass over the stages. The field may write dy/dτ
into the stage row it is given (``into=True``: ``rhs(τ, y, out)``). τ is a Python float: a
field evaluation reads nothing back from the device. The Adams methods, and options this
path does not know, go to ``torchdiffeq.odeint`` itself. ``solver="torchode"`` runs dopri5 or
euler through torchode (an optional dependency), which also takes a batch (B, n) of states
with a step size per row (``rhs(τ: (B,) tensor, y: (B, n))``).

Grids and jumps. Fixed-step methods step on a grid τ₀ + j·Δτ that also holds every save
time and every jump time (a minibatch boundary, a switch in the flow's field), so no step
straddles a jump. Adaptive methods stop at the jumps (torchdiffeq's ``jump_t``) and
re-evaluate F on the new side.

Guards. A step below ``min_step``, a step too small to advance τ in float64
(Δτ < 1e-14·|τ|) or more than ``max_steps`` steps stops the run with an ``IntegrationError``
instead of looping. Finiteness is checked once per step, not per evaluation: an adaptive
method reads its error norm ‖err/tol‖ once per step (the step's only host read) and a
non-finite stage makes it +∞, so the step is *rejected* and shrinks (as in diffrax): flows
with an integrable singularity at τ = 0 (RMSprop, Adagrad from v = 0, where Ẇ ~ 1/√τ) are
resolved by small first steps. A fixed-step method checks the new state once per step and
stops at the first non-finite stage, naming it (``explain``).

Statistics: ``nfe`` (field calls), ``steps``, ``accepted``/``rejected``, ``min_step_taken``,
wall time.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

ADAPTIVE = ("dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun")
FIXED = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")
METHODS = ADAPTIVE + FIXED


class IntegrationError(RuntimeError, FloatingPointError):
    """The integration could not continue (non-finite values, collapsing step size, too many
    steps)."""


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    return method


def check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a number in (0, inf), got {value!r}")
    return float(value)


def check_max_steps(max_steps) -> int:
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an integer in [1, inf), got {max_steps!r}")
    return max_steps


def all_finite(t: Tensor) -> bool:
    """True when every entry of t is finite. One summing pass decides the common case (a sum
    of finite numbers is finite unless it overflows); only then is it checked entry by entry."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _rms_norm(x: Tensor) -> Tensor:
    """torchdiffeq's default error norm: √mean(x²)."""
    return x.abs().pow(2).mean().sqrt()


def _finite_norm(norm):
    """An error norm that reads +∞ on non-finite input, so the solver rejects the step."""
    def wrapped(x):
        r = torch.as_tensor(norm(x))
        return torch.where(torch.isfinite(r), r, torch.full_like(r, math.inf))
    return wrapped


Explain = Callable[[float, Tensor, Tensor | None], str | None]


class _StepGuard:
    """Step statistics and guards shared by both steppers (torchdiffeq's callbacks and the
    fused Runge–Kutta loop): a step below ``min_step``, one too small to advance τ, or more
    than ``max_steps`` steps raises ``IntegrationError``."""

    def _init_guard(self, min_step: float, max_steps: int) -> None:
        self.min_step, self.max_steps = min_step, max_steps
        self.nfe = self.steps = self.accepted = self.rejected = 0
        self.min_dt = math.inf
        self.last_nonfinite: str | None = None

    def guard(self, t0: float, dt: float) -> None:
        self.steps += 1
        self.min_dt = min(self.min_dt, dt)
        if dt < self.min_step or dt <= 1e-14 * abs(t0) or not math.isfinite(dt):
            seen = f"; last problem seen: {self.last_nonfinite}" if self.last_nonfinite else ""
            raise IntegrationError(
                f"step size collapsed to {dt:.3g} at τ={t0:.6g} after {self.steps} steps "
                f"(min_step={self.min_step:.3g}): the flow is stiff or blowing up here{seen}; "
                "loosen rtol/atol, lower lr, or use a fixed-step method")
        if self.steps > self.max_steps:
            raise IntegrationError(
                f"more than max_steps={self.max_steps} solver steps before τ={t0:.6g} "
                f"(last step {dt:.3g}); raise max_steps or loosen rtol/atol")


class _Field(nn.Module, _StepGuard):
    """F for torchdiffeq, with call counts, step guards and finiteness checks."""

    def __init__(self, rhs, explain: Explain | None, min_step: float, max_steps: int,
                 check_finite: bool, reject_nonfinite: bool):
        super().__init__()
        self.rhs, self.explain = rhs, explain
        self.check_finite, self.reject_nonfinite = check_finite, reject_nonfinite
        self._init_guard(min_step, max_steps)

    def forward(self, t, y):
        self.nfe += 1
        tau = float(t)
        out = self.rhs(tau, y)
        if self.check_finite and not all_finite(out):
            msg = ((self.explain(tau, y, out) if self.explain else None)
                   or f"non-finite values at τ={tau:.6g}")
            if not self.reject_nonfinite:
                raise IntegrationError(msg)
            self.last_nonfinite = msg  # the adaptive solver's norm rejects this step
        return out

    def callback_step(self, t0, y0, dt):
        self.guard(float(t0), float(dt))


class _AdaptiveField(_Field):
    """Adds torchdiffeq's accept/reject hooks (adaptive Runge–Kutta methods only)."""

    def callback_accept_step(self, t0, y0, dt):
        self.accepted += 1
        self.last_nonfinite = None

    def callback_reject_step(self, t0, y0, dt):
        self.rejected += 1


def fixed_grid(times, step: float, jumps: Sequence[float]) -> Tensor:
    """τ₀ + j·step up to the last time, plus every save time and jump, deduplicated (points
    closer than 1e-9·max(1, |T|) merge onto the save time or jump); float64."""
    return torch.tensor(_grid(list(map(float, times)), step, list(jumps)), dtype=torch.float64)


def _grid(ts: list[float], step: float, jumps: list[float]) -> list[float]:
    """``fixed_grid`` in Python floats (no tensor is read)."""
    t0, T = ts[0], ts[-1]
    n = math.ceil((T - t0) / step - 1e-9)
    marks = ts + [float(j) for j in jumps]
    pts = sorted({min(max(v, t0), T) for v in [k * step + t0 for k in range(n + 1)] + marks})
    eps = 1e-9 * max(1.0, abs(T))
    pts = [pts[0]] + [b for a, b in itertools.pairwise(pts) if b - a > eps]
    for v in marks:  # snap the save times and jumps themselves back onto the grid exactly
        i = min(range(len(pts)), key=lambda i: abs(pts[i] - v))
        pts[i] = v
    return pts


# --- explicit Runge–Kutta on the flat state ---------------------------------------------------
SOLVERS = ("torchdiffeq", "torchode")
_FIXED_RK = {  # torchdiffeq's fixed-grid step functions as tableaus: (c, A rows, b, order)
    "euler": ([], [], [1.0], 1),
    "midpoint": ([0.5], [[0.5]], [0.0, 1.0], 2),
    "heun2": ([1.0], [[1.0]], [0.5, 0.5], 2),
    "heun3": ([1 / 3, 2 / 3], [[1 / 3], [0.0, 2 / 3]], [0.25, 0.0, 0.75], 3),
    "rk4": ([1 / 3, 2 / 3, 1.0], [[1 / 3], [-1 / 3, 1.0], [1.0, -1.0, 1.0]],
            [0.125, 0.375, 0.375, 0.125], 4),  # torchdiffeq's rk4 is the 3/8 rule
}
_ADAPTIVE_OPTIONS = {"first_step", "max_step", "min_step", "safety", "ifactor", "dfactor",
                     "max_num_steps", "norm", "step_t", "jump_t"}
_FIXED_OPTIONS = {"grid_constructor", "perturb", "interp"}


@functools.cache
def _tableau(method: str) -> _Tableau:
    """The method's tableau, read from torchdiffeq once per process."""
    return _Tableau(method)


class _Tableau:
    """An explicit Runge–Kutta tableau: nodes c, rows βᵢ of A, weights b (and for adaptive
    methods the error weights e, the mid-point weights of the dense output and FSAL)."""

    def __init__(self, method: str):
        if method in ADAPTIVE:
            from torchdiffeq._impl.odeint import SOLVERS as TD

            cls = TD[method]
            tb = cls.tableau
            self.c, self.A = tb.alpha.tolist(), [b.tolist() for b in tb.beta]
            self.b, self.e = tb.c_sol.tolist(), tb.c_error.tolist()
            self.mid, self.order = cls.mid.tolist(), cls.order
            # torchdiffeq's test: the last stage is evaluated at y₁ (Dormand–Prince, Bogacki–Shampine)
            self.fsal = self.b[-1] == 0 and self.b[:-1] == self.A[-1]
        else:
            self.c, self.A, self.b, self.order = _FIXED_RK[method]
            self.e = self.mid = None
            self.fsal = False
        self.stages = len(self.c) + 1


class _RungeKutta(_StepGuard):
    """Explicit Runge–Kutta steps of torchdiffeq's semantics on a flat state, with the stage
    derivatives as rows of one preallocated (s, n) buffer K:

        kᵢ = F(τ₀ + cᵢΔτ, y₀ + Δτ Σⱼ Aᵢⱼ kⱼ),   y₁ = y₀ + Δτ Σ bᵢ kᵢ,   err = Δτ Σ eᵢ kᵢ.

    Memory: K, one buffer Y for every stage input and then y₁ (a stage input is needed only
    while F reads it), and a second state buffer only once a second step starts (y₀ is the
    caller's and stays intact): s + 1 states beside y₀. The error ratio is reduced in chunks.
    Adaptive: accept when ‖err / (atol + rtol·max(|y₀|, |y₁|))‖ ≤ 1 (RMS norm), next step
    Δτ·min(ifactor, max(safety·r^(-1/order), dfactor)) (dfactor → 1 when r < 1), stops at
    ``step_t``/``jump_t``, 4th-order dense output (torchdiffeq's interpolant) fitted only for
    the steps that pass a save time. Fixed: one step per grid interval."""

    CHUNK = 1 << 15

    def __init__(self, rhs, y0: Tensor, method: str, into: bool, explain, check_finite: bool,
                 min_step: float, max_steps: int, workspace: dict | None = None):
        self.tab = tab = _tableau(method)
        self.rhs, self.into, self.explain = rhs, into, explain
        self.check_finite = check_finite
        self._init_guard(min_step, max_steps)
        self.y0, self.work = y0, workspace
        K = None if workspace is None else workspace.get("K")
        if K is None or K.shape != (tab.stages, y0.numel()) or K.dtype != y0.dtype \
                or K.device != y0.device:
            K = y0.new_empty(tab.stages, y0.numel())
            if workspace is not None:
                workspace["K"], workspace["free"] = K, []
        self.K = K
        self.Y = self.buffer()             # stage inputs, then y₁
        self.free: Tensor | None = None    # the previous state's buffer, reusable
        vec = lambda v: torch.tensor(v, dtype=y0.dtype, device=y0.device)
        self.A = [vec(row) for row in tab.A]
        self.b = vec(tab.b)
        self.e = None if tab.e is None else vec(tab.e)
        self.mid = None if tab.mid is None else vec(tab.mid)

    def buffer(self) -> Tensor:
        """A state-sized buffer: a spare one from the workspace, else a new one."""
        spare = None if self.work is None else self.work.get("free")
        return spare.pop() if spare else self.y0.new_empty(self.y0.numel())

    def release(self, result: Tensor) -> None:
        """Hand the buffers other than ``result`` (and y₀) back to the workspace."""
        if self.work is not None:
            keep = {self.y0.untyped_storage().data_ptr()}
            if result is not None:
                keep.add(result.untyped_storage().data_ptr())
            for b in (self.Y, self.free):
                if b is not None and b.untyped_storage().data_ptr() not in keep:
                    self.work["free"].append(b)

    def f(self, tau: float, y: Tensor, i: int) -> None:
        """K[i] ← F(τ, y)."""
        self.nfe += 1
        if self.into:
            self.rhs(tau, y, self.K[i])
        else:
            self.K[i].copy_(self.rhs(tau, y))

    def stages(self, t0: float, dt: float, t1: float, y0: Tensor, perturb: bool) -> Tensor:
        """Stages 1…s-1 from K[0] = F(τ₀, y₀); returns y₁ (in the stage buffer)."""
        tab, K = self.tab, self.K
        if self.Y is None:  # a new step: the previous state's buffer (never the caller's y₀)
            self.Y = self.free if self.free is not None else self.buffer()
            self.free = None
        Y = self.Y
        for i, (c, A) in enumerate(zip(tab.c, self.A)):
            ti = t1 if c == 1.0 else t0 + c * dt
            if c == 1.0 and perturb:
                ti = math.nextafter(t1, -math.inf)  # just before the step's end (a jump)
            if i == 0:  # one row: an axpy (BLAS's gemv costs more there)
                torch.add(y0, K[0], alpha=dt * tab.A[0][0], out=Y)
            else:
                torch.addmv(y0, K[:i + 1].T, A, alpha=dt, out=Y)
            self.f(ti, Y, i + 1)
        if not tab.fsal:
            torch.addmv(y0, K.T, self.b, alpha=dt, out=Y)
        return Y

    def advance(self, y: Tensor, y1: Tensor) -> Tensor:
        """y₁ becomes the state; y's buffer is free for the next step (unless it is y₀)."""
        self.Y, self.free = None, (None if y is self.y0 else y)
        return y1

    def first_nonfinite(self, t0: float, dt: float, y0: Tensor) -> str | None:
        """Words for the first non-finite stage of the step just taken (its input y
        recomputed; the error path only)."""
        for i in range(self.tab.stages):
            if not bool(torch.isfinite(self.K[i]).all()):
                ti = t0 if i == 0 else t0 + self.tab.c[i - 1] * dt
                yi = y0 if i == 0 else torch.addmv(y0, self.K[:i].T, self.A[i - 1], alpha=dt)
                return ((self.explain(ti, yi, self.K[i]) if self.explain else None)
                        or f"non-finite values at τ={ti:.6g}")
        return None

    def error_ratio(self, y0: Tensor, y1: Tensor, dt: float, rtol: float, atol: float,
                    norm) -> float:
        """‖Δτ Σ eᵢkᵢ / (atol + rtol·max(|y₀|, |y₁|))‖, chunk by chunk (RMS) or whole (a
        given norm); +∞ when not finite. The step's one host read."""
        n, K, C = y1.numel(), self.K, self.CHUNK
        if norm is not None or n <= C:
            err = torch.mv(K.T, self.e).mul_(dt)
            tol = torch.maximum(y0.abs(), y1.abs()).mul_(rtol).add_(atol)
            r = float((_rms if norm is None else norm)(err.div_(tol)))
        else:
            err, tol = y1.new_empty(C), y1.new_empty(C)
            acc = y1.new_zeros(())
            for a in range(0, n, C):
                b = min(a + C, n)
                e, t = err[:b - a], tol[:b - a]
                torch.addmv(e, K[:, a:b].T, self.e, beta=0, alpha=dt, out=e)
                torch.abs(y0[a:b], out=t)
                torch.maximum(t, y1[a:b].abs(), out=t)
                t.mul_(rtol).add_(atol)
                acc += torch.linalg.vector_norm(e.div_(t)).square()
            r = math.sqrt(float(acc) / n)
        return r if math.isfinite(r) else math.inf  # a non-finite stage: reject

    # --- fixed grid -------------------------------------------------------------------------
    def fixed(self, y0: Tensor, times: list[float], grid: list[float], perturb: bool,
              final_only: bool) -> Tensor:
        sol = None if final_only else y0.new_empty(len(times), y0.numel())
        if sol is not None:
            sol[0] = y0
        y, j = y0, 1  # F's first call gets y0 itself
        for t0, t1 in itertools.pairwise(grid):
            dt = t1 - t0
            self.guard(t0, dt)
            self.accepted += 1
            self.f(math.nextafter(t0, math.inf) if perturb else t0, y, 0)
            y1 = self.stages(t0, dt, t1, y, perturb)
            if self.check_finite and not all_finite(y1):  # the step's one host read
                msg = self.first_nonfinite(t0, dt, y) or (
                    (self.explain(t1, y1, None) if self.explain else None)
                    or f"non-finite state at τ={t1:.6g}")
                raise IntegrationError(msg)
            while sol is not None and j < len(times) and t1 >= times[j]:
                sol[j] = y1 if times[j] == t1 else y + (times[j] - t0) / dt * (y1 - y)
                j += 1
            y = self.advance(y, y1)
        return y[None] if sol is None else sol

    # --- adaptive ---------------------------------------------------------------------------
    def adaptive(self, y0: Tensor, times: list[float], rtol: float, atol: float, opts: dict,
                 norm, final_only: bool) -> Tensor:
        K = self.K
        min_dt, max_dt = float(opts.get("min_step", 0.0)), float(opts.get("max_step", math.inf))
        safety, ifactor = float(opts.get("safety", 0.9)), float(opts.get("ifactor", 10.0))
        dfactor = float(opts.get("dfactor", 0.2))
        max_num = int(opts.get("max_num_steps", 2 ** 31 - 1))
        t0 = times[0]
        sort = lambda v: sorted(x for x in ([] if v is None else
                                            torch.as_tensor(v).reshape(-1).tolist()) if x >= t0)
        step_t, jump_t = sort(opts.get("step_t")), sort(opts.get("jump_t"))
        if set(step_t) & set(jump_t):
            raise ValueError("`step_t` and `jump_t` must not have any repeated elements between "
                             "them.")
        si = min(bisect.bisect(step_t, t0), len(step_t) - 1)
        ji = min(bisect.bisect(jump_t, t0), len(jump_t) - 1)
        sol = None if final_only else y0.new_empty(len(times), y0.numel())
        if sol is not None:
            sol[0] = y0
        y = y0  # F's first call gets y0 itself
        self.f(t0, y, 0)
        first = opts.get("first_step")
        dt = float(first) if first is not None else self.initial_step(
            t0, y, rtol, atol, norm or _rms)
        j, steps_here, last = 1, 0, None
        while j < len(times):
            if steps_here >= max_num:
                raise IntegrationError(f"max_num_steps exceeded ({steps_here}>={max_num})")
            steps_here += 1
            if not math.isfinite(dt):
                dt = min_dt
            dt = min(max(dt, min_dt), max_dt)
            self.guard(t0, dt)
            t1 = t0 + dt
            on_step = on_jump = False
            if step_t and t0 < step_t[si] < t0 + dt:
                on_step, t1 = True, step_t[si]
                dt = t1 - t0
            if jump_t and t0 < jump_t[ji] < t0 + dt:
                on_step, on_jump, t1 = False, True, jump_t[ji]
                dt = t1 - t0
            y1 = self.stages(t0, dt, t1, y, True)
            r = self.error_ratio(y, y1, dt, rtol, atol, norm)
            accept = (r <= 1 and not dt > max_dt) or dt <= min_dt
            if accept:
                self.accepted += 1
                self.last_nonfinite = None
                coeffs = None  # the step's interpolant, fitted once for all its save times
                while j < len(times) and times[j] <= t1:
                    if sol is not None or j == len(times) - 1:
                        if times[j] == t1:
                            v = y1
                        else:
                            coeffs = coeffs or self.interpolant(y, y1, dt)
                            v = _polynomial(coeffs, (times[j] - t0) / dt)
                        if sol is None:
                            last = v
                        else:
                            sol[j] = v
                    j += 1
                if on_step and si != len(step_t) - 1:
                    si += 1
                if on_jump:
                    if ji != len(jump_t) - 1:
                        ji += 1
                    self.f(math.nextafter(t1, math.inf), y1, 0)  # F on the new side
                else:
                    K[0].copy_(K[-1])  # first same as last
                y = self.advance(y, y1)
                t0 = t1
            else:
                self.rejected += 1
                if r == math.inf and self.last_nonfinite is None and self.check_finite:
                    self.last_nonfinite = self.first_nonfinite(t0, dt, y)
            dt = dt * self._factor(r, safety, ifactor, dfactor)
            dt = min(max(dt, min_dt), max_dt)
        return (y0 if len(times) == 1 else last)[None] if sol is None else sol

    def _factor(self, r: float, safety: float, ifactor: float, dfactor: float) -> float:
        """torchdiffeq's step-size factor min(ifactor, max(safety·r^(-1/order), dfactor)),
        dfactor → 1 when r < 1."""
        if r == 0:
            return ifactor
        return min(ifactor, max(safety / r ** (1.0 / self.tab.order), 1.0 if r < 1 else dfactor))

    def interpolant(self, y0: Tensor, y1: Tensor, dt: float) -> list[Tensor]:
        """torchdiffeq's 4th-order dense output of the step from y0 to y1 (Δτ = dt): the
        coefficients of a polynomial in x = (τ - τ₀)/Δτ (``_polynomial``)."""
        from torchdiffeq._impl.interp import _interp_fit

        y_mid = torch.addmv(y0, self.K.T, self.mid, alpha=dt)
        return _interp_fit(y0, y1, y_mid, self.K[0], self.K[-1], dt)

    def initial_step(self, t0: float, y0: Tensor, rtol: float, atol: float, norm) -> float:
        """Hairer–Nørsett–Wanner's starting step (torchdiffeq's ``_select_initial_step``)."""
        f0 = self.K[0]
        scale = atol + y0.abs() * rtol
        d0, d1 = float(norm(y0 / scale).abs()), float(norm(f0 / scale).abs())
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        f1 = self.K[1]
        self.f(t0 + h0, y0 + h0 * f0, 1)
        d2 = float(norm((f1 - f0) / scale).abs()) / h0
        if d1 <= 1e-15 and d2 <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / float(self.tab.order))
        return min(100 * h0, h1)


def _rms(x: Tensor) -> Tensor:
    """√mean(x²) in one reduction."""
    return torch.linalg.vector_norm(x) / math.sqrt(x.numel())


# --- torchode ---------------------------------------------------------------------------------
TORCHODE_METHODS = ("dopri5", "euler")


def _torchode(rhs, y0: Tensor, times: Tensor, method: str, rtol: float, atol: float,
              step_size: float | None, jumps, max_steps: int, opts: dict, into: bool):
    """dy/dτ = rhs on torchode (one row, or a batch (B, n) with a step size per row)."""
    try:
        import torchode
    except ImportError:
        raise ImportError("solver='torchode' needs the torchode package: pip install "
                          "'fluxode[torchode]' (torchode==1.0.1)") from None
    if method not in TORCHODE_METHODS:
        raise ValueError(f"solver='torchode' runs method in {list(TORCHODE_METHODS)}, got "
                         f"{method!r} (use solver='torchdiffeq')")
    if jumps:
        raise ValueError("solver='torchode' does not stop at jumps (minibatch boundaries, "
                         "flows with jump times); use solver='torchdiffeq'")
    unknown = set(opts) - {"first_step"}
    if unknown:
        raise ValueError(f"solver='torchode' takes options ['first_step'], got "
                         f"{sorted(unknown)}")
    batched = y0.ndim == 2
    Y0 = y0 if batched else y0[None]
    nfe = [0]

    def f(t, y):
        nfe[0] += 1
        if batched:
            return rhs(t, y)
        tau = float(t[0])  # torchode keeps τ a tensor: one read per evaluation
        if into:
            out = torch.empty_like(y)
            rhs(tau, y[0], out[0])
            return out
        return rhs(tau, y[0])[None]

    term = torchode.ODETerm(f)
    B = Y0.shape[0]
    t_eval = times.to(Y0.device, Y0.dtype)[None].expand(B, -1)
    if method == "euler":
        ctrl = torchode.FixedStepController()
        dt0 = torch.full((B,), float(step_size), dtype=Y0.dtype, device=Y0.device)
        step = torchode.Euler(term=term)
    else:
        ctrl = torchode.IntegralController(atol=atol, rtol=rtol, term=term)
        first = opts.get("first_step")
        dt0 = None if first is None else torch.full((B,), float(first), dtype=Y0.dtype,
                                                     device=Y0.device)
        step = torchode.Dopri5(term=term)
    adj = torchode.AutoDiffAdjoint(step, ctrl, max_steps=max_steps)
    with torch.no_grad():
        res = adj.solve(torchode.InitialValueProblem(y0=Y0, t_eval=t_eval), dt0=dt0)
    status = res.status.tolist()
    if any(s != 0 for s in status):
        names = {int(s): s.name for s in torchode.Status}
        bad = sorted({names.get(s, str(s)) for s in status if s != 0})
        raise IntegrationError(f"torchode {method}: {', '.join(bad)} (raise max_steps, loosen "
                               "rtol/atol or lower lr)")
    st = res.stats
    get = lambda k: st[k].tolist() if isinstance(st.get(k), Tensor) else st.get(k)
    steps, acc = get("n_steps"), get("n_accepted")
    one = (lambda v: v[0]) if not batched else (lambda v: v)
    stats = {"method": method, "solver": "torchode", "nfe": nfe[0],
             "steps": one(steps) if isinstance(steps, list) else steps,
             "accepted": one(acc) if isinstance(acc, list) else acc}
    if method != "euler":
        stats.update(rtol=rtol, atol=atol)
    else:
        stats.update(step_size=float(step_size))
    sol = res.ys.transpose(0, 1) if batched else res.ys[0]  # (S, B, n) or (S, n)
    return sol, stats


def _polynomial(coeffs: list[Tensor], x: float) -> Tensor:
    """Σₖ coeffs[k]·xᵏ, in torchdiffeq's order of operations (``_interp_evaluate``)."""
    total, xp = coeffs[0] + x * coeffs[1], x
    for c in coeffs[2:]:
        xp = xp * x
        total = total + xp * c
    return total


# --- the one solve ----------------------------------------------------------------------------
def solve(rhs: Callable, y0: Tensor, times: Tensor | Sequence[float], *,
          method: str = "dopri5", rtol: float = 1e-7, atol: float = 1e-9,
          step_size: float | None = None, jumps: Sequence[float] = (),
          max_steps: int = 100_000, min_step: float = 0.0, options: dict | None = None,
          dense: bool = True, check_finite: bool = True,
          explain: Explain | None = None, into: bool = False,
          solver: str = "torchdiffeq", final_only: bool = False,
          workspace: dict | None = None) -> tuple[Tensor, dict]:
    """y at ``times`` (increasing step-clock times, a float64 tensor or Python numbers, which
    are then never read back from a tensor; y(times[0]) = y0) for dy/dτ = rhs(τ, y), with the
    method's statistics.

    ``into=True``: ``rhs(τ, y, out)`` writes dy/dτ into ``out`` (no allocation per call).
    ``final_only=True``: return only y(times[-1]) (shape (1, …); no saved rows).
    ``workspace``: a dict the caller keeps between solves; the stage buffer K and spare state
    buffers are taken from it and handed back (on CPU a fresh buffer of tens of MB is
    page-faulted on first touch, every solve).
    ``step_size``: fixed-step methods' Δτ (required for them); adaptive methods use
    ``rtol``/``atol`` and ``options`` (e.g. ``first_step``). ``dense=False`` makes an adaptive
    method step onto every save time (``step_t``), so saved values carry the method's order
    (torchdiffeq's dense output is 4th order). ``explain(τ, y, dy)`` words a non-finite value.
    ``explicit_adams`` defaults to ``max_order=5`` (torchdiffeq's 12 is unstable).
    ``solver``: "torchdiffeq" (default) or "torchode" (dopri5/euler; a (B, n) ``y0`` solves
    B rows with their own step sizes, ``rhs`` then gets τ as a (B,) tensor)."""
    method = check_method(method)
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {list(SOLVERS)}, got {solver!r}")
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    max_steps = check_max_steps(max_steps)
    opts = dict(options or {})
    # the save times as numbers: read once from a tensor; numbers are never made a tensor
    # unless torchdiffeq's or torchode's own loop takes them (``_time_tensor``)
    ts = times.tolist() if isinstance(times, Tensor) else [float(t) for t in times]
    T = ts[-1]
    jumps = [float(j) for j in jumps if ts[0] < float(j) < T]
    fixed = method in FIXED
    if fixed:
        if step_size is None:
            raise ValueError(f"method {method!r} needs step_size")
        step = check_positive("step_size", step_size)
        if "step_size" in opts or "grid_constructor" in opts:
            raise ValueError("pass step_size as an argument, not in options")
    elif step_size is not None:
        raise ValueError(f"step_size applies to fixed-grid methods {list(FIXED)}, not to "
                         f"{method!r} (use rtol/atol, or options['first_step'])")
    start, fused = time.perf_counter(), False
    if solver == "torchode":
        sol, stats = _torchode(rhs, y0, _time_tensor(times, ts), method, rtol, atol, step_size,
                               jumps, max_steps, opts, into)
    else:
        fused = (method in _FIXED_RK and set(opts) <= _FIXED_OPTIONS
                 and opts.get("interp", "linear") == "linear") or (
            method in ADAPTIVE and set(opts) <= _ADAPTIVE_OPTIONS)
        if fused:
            sol, stats = _fused(rhs, y0, ts, method, rtol, atol, step if fixed else None,
                                jumps, max_steps, min_step, opts, dense, check_finite,
                                explain, into, final_only, workspace)
        else:
            sol, stats = _odeint(rhs, y0, _time_tensor(times, ts), method, rtol, atol,
                                 step if fixed else None, jumps, max_steps, min_step, opts, dense,
                                 check_finite, explain, into)
    if final_only and len(sol) > 1:
        sol = sol[-1:]
    if y0.device.type == "cuda":
        torch.cuda.synchronize()
    stats["wall_time_s"] = time.perf_counter() - start
    last = sol[-1]
    checked = solver == "torchdiffeq" and fixed and method in _FIXED_RK and fused
    if check_finite and not checked and not all_finite(last):  # fused fixed: every step was
        msg = (explain(T, last, None) if explain and last.ndim == 1 else None) \
            or f"non-finite state at τ={T:g}"
        raise IntegrationError(msg)
    return sol, stats


def _time_tensor(times: Tensor | Sequence[float], ts: list[float]) -> Tensor:
    """The save times as the tensor the library loops take: the caller's, if it gave one,
    else ``ts`` as float64."""
    return times if isinstance(times, Tensor) else torch.tensor(ts, dtype=torch.float64)


def _fused(rhs, y0, ts, method, rtol, atol, step, jumps, max_steps, min_step, opts, dense,
           check_finite, explain, into, final_only, workspace):
    """The explicit Runge–Kutta methods on the fused flat-state stepper."""
    flat = y0 if y0.ndim == 1 else y0.reshape(-1)  # y0 itself: F may recognise its start
    rk = _RungeKutta(rhs, flat, method, into, explain, check_finite, min_step,
                     max_steps, workspace)
    if method in FIXED:
        perturb = bool(opts.get("perturb", bool(jumps)))
        grid = _grid(ts, step, jumps)
        sol = rk.fixed(flat, ts, grid, perturb, final_only)
        stats = {"method": method, "nfe": rk.nfe, "steps": rk.steps, "accepted": rk.steps,
                 "rejected": 0, "step_size": step}
    else:
        if jumps:
            opts["jump_t"] = jumps
        if not dense:
            opts["step_t"] = [v for v in ts[1:-1] if v not in set(jumps)]
        user = opts.get("norm")
        norm = None if user is None else (lambda x: torch.as_tensor(user(x)))
        sol = rk.adaptive(flat, ts, rtol, atol, opts, norm, final_only)
        stats = {"method": method, "nfe": rk.nfe, "steps": rk.steps, "accepted": rk.accepted,
                 "rejected": rk.rejected, "rtol": rtol, "atol": atol,
                 "min_step_taken": rk.min_dt}
    rk.release(sol)
    return sol.view(len(sol), *y0.shape), stats


def _odeint(rhs, y0, times, method, rtol, atol, step, jumps, max_steps, min_step, opts, dense,
            check_finite, explain, into):
    """torchdiffeq.odeint itself (the Adams methods, options the fused path does not take);
    the finiteness check runs per evaluation here."""
    if into:
        inner = rhs
        rhs = lambda tau, y: inner(tau, y, torch.empty_like(y))
    if method in FIXED:
        grid = fixed_grid(times, step, jumps).to(y0.device)
        opts["grid_constructor"] = lambda f, y, tt: grid
        opts.setdefault("perturb", bool(jumps))
        if method == "explicit_adams":
            opts.setdefault("max_order", 5)
    else:
        if jumps:
            opts["jump_t"] = torch.tensor(jumps, dtype=torch.float64)
        if not dense:
            inner_t = [float(v) for v in times[1:-1] if float(v) not in set(jumps)]
            opts["step_t"] = torch.tensor(inner_t, dtype=torch.float64)
        opts["norm"] = _finite_norm(opts.get("norm", _rms_norm))
    adaptive = method in ADAPTIVE
    fn = (_AdaptiveField if adaptive else _Field)(rhs, explain, min_step, max_steps,
                                                  check_finite, reject_nonfinite=adaptive)
    import torchdiffeq  # here, not at import: commands that never solve start faster

    try:
        with torch.no_grad():
            sol = torchdiffeq.odeint(fn, y0, times.to(y0.device), rtol=rtol, atol=atol,
                                     method=method, options=opts)
    except AssertionError as err:  # torchdiffeq's own guards: underflow, max_num_steps, NaN
        raise IntegrationError(f"{method}: {err} (at step {fn.steps}; loosen rtol/atol or "
                               "lower lr)") from None
    stats = {"method": method, "nfe": fn.nfe, "steps": fn.steps}
    if adaptive:
        stats.update(accepted=fn.accepted, rejected=fn.rejected, rtol=rtol, atol=atol,
                     min_step_taken=fn.min_dt)
    else:
        stats.update(accepted=fn.steps, rejected=0, step_size=step)
    return sol, stats
