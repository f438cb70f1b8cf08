"""Central flows: the time-averaged trajectory of GD and RMSprop at the edge of stability.

Cohen, Damian, Talwalkar, Kolter & Lee (ICLR 2025), written here from the derivation below on
the step clock τ (one unit per optimizer step) for any problem with ``loss(W)`` (autograd).

GD. At the edge of stability GD oscillates across the valley along the top eigenvectors uᵢ
of H = ∇²L: W_k = w̄ + Σᵢ xᵢ uᵢ with xᵢ flipping sign. Averaging a third-order expansion of
the gradient over the oscillation (E xᵢ = 0, E xᵢ² = σᵢ²),

    E ∇L(w̄ + Σ xᵢuᵢ) = ∇L(w̄) + ½ Σᵢ σᵢ² ∇Sᵢ(w̄),     ∇Sᵢ = ∇_w(uᵢᵀH(w)uᵢ)  (uᵢ fixed)

(∇Sᵢ is the gradient of the eigenvalue λᵢ for a simple eigenvalue; computed by autograd
through a Hessian-vector product). The central flow moves with the averaged gradient,

    dw/dτ = -η [∇L + ½ Σᵢ σᵢ² ∇Sᵢ],

and the σᵢ² are whatever keeps every Sᵢ ≤ 2/η: the complementarity problem
σᵢ² ≥ 0, dSᵢ/dτ ≤ 0 where Sᵢ = 2/η, σᵢ²·dSᵢ/dτ = 0, with dSᵢ/dτ = ⟨∇Sᵢ, dw/dτ⟩ linear in
σ². One eigenvalue at the boundary: σ² = max(0, -2⟨∇S, ∇L⟩/‖∇S‖²). The averaged loss is
E L = L(w̄) + ½ Σᵢ σᵢ² Sᵢ (the *predicted loss*).

RMSprop (μ = 0). With P = 1/(√v + ε) the step is W ← W - ηP∇L, stable while the
preconditioned sharpness S = λ_max(P^{1/2}HP^{1/2}) ≤ 2/η. The oscillation runs along
zᵢ = P^{1/2}uᵢ (uᵢ: eigenvectors of P^{1/2}HP^{1/2}; PHzᵢ = λᵢzᵢ). Averaging g and g²:

    E g  = ∇L + ½ Σ σᵢ² ∇_w(zᵢᵀH zᵢ),      E g² = (∇L)² + Σ σᵢ² (H zᵢ)²,   H zᵢ = λᵢ uᵢ/P^{1/2}
    dw/dτ = -η P E g,                       dv/dτ = (1-α)(E g² - v)

and Sᵢ depends on w and on v: dSᵢ/dτ = ⟨∇_w(zᵢᵀHzᵢ), dw/dτ⟩ + ⟨∂Sᵢ/∂v, dv/dτ⟩ with
∂Sᵢ/∂v = -λᵢuᵢ²P/(2√v) (Hellmann–Feynman, dP/dv = -P²/(2√v)); again linear in σ². The
predicted loss is L + ½ Σ σᵢ² Sᵢ (E L(w̄ + x z) = L + ½σ² zᵀHz).

Adam: the construction does not carry over as it stands. Adam's W moves with m, a filtered
gradient, so σ² enters dw/dτ only through dm/dτ: at fixed state dS/dτ does not depend on σ²
(apart from the tiny (1-β₂)-weighted v term), and the complementarity condition above cannot
hold S at its threshold (2 + 2β₁)/((1-β₁)η). One would have to impose the constraint on the
second derivative d²S/dτ² (an index-2 condition on (w, m)), and the oscillation of heavy
ball at its threshold mixes the momentum state; this is not derived or built here.
Preconditioned sharpness tracking for Adam is (``fluxode.sharpness.track``).

Integration. The complementarity condition is relaxed to a stabilized one (Baumgarte): the
σᵢ² solve the linear complementarity problem

    σᵢ² ≥ 0,   dSᵢ/dτ + κ (Sᵢ - 2/η) ≤ 0,   σᵢ²·(dSᵢ/dτ + κ(Sᵢ - 2/η)) = 0,

so an eigenvalue at or above the threshold relaxes to it at rate κ instead of drifting, and
one approaching it from below is caught smoothly (σ² turns on once Sᵢ is within η|⟨∇S,∇L⟩|/κ
of 2/η). The field is then Lipschitz in the state (the LCP solution is), a plain ODE, and is
integrated by ``fluxode.engine.solve`` with a fixed-step Runge–Kutta method (default rk4,
Δτ = 0.5): adaptive error control buys nothing for a field whose every evaluation is a
Lanczos solve, and the step must resolve the relaxation rate (κΔτ ≲ 1). As κ → ∞ the exact
complementarity flow is recovered. Eigenpairs come from ``fluxode.sharpness.lanczos`` warm-
started from the previous ones; each saved point carries its Lanczos convergence report.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from . import engine
from .sharpness import Eigenpairs, hvp_operator, lanczos

__all__ = ["CentralFlow", "GDCentralFlow", "RMSpropCentralFlow", "CentralTrajectory",
           "solve_lcp", "central_flow", "compare", "time_average"]


def solve_lcp(M: np.ndarray, c: np.ndarray) -> np.ndarray:
    """x ≥ 0 with w = Mx + c ≥ 0 and xᵀw = 0, by enumerating active sets (k ≤ ~6). For a
    P-matrix M (here: positive definite Gram-type matrices) the solution is unique."""
    k = len(c)
    best, best_viol = np.zeros(k), math.inf
    for r in range(k + 1):
        for J in itertools.combinations(range(k), r):
            x = np.zeros(k)
            if J:
                J = list(J)
                try:
                    x[J] = np.linalg.solve(M[np.ix_(J, J)], -c[J])
                except np.linalg.LinAlgError:
                    continue
            w = M @ x + c
            viol = max(0.0, -x.min(initial=0.0)) + max(0.0, -w.min(initial=0.0))
            scale = 1e-12 * (1 + np.abs(c).max())
            if viol <= scale:
                return x
            if viol < best_viol:
                best, best_viol = np.maximum(x, 0.0), viol
    return best


@dataclass
class Point:
    """The central flow's field and diagnostics at one state."""

    dstate: Tensor
    sigma2: np.ndarray
    eig: Eigenpairs
    loss: float

    @property
    def predicted_loss(self) -> float:
        return self.loss + 0.5 * float(np.dot(self.sigma2, self.eig.values))


