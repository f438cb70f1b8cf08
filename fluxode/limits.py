"""Limit sweeps: discrete runs at shrinking steps h against an accurate continuous solution.

For each h along a scaling path (``fluxode.paths``) the discrete optimizer runs to step-clock
time T (T/h steps of the partitioned Euler map of F_h); the reference is the path's limit flow
(or, with ``modified=True``, the first-order modified flow for that h) integrated with
torchdiffeq's dopri5 at rtol = atol = 1e-12 in float64. Errors are ‖W_h(τ) - W(τ)‖₂ at the
checkpoints τ = j·h_max (every h must divide h_max): the global error at T and the maximum
over [0, T]. The order p is fitted by least squares on log e = p·log h + c with a t-based
confidence interval for p.

Sanity. Work is bounded before anything is allocated: the discrete run at the smallest h has
at most ``max_steps`` steps (and the reference solve as many solver steps). An order is
reported only from runs that are finite and bounded, whose errors shrink with h and lie above
rounding level (``ROUNDING``); otherwise ``FitRefused`` says why.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from . import paths as P
from .discretize import run_discrete
from .flows import Flow, make_flow
from .integrate import BudgetError, integrate

ROUNDING = 1e-10  # errors below ROUNDING·max(1, ‖W‖) are at the reference's accuracy (1e-12)
BLOWUP = 1e6      # a discrete run with ‖W‖ > BLOWUP·max(1, ‖W_ref‖) has diverged


class FitRefused(ValueError):
    """No meaningful order can be fitted from these runs (divergence, rounding level, ...)."""


# --- order fitting -----------------------------------------------------------------------------
@dataclass(frozen=True)
class OrderFit:
    """log e = order·log h + intercept; ``ci`` is the two-sided ``confidence`` interval."""

    order: float
    ci: tuple[float, float]
    intercept: float
    stderr: float
    confidence: float


def fit_order(hs, errors, confidence: float = 0.95) -> OrderFit:
    """Least-squares slope of log(error) against log(h), with a Student-t interval (n-2 dof)."""
    from scipy.special import stdtrit  # the t quantile, = scipy.stats.t.ppf (≈ 0.6 s to import)

    h = np.asarray(hs, dtype=float)
    e = np.asarray(errors, dtype=float)
    if h.ndim != 1 or h.shape != e.shape:
        raise ValueError(f"hs and errors must be 1-D of equal length, got {h.shape}, {e.shape}")
    if len(h) < 3:
        raise ValueError(f"need at least 3 step sizes to fit an order with an interval, "
                         f"got {len(h)}")
    if not (np.all(np.isfinite(h)) and np.all(h > 0)):
        raise ValueError("hs must be finite and in (0, inf)")
    if len(np.unique(h)) != len(h):
        dup = sorted({float(x) for x in h if np.sum(h == x) > 1})
        raise ValueError(f"hs must be distinct step sizes; {', '.join(f'{x:g}' for x in dup)} "
                         "given more than once")
    if not (np.all(np.isfinite(e)) and np.all(e > 0)):
        raise ValueError("errors must be finite and in (0, inf) (a zero or non-finite error "
                         "has no logarithm: check for divergence or a too-small h)")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    x, y = np.log(h), np.log(e)
    A = np.stack([x, np.ones_like(x)], 1)
    (slope, icpt), *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ np.array([slope, icpt])
    dof = len(h) - 2
    sxx = float(np.sum((x - x.mean()) ** 2))
    se = math.sqrt(float(resid @ resid) / dof / sxx) if dof > 0 else math.inf
    tq = float(stdtrit(dof, 0.5 + confidence / 2))
    return OrderFit(float(slope), (float(slope - tq * se), float(slope + tq * se)), float(icpt),
                    se, confidence)


# --- accurate continuous solutions ---------------------------------------------------------
def continuous(flow: Flow, problem, W0: Tensor, times, method: str = "dopri5",
               rtol: float = 1e-12, atol: float = 1e-12, max_steps: int = 100_000) -> Tensor:
    """W(τ) at ``times`` (step clock, increasing, from 0) for the continuous flow: an accurate
    ``fluxode.integrate.integrate`` solve; returns a (len(times), n) tensor."""
    return integrate(flow, problem, x0=W0.detach().reshape(-1), save_at=times, method=method,
                     rtol=rtol, atol=atol, max_steps=max_steps).W


def discrete(flow: Flow, problem, W0: Tensor, h: float, steps: int, every: int = 1) -> Tensor:
    """W after every ``every``-th of ``steps`` partitioned Euler steps of size h (with W0)."""
    hess = problem.hessian if flow.needs_hessian else None
    _, Ws = run_discrete(flow, problem.grad, W0.detach().reshape(-1), steps, h=h,
                         hess_fn=hess, every=every)
    return Ws


# --- sweeps ------------------------------------------------------------------------------------
@dataclass
class Sweep:
    """Errors of the discrete runs against the reference, per h, and the fitted orders."""

    flow: str
    problem: str
    path: str
    reference: str
    T: float
    hs: list[float]
    errors: list[float]        # ‖W_h(T) - W(T)‖
    max_errors: list[float]    # max over checkpoints in [0, T]
    order: float
    order_ci: tuple[float, float]
    max_order: float
    max_order_ci: tuple[float, float]
    hyperparameters: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hyperparameters"] = {k: (v if isinstance(v, (int, float, bool, str, tuple, list))
                                    else str(v)) for k, v in self.hyperparameters.items()}
        return d


def default_hs(T: float, n: int = 6, h_max: float | None = None) -> list[float]:
    """h_max·2^{-j}, j = 0..n-1, with h_max = the largest of 1/2^i (≤ 0.5) dividing T."""
    if h_max is None:
        h_max = 0.5
        while abs(T / h_max - round(T / h_max)) > 1e-9 * T / h_max and h_max > 1e-6:
            h_max /= 2
    return [h_max / 2 ** j for j in range(n)]


def modified_flow(flow: Flow, h: float, path: str) -> Flow:
    """The first-order modified flow of ``flow`` at step h of ``path``, as the flow states it
    (``Flow.modified``; SGD / heavy ball: ``flows.modified.ModifiedSGD``)."""
    return flow.modified(h, path)


def _check_grid(T: float, hs) -> tuple[list[float], int, list[int]]:
    if not (isinstance(T, (int, float)) and math.isfinite(T) and T > 0):
        raise ValueError(f"T must be in (0, inf), got {T!r}")
    hs = [P.check_step(h) for h in hs]
    if len(hs) < 3:
        raise ValueError(f"hs must hold at least 3 step sizes, got {len(hs)}")
    if len(set(hs)) != len(hs):
        dup = sorted({h for h in hs if hs.count(h) > 1}, reverse=True)
        raise ValueError(f"hs must be distinct step sizes; {', '.join(f'{h:g}' for h in dup)} "
                         "given more than once")
    hs = sorted(hs, reverse=True)
    h_max = hs[0]
    n0 = round(T / h_max)
    if n0 < 1 or abs(n0 * h_max - T) > 1e-9 * T:
        raise ValueError(f"T/h must be an integer for every h; T={T:g}, h={h_max:g}")
    ratios = []
    for h in hs:
        r = round(h_max / h)
        if abs(r * h - h_max) > 1e-9 * h_max:
            raise ValueError(f"every h must divide the largest h={h_max:g} (e.g. halvings); "
                             f"got h={h:g}")
        ratios.append(r)
    return hs, n0, ratios


def sweep(flow: Flow | str, problem, T: float, hs=None, path: str = "rates",
          modified: bool = False, W0: Tensor | None = None, confidence: float = 0.95,
          max_steps: int = 100_000, **hyperparameters) -> Sweep:
    """Sweep h along ``path``: discrete runs to time T against the limit (or modified) flow.

    ``max_steps`` bounds the discrete steps at the smallest h (checked before anything runs)
    and the reference solve's steps. Raises ``FitRefused`` when the runs cannot give an
    order (diverged, not convergent, errors at rounding level)."""
    flow = make_flow(flow, **hyperparameters) if isinstance(flow, str) else flow
    P.check_path(path)
    if path == "sqrt":
        raise ValueError("the sqrt path's limit is an SDE: use fluxode.sde for its study")
    problem = _problem(problem)
    hs, n0, ratios = _check_grid(T, default_hs(T) if hs is None else hs)
    from .engine.solve import check_max_steps

    check_max_steps(max_steps)
    if n0 * ratios[-1] > max_steps:
        raise BudgetError(f"T={T:g} at h={hs[-1]:g} is {n0 * ratios[-1]:.3g} discrete steps, "
                          f"more than max_steps={max_steps}: lower T, use larger hs, or raise "
                          "max_steps")
    W0 = (problem.x0() if W0 is None else W0).detach().reshape(-1)
    if W0.dtype != torch.float64:
        raise ValueError(f"limit sweeps run in float64, got W0 of dtype {W0.dtype}")
    checkpoints = torch.arange(n0 + 1, dtype=torch.float64) * hs[0]
    plain = None if modified else continuous(P.limit_flow(flow, path), problem, W0, checkpoints,
                                             max_steps=max_steps)
    errs, maxes, scale = [], [], 1.0
    for h, r in zip(hs, ratios):
        ref = continuous(modified_flow(flow, h, path), problem, W0, checkpoints,
                         max_steps=max_steps) if modified else plain
        ref_size = float(torch.linalg.vector_norm(ref, dim=1).max())
        scale = max(scale, ref_size)
        Ws = discrete(P.discrete_flow(flow, h, path), problem, W0, h, n0 * r, every=r)
        size = float(torch.linalg.vector_norm(Ws, dim=1).max()) \
            if torch.isfinite(Ws).all() else math.inf
        if size > BLOWUP * max(1.0, ref_size):
            raise FitRefused(f"the discrete run at h={h:g} diverged (‖W‖ reached {size:.3g}, "
                             f"the flow stays within {ref_size:.3g}): no order to fit; lower "
                             "lr or use smaller hs")
        d = torch.linalg.vector_norm(Ws - ref, dim=1)
        errs.append(float(d[-1]))
        maxes.append(float(d.max()))
    big = [h for h, e in zip(hs, maxes) if e > scale]
    if big:
        raise FitRefused(f"the error at h={', '.join(f'{h:g}' for h in big)} exceeds the size of "
                         f"the solution ({scale:.3g}): the discrete runs are unstable or far "
                         "from the asymptotic regime, no order to fit; use smaller hs or a "
                         "smaller lr")
    _check_fit(hs, errs, "error(T)", ROUNDING * scale)
    _check_fit(hs, maxes, "max error", ROUNDING * scale)
    fit, fmax = fit_order(hs, errs, confidence), fit_order(hs, maxes, confidence)
    ref_name = "modified" if modified else \
        ("flow" if P.limit_flow(flow, path) is flow else "limit")  # NAG → its ODE: "limit"
    return Sweep(flow.name, getattr(problem, "name", "problem"), path, ref_name, float(T), hs,
                 errs, maxes, fit.order, fit.ci, fmax.order, fmax.ci, flow.hyperparameters())


def _check_fit(hs, errs, what: str, floor: float) -> None:
    """Refuse a fit on errors at rounding level or errors that do not shrink as h does."""
    low = [h for h, e in zip(hs, errs) if not e > floor]
    if low:
        raise FitRefused(f"{what} at h={', '.join(f'{h:g}' for h in low)} is at rounding level "
                         f"(≤ {floor:.1e}): the discrete runs match the reference to its "
                         "accuracy, so no order can be fitted; use larger hs or a larger T")
    if not errs[-1] < errs[0]:  # hs are sorted from the largest
        raise FitRefused(f"{what} does not shrink with h ({errs[0]:.3g} at h={hs[0]:g}, "
                         f"{errs[-1]:.3g} at h={hs[-1]:g}): the runs are not in the convergent "
                         "regime; use smaller hs or a smaller lr")


def _problem(problem):
    if isinstance(problem, str):
        from .problems import make_problem

        return make_problem(problem, dtype=torch.float64)
    for attr in ("grad", "x0"):
        if not hasattr(problem, attr):
            raise ValueError(f"problem must be a name or have .grad(W) and .x0(), "
                             f"missing {attr!r}")
    return problem


# --- demo -----------------------------------------------------------------------------------------
def demo_sweeps() -> tuple[Sweep, Sweep]:
    """GD (lr 0.01) on the ravine to T = 20 at h = 0.25·2⁻ʲ (j = 0..4): against gradient flow
    (order 1) and against the modified flow (order 2; Barrett & Dherin 2021)."""
    flow = make_flow("sgd", lr=0.01)
    hs = [0.25 / 2 ** j for j in range(5)]
    return (sweep(flow, "ravine", T=20.0, hs=hs),
            sweep(flow, "ravine", T=20.0, hs=hs, modified=True))


def write_demo_sweeps(plain: Sweep, mod: Sweep, out_dir) -> dict:
    """``demo_sweeps``' figure and record: writes error_vs_h.png and error_vs_h.json to
    ``out_dir``; returns the record."""
    from pathlib import Path

    from .io import write_json
    from .plotting import plot_sweeps

    out = Path(out_dir)
    png = plot_sweeps([plain, mod], out / "error_vs_h.png",
                      title="GD on a ravine: gradient flow (order 1) vs modified flow (order 2)")
    record = {"plain": plain.to_dict(), "modified": mod.to_dict(), "figure": str(png)}
    write_json(out / "error_vs_h.json", record)
    return record


def demo_error_vs_h(out_dir) -> dict:
    """GD on the ravine: order-1 gap to gradient flow, order-2 gap to the modified flow
    (``demo_sweeps``). Writes error_vs_h.png and error_vs_h.json; returns the record."""
    return write_demo_sweeps(*demo_sweeps(), out_dir)
