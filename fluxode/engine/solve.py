"""The one continuous solve: dy/dτ = F(τ, y) on a flat state, by torchdiffeq.

Every continuous run in fluxode — ``integrate``, the ODE optimizer's step, batched sweeps —
calls ``solve``; this is the only module that imports the ODE library.

Grids and jumps. Fixed-step methods step on a grid τ₀ + j·Δτ that also holds every save
time and every jump time (a minibatch boundary, a switch in the flow's field), so no step
straddles a jump. Adaptive methods get the jumps as torchdiffeq's ``jump_t``: they stop there
and re-evaluate F on the new side.

Guards. A step below ``min_step``, a step too small to advance τ in float64
(Δτ < 1e-14·|τ|) or more than ``max_steps`` steps stops the run with an ``IntegrationError``
instead of looping. A fixed-step method stops at the first non-finite field value and names
it (``explain``); an adaptive one *rejects* the step instead (its error norm reads +∞, so the
step shrinks, as in diffrax): flows with an integrable singularity at τ = 0 (RMSprop, Adagrad
from v = 0, where Ẇ ~ 1/√τ) are resolved by small first steps. The finiteness check is one
summing pass over the rates per evaluation.

Statistics: ``nfe`` (field calls), ``steps``, ``accepted``/``rejected`` (adaptive Runge–Kutta
methods report them through torchdiffeq's step callbacks), ``min_step_taken``, wall time.
"""

from __future__ import annotations

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


class _Field(nn.Module):
    """F for torchdiffeq, with call counts, step guards and finiteness checks."""

    def __init__(self, rhs, explain: Explain | None, min_step: float, max_steps: int,
                 check_finite: bool, reject_nonfinite: bool):
        super().__init__()
        self.rhs, self.explain = rhs, explain
        self.min_step, self.max_steps = min_step, max_steps
        self.check_finite, self.reject_nonfinite = check_finite, reject_nonfinite
        self.nfe = self.steps = self.accepted = self.rejected = 0
        self.min_dt = math.inf
        self.last_nonfinite: str | None = None

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
        self.steps += 1
        dt, t0 = float(dt), float(t0)
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


class _AdaptiveField(_Field):
    """Adds torchdiffeq's accept/reject hooks (adaptive Runge–Kutta methods only)."""

    def callback_accept_step(self, t0, y0, dt):
        self.accepted += 1
        self.last_nonfinite = None

    def callback_reject_step(self, t0, y0, dt):
        self.rejected += 1


def fixed_grid(times: Tensor, step: float, jumps: Sequence[float]) -> Tensor:
    """τ₀ + j·step up to the last time, plus every save time and jump, deduplicated (points
    closer than 1e-9·max(1, |T|) merge onto the save time or jump)."""
    t0, T = float(times[0]), float(times[-1])
    n = math.ceil((T - t0) / step - 1e-9)
    marks = torch.cat([times, torch.tensor(list(jumps), dtype=torch.float64)])
    pts = torch.cat([torch.arange(n + 1, dtype=torch.float64) * step + t0, marks])
    pts = torch.unique(pts.clamp(min=t0, max=T))  # sorted
    keep = torch.ones_like(pts, dtype=torch.bool)
    keep[1:] = (pts[1:] - pts[:-1]) > 1e-9 * max(1.0, abs(T))
    pts = pts[keep]
    for v in marks:  # snap the save times and jumps themselves back onto the grid exactly
        pts[torch.argmin((pts - v).abs())] = v
    return pts


def solve(rhs: Callable[[float, Tensor], Tensor], y0: Tensor, times: Tensor, *,
          method: str = "dopri5", rtol: float = 1e-7, atol: float = 1e-9,
          step_size: float | None = None, jumps: Sequence[float] = (),
          max_steps: int = 100_000, min_step: float = 0.0, options: dict | None = None,
          dense: bool = True, check_finite: bool = True,
          explain: Explain | None = None) -> tuple[Tensor, dict]:
    """y at ``times`` (increasing float64 step-clock times; y(times[0]) = y0) for
    dy/dτ = rhs(τ, y), with the method's statistics.

    ``step_size``: fixed-step methods' Δτ (required for them); adaptive methods use
    ``rtol``/``atol`` and ``options`` (e.g. ``first_step``). ``dense=False`` makes an adaptive
    method step onto every save time (``step_t``), so saved values carry the method's order
    (torchdiffeq's dense output is 4th order). ``explain(τ, y, dy)`` words a non-finite value.
    ``explicit_adams`` defaults to ``max_order=5`` (torchdiffeq's 12 is unstable)."""
    method = check_method(method)
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    max_steps = check_max_steps(max_steps)
    opts = dict(options or {})
    T = float(times[-1])
    jumps = [float(j) for j in jumps if float(times[0]) < float(j) < T]
    if method in FIXED:
        if step_size is None:
            raise ValueError(f"method {method!r} needs step_size")
        step = check_positive("step_size", step_size)
        if "step_size" in opts or "grid_constructor" in opts:
            raise ValueError("pass step_size as an argument, not in options")
        grid = fixed_grid(times, step, jumps).to(y0.device)
        opts["grid_constructor"] = lambda f, y, tt: grid
        opts.setdefault("perturb", bool(jumps))
        if method == "explicit_adams":
            opts.setdefault("max_order", 5)
    else:
        if step_size is not None:
            raise ValueError(f"step_size applies to fixed-grid methods {list(FIXED)}, not to "
                             f"{method!r} (use rtol/atol, or options['first_step'])")
        if jumps:
            opts["jump_t"] = torch.tensor(jumps, dtype=torch.float64)
        if not dense:
            inner = [float(v) for v in times[1:-1] if float(v) not in set(jumps)]
            opts["step_t"] = torch.tensor(inner, dtype=torch.float64)
        opts["norm"] = _finite_norm(opts.get("norm", _rms_norm))
    adaptive = method in ADAPTIVE
    fn = (_AdaptiveField if adaptive else _Field)(rhs, explain, min_step, max_steps,
                                                  check_finite, reject_nonfinite=adaptive)
    import torchdiffeq  # here, not at import: commands that never solve start faster

    start = time.perf_counter()
    try:
        with torch.no_grad():
            sol = torchdiffeq.odeint(fn, y0, times.to(y0.device), rtol=rtol, atol=atol,
                                     method=method, options=opts)
    except AssertionError as err:  # torchdiffeq's own guards: underflow, max_num_steps, NaN
        raise IntegrationError(f"{method}: {err} (at step {fn.steps}; loosen rtol/atol or "
                               "lower lr)") from None
    if y0.device.type == "cuda":
        torch.cuda.synchronize()
    stats = {"method": method, "nfe": fn.nfe, "steps": fn.steps,
             "wall_time_s": time.perf_counter() - start}
    if adaptive:
        stats.update(accepted=fn.accepted, rejected=fn.rejected, rtol=rtol, atol=atol,
                     min_step_taken=fn.min_dt)
    else:
        stats.update(accepted=fn.steps, rejected=0, step_size=step)
    if check_finite and not all_finite(sol[-1]):
        msg = (explain(T, sol[-1], None) if explain else None) or f"non-finite state at τ={T:g}"
        raise IntegrationError(msg)
    return sol, stats