class CentralFlow:
    """Base: state y (flat), the stabilized complementarity field, and the integration."""

    name = "central"

    def __init__(self, lr: float, k: int = 1, kappa: float = 1.0, lanczos_iters: int = 60,
                 lanczos_tol: float = 1e-5):
        self.lr = float(lr)
        if not (self.lr > 0 and kappa > 0 and k >= 1):
            raise ValueError(f"need lr > 0, kappa > 0, k ≥ 1; got {lr}, {kappa}, {k}")
        self.k, self.kappa = int(k), float(kappa)
        self.iters, self.tol = lanczos_iters, lanczos_tol
        self._warm: Tensor | None = None

    @property
    def threshold(self) -> float:
        return 2.0 / self.lr

    def _eig(self, loss, W, precond=None) -> Eigenpairs:
        v0 = self._warm if self._warm is not None else torch.randn(
            W.numel(), generator=torch.Generator().manual_seed(0), dtype=W.dtype)
        e = lanczos(hvp_operator(loss, W, precond), v0, k=self.k, iters=self.iters,
                    tol=self.tol)
        self._warm = e.vectors
        return e

    @staticmethod
    def _curvature_gradient(loss, W: Tensor, z: Tensor) -> Tensor:
        """∇_w(zᵀ∇²L(w)z) at W with z fixed: autograd through a Hessian-vector product."""
        W = W.detach().requires_grad_(True)
        with torch.enable_grad():
            g = torch.autograd.grad(loss(W), W, create_graph=True)[0]
            Hz = torch.autograd.grad(g, W, z, create_graph=True)[0]
            return torch.autograd.grad(Hz @ z, W)[0].detach()

    def point(self, problem, y: Tensor) -> Point:  # pragma: no cover - abstract
        raise NotImplementedError

    def initial(self, problem, W0: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def solve(self, problem, W0: Tensor | None = None, T: float = 100.0, save_every: float = 1.0,
              method: str = "rk4", step_size: float = 0.5, y0: Tensor | None = None
              ) -> CentralTrajectory:
        """Integrate from W₀ (or the flat state y0) over [0, T] with ``fluxode.engine.solve``,
        saving every ``save_every`` step-clock units with σ², sharpness, loss, predicted loss
        and the Lanczos report at each saved point."""
        y0, times = self._start(problem, W0, y0, T, save_every)

        def rhs(tau, y):
            return self.point(problem, y).dstate

        sol, stats = engine.solve(rhs, y0, times, method=method, step_size=step_size)
        return self._record(problem, times, sol, stats)

    def solve_plain(self, problem, W0: Tensor | None = None, T: float = 100.0,
                    save_every: float = 1.0, y0: Tensor | None = None, rtol: float = 1e-8,
                    atol: float = 1e-10) -> tuple[Tensor, Tensor]:
        """(times, states) of the unconstrained flow (σ² = 0: gradient flow, RMSprop's flow)
        from the same start, by ``fluxode.engine.solve`` with dopri5 (its stiffness grows
        past 2/η, so no fixed step)."""
        y0, times = self._start(problem, W0, y0, T, save_every)
        sol, _ = engine.solve(lambda tau, y: self.plain_field(problem, y), y0, times,
                              method="dopri5", rtol=rtol, atol=atol)
        return times, sol

    def _start(self, problem, W0, y0, T, save_every):
        W0 = problem.x0() if W0 is None else W0
        y0 = self.initial(problem, W0.detach().reshape(-1)) if y0 is None else y0
        n = int(round(T / save_every))
        if n < 1 or abs(n * save_every - T) > 1e-9 * T:
            raise ValueError(f"T must be a positive multiple of save_every, got {T}, "
                             f"{save_every}")
        self._warm = None
        return y0, torch.arange(n + 1, dtype=torch.float64) * save_every

    def plain_field(self, problem, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _record(self, problem, times, sol, stats) -> CentralTrajectory:
        sig, sharp, loss, pred, res, conv = [], [], [], [], [], []
        for y in sol:
            p = self.point(problem, y)
            sig.append(p.sigma2.tolist())
            sharp.append(p.eig.values)
            loss.append(p.loss)
            pred.append(p.predicted_loss)
            res.append(max(p.eig.residuals))
            conv.append(p.eig.converged)
        dim = problem.dim
        return CentralTrajectory(self.name, self.lr, self.threshold, times, sol[:, :dim],
                                 sol, np.array(sig), np.array(sharp), np.array(loss),
                                 np.array(pred), np.array(res), np.array(conv), stats)


@dataclass
class CentralTrajectory:
    """A central flow sampled at ``times``: W (rows), the full state, σᵢ², the top (effective)
    eigenvalues, L(w), the predicted loss L + ½Σσᵢ²Sᵢ, and the Lanczos residual / converged
    flag at each point."""

    flow: str
    lr: float
    threshold: float
    times: Tensor
    W: Tensor
    states: Tensor
    sigma2: np.ndarray
    sharpness: np.ndarray
    loss: np.ndarray
    predicted_loss: np.ndarray
    lanczos_residual: np.ndarray
    lanczos_converged: np.ndarray
    stats: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"flow": self.flow, "lr": self.lr, "threshold": self.threshold,
                "T": float(self.times[-1]), "final_loss": float(self.loss[-1]),
                "final_predicted_loss": float(self.predicted_loss[-1]),
                "final_sharpness": self.sharpness[-1].tolist(),
                "max_lanczos_residual": float(self.lanczos_residual.max()),
                "all_converged": bool(self.lanczos_converged.all()), **self.stats}


class GDCentralFlow(CentralFlow):
    """dw/dτ = -η[∇L + ½Σσᵢ²∇Sᵢ], Sᵢ ≤ 2/η (state: W)."""

    name = "central-gd"

    def initial(self, problem, W0):
        return W0.clone()

    def plain_field(self, problem, y):
        return -self.lr * problem.grad(y).reshape(-1)

    def discrete(self, problem, y0: Tensor, steps: int) -> Tensor:
        """GD's iterates W₀ … W_steps (rows) from y0."""
        rows = [y0.clone()]
        for _ in range(steps):
            rows.append(rows[-1] - self.lr * problem.grad(rows[-1]).reshape(-1))
        return torch.stack(rows)

    def preconditioner(self, y):
        return None

    def point(self, problem, y):
        W = y
        loss = problem.loss
        g = problem.grad(W).reshape(-1)
        e = self._eig(loss, W)
        eta, k = self.lr, len(e.values)
        dS = [self._curvature_gradient(loss, W, e.vectors[:, i].contiguous()) for i in range(k)]
        G = np.array([[float(a @ b) for b in dS] for a in dS])
        b = np.array([float(a @ g) for a in dS])
        S = np.array(e.values)
        # dSᵢ/dτ = -η bᵢ - (η/2)(Gσ)ᵢ;  want dSᵢ/dτ + κ(Sᵢ - 2/η) ≤ 0
        sigma2 = solve_lcp(0.5 * eta * G, eta * b - self.kappa * (S - self.threshold))
        avg = g.clone()
        for s, d in zip(sigma2, dS):
            if s:
                avg.add_(d, alpha=0.5 * float(s))
        return Point(-eta * avg, sigma2, e, float(loss(W)))


class RMSpropCentralFlow(CentralFlow):
    """dw/dτ = -ηP·E g, dv/dτ = (1-α)(E g² - v), λ(P^{1/2}HP^{1/2}) ≤ 2/η (state: [W | v])."""

    name = "central-rmsprop"

    def __init__(self, lr: float, alpha: float = 0.99, eps: float = 1e-8, **kw):
        super().__init__(lr, **kw)
        if not 0 <= alpha < 1 or eps <= 0:
            raise ValueError(f"need alpha in [0, 1), eps > 0; got {alpha}, {eps}")
        self.alpha, self.eps = float(alpha), float(eps)

    def initial(self, problem, W0, v0: Tensor | None = None):
        """[W₀ | v₀], v₀ = ∇L(W₀)² unless given (a warm preconditioner: see the experiments)."""
        v0 = problem.grad(W0).reshape(-1) ** 2 if v0 is None else v0.reshape(-1)
        return torch.cat([W0.clone(), v0.to(W0.dtype)])

    def plain_field(self, problem, y):
        n = problem.dim
        W, v = y[:n], y[n:].clamp(min=0.0)
        g = problem.grad(W).reshape(-1)
        return torch.cat([-self.lr * g / (v.sqrt() + self.eps), (1 - self.alpha) * (g * g - v)])

    def discrete(self, problem, y0: Tensor, steps: int) -> Tensor:
        """RMSprop's states [W | v] after 0 … steps steps from y0 (torch's order: v first,
        then W with the new v)."""
        n, r = problem.dim, 1 - self.alpha
        rows = [y0.clone()]
        for _ in range(steps):
            W, v = rows[-1][:n], rows[-1][n:]
            g = problem.grad(W).reshape(-1)
            v = self.alpha * v + r * g * g
            rows.append(torch.cat([W - self.lr * g / (v.sqrt() + self.eps), v]))
        return torch.stack(rows)

    def preconditioner(self, y):
        return 1.0 / (y[len(y) // 2:].clamp(min=0.0).sqrt() + self.eps)

    def point(self, problem, y):
        n = problem.dim
        W, v = y[:n], y[n:].clamp(min=0.0)
        loss = problem.loss
        g = problem.grad(W).reshape(-1)
        sv = v.sqrt()
        P = 1.0 / (sv + self.eps)
        e = self._eig(loss, W, P)
        eta, r, k = self.lr, 1 - self.alpha, len(e.values)
        rP = P.sqrt()
        Z = [rP * e.vectors[:, i] for i in range(k)]
        dSw = [self._curvature_gradient(loss, W, z.contiguous()) for z in Z]
        lam = e.values
        # ∂Sᵢ/∂v = -λᵢuᵢ²P/(2√v);  (Hzᵢ)² = λᵢ²uᵢ²/P
        dSv = [-lam[i] * e.vectors[:, i] ** 2 * P / (2 * sv.clamp(min=1e-300)) for i in range(k)]
        Hz2 = [lam[i] ** 2 * e.vectors[:, i] ** 2 / P for i in range(k)]
        # dSᵢ/dτ = αᵢ + Σⱼ Bᵢⱼσⱼ²
        alpha = np.array([float(-eta * (dSw[i] @ (P * g)) + dSv[i] @ (r * (g * g - v)))
                          for i in range(k)])
        B = np.array([[float(-0.5 * eta * (dSw[i] @ (P * dSw[j])) + r * (dSv[i] @ Hz2[j]))
                       for j in range(k)] for i in range(k)])
        S = np.array(lam)
        sigma2 = solve_lcp(-B, -(alpha + self.kappa * (S - self.threshold)))
        Eg, Eg2 = g.clone(), g * g
        for i, s in enumerate(sigma2):
            if s:
                Eg.add_(dSw[i], alpha=0.5 * float(s))
                Eg2.add_(Hz2[i], alpha=float(s))
        return Point(torch.cat([-eta * P * Eg, r * (Eg2 - v)]), sigma2, e, float(loss(W)))


def central_flow(optimizer: str, lr: float, **kw) -> CentralFlow:
    """``GDCentralFlow`` ("gd") or ``RMSpropCentralFlow`` ("rmsprop"; alpha, eps)."""
    if optimizer == "gd":
        return GDCentralFlow(lr, **kw)
    if optimizer == "rmsprop":
        return RMSpropCentralFlow(lr, **kw)
    if optimizer == "adam":
        raise ValueError("no central flow for Adam: with momentum σ² enters dw/dτ only "
                         "through m, so S cannot be held at its threshold by the "
                         "complementarity condition (see fluxode.central)")
    raise ValueError(f"optimizer must be 'gd' or 'rmsprop', got {optimizer!r}")


def compare(central: CentralFlow, problem, T: int, save_every: int = 10, window: int = 20,
            W0: Tensor | None = None, step_size: float = 0.5, method: str = "rk4") -> dict:
    """The discrete optimizer vs its plain flow vs its central flow from one start, on the step
    clock: ``ratio`` = ‖w_disc − w_central‖/‖w_disc − w_plain‖ at the saved times; the
    discrete loss averaged over a centered ``window`` of steps against the central flow's
    predicted loss L + ½Σσᵢ²Sᵢ (``rel_loss_error``); the discrete run's (preconditioned)
    sharpness at the saved times against the central flow's; the Lanczos reports. Data only."""
    W0 = problem.x0() if W0 is None else W0
    y0 = central.initial(problem, W0.detach().reshape(-1))
    n = problem.dim
    disc = central.discrete(problem, y0, T)
    losses = np.array([float(problem.loss(y[:n])) for y in disc])
    times, plain = central.solve_plain(problem, y0=y0, T=float(T), save_every=save_every)
    cen = central.solve(problem, y0=y0, T=float(T), save_every=save_every,
                        step_size=step_size, method=method)
    idx = times.round().long()
    Wd = disc[idx, :n]
    ratio = ((Wd - cen.W).norm(dim=1) / (Wd - plain[:, :n]).norm(dim=1)).numpy()
    avg = time_average(losses, window)[idx.numpy()]
    rel = np.abs(cen.predicted_loss - avg) / avg
    sharp, warm = [], None
    for y in disc[idx]:
        e = lanczos(hvp_operator(problem.loss, y[:n], central.preconditioner(y)),
                    warm if warm is not None else torch.ones(n, dtype=y.dtype), k=1,
                    iters=80, tol=1e-6)
        warm = e.vectors
        sharp.append(e.values[0])
    return {"optimizer": central.name, "lr": central.lr, "threshold": central.threshold,
            "T": T, "times": times.tolist(), "ratio": ratio.tolist(),
            "discrete_loss": losses.tolist(), "discrete_loss_avg": avg.tolist(),
            "plain_loss": [float(problem.loss(y[:n])) for y in plain],
            "central_loss": cen.loss.tolist(), "predicted_loss": cen.predicted_loss.tolist(),
            "rel_loss_error": rel.tolist(), "discrete_sharpness": sharp,
            "central_sharpness": cen.sharpness[:, 0].tolist(),
            "sigma2": cen.sigma2.tolist(), "window": window,
            "lanczos_max_residual": float(cen.lanczos_residual.max()),
            "lanczos_all_converged": bool(cen.lanczos_converged.all()),
            "solver": {k: v for k, v in cen.stats.items() if k != "wall_time_s"},
            "wall_time_s": cen.stats["wall_time_s"]}


def time_average(x, window: int) -> np.ndarray:
    """Centered moving average over ``window`` samples (shrinking at the ends)."""
    x = np.asarray(x, dtype=float)
    c = np.concatenate([[0.0], np.cumsum(x)])
    n, h = len(x), window // 2
    lo = np.clip(np.arange(n) - h, 0, n)
    hi = np.clip(np.arange(n) + window - h, 0, n)
    return (c[hi] - c[lo]) / (hi - lo)
