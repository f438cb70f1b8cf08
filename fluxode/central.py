"""Central flows: the time-averaged trajectory of GD and RMSprop at the edge of stability.

Cohen, Damian, Talwalkar, Kolter & Lee (ICLR 2025), written here from the derivation below on
the step clock τ (one unit per optimizer step) for any problem with ``loss(W)`` (autograd).

GD. At the edge of stability GD oscillates across the valley within the span of the top
eigenvectors u₁…u_k of H = ∇²L: W_t = w̄ + δ_t, δ_t = Σᵢ xᵢ uᵢ flipping sign, with the
time-averaged covariance Σ = E δδᵀ = Σᵢⱼ Xᵢⱼ uᵢuⱼᵀ (X ⪰ 0, k × k). Averaging a third-order
expansion of the gradient over the oscillation,

    E ∇L(w̄ + δ) = ∇L(w̄) + ½ ∇_w⟨Σ, H(w)⟩ = ∇L + ½ Σᵢⱼ Xᵢⱼ Eᵢⱼ,   Eᵢⱼ = ∇_w(uᵢᵀH(w)uⱼ)

(u fixed; Eᵢⱼ = D³L[uᵢ, uⱼ, ·] by autograd through Hessian-vector products). The central flow
moves with the averaged gradient, dw/dτ = -η[∇L + ½ Σᵢⱼ Xᵢⱼ Eᵢⱼ], and X is whatever keeps
the top of the spectrum at or below 2/η — several eigenvalues reach 2/η together at EoS (four
on the tanh MLP at η = 0.5), so the constraint is on the matrix M = UᵀHU, Mᵢⱼ = λᵢδᵢⱼ:
the semidefinite complementarity problem (SDCP) X ⪰ 0, 2/η·I − M − dM/dτ·(1/κ) ⪰ 0,
⟨X, ·⟩ = 0, where dMᵢⱼ/dτ = ⟨Eᵢⱼ, dw/dτ⟩ is linear in X: a convex QP (``solve_sdcp``),
solved at every evaluation of the field. One eigenvalue at the edge: σ² = X₁₁ =
max(0, -2⟨∇S, ∇L⟩/‖∇S‖²). The averaged loss is E L = L(w̄) + ½⟨Σ, H⟩ = L + ½ Σᵢ Xᵢᵢλᵢ (the
*predicted loss*).

RMSprop (μ = 0). With P = 1/(√v + ε) the step is W ← W - ηP∇L, stable while the
preconditioned sharpness λ_max(P^{1/2}HP^{1/2}) ≤ 2/η. The oscillation runs along
zᵢ = P^{1/2}uᵢ (uᵢ: eigenvectors of P^{1/2}HP^{1/2}; Hzᵢ = λᵢuᵢ/P^{1/2}), Σ = Σ Xᵢⱼzᵢzⱼᵀ.
Averaging g and g²:

    E g  = ∇L + ½ Σ Xᵢⱼ Eᵢⱼ,  Eᵢⱼ = ∇_w(zᵢᵀHzⱼ);   E g² = (∇L)² + Σ Xᵢⱼ (Hzᵢ)(Hzⱼ)
    dw/dτ = -η P E g,                       dv/dτ = (1-α)(E g² - v)

and M = UᵀP^{1/2}HP^{1/2}U moves with w and with v: dMᵢⱼ/dτ = ⟨Eᵢⱼ, dw/dτ⟩ +
⟨∂Mᵢⱼ/∂v, dv/dτ⟩, ∂Mᵢⱼ/∂v = -(λᵢ + λⱼ)uᵢuⱼP/(4√v); again linear in X. In the v-terms λ is
taken at its threshold 2/η (exact on the active set, where the constraint holds it; X
vanishes off it): the SDCP operator is then self-adjoint and the problem a convex QP. The
predicted loss is L + ½ Σ Xᵢᵢλᵢ (E L(w̄ + δ) = L + ½⟨Σ, H⟩).

Adam: the construction does not carry over as it stands. Adam's W moves with m, a filtered
gradient, so X enters dw/dτ only through dm/dτ: at fixed state dS/dτ does not depend on X
(apart from the tiny (1-β₂)-weighted v term), and the complementarity condition above cannot
hold S at its threshold (2 + 2β₁)/((1-β₁)η). One would have to impose the constraint on the
second derivative d²S/dτ² (an index-2 condition on (w, m)), and the oscillation of heavy
ball at its threshold mixes the momentum state; this is not derived or built here.
Preconditioned sharpness tracking for Adam is (``fluxode.sharpness.track``).

Integration. The complementarity condition is stabilized (Baumgarte): M + (1/κ)dM/dτ must
stay below 2/η, so an eigenvalue above the threshold relaxes to it at rate κ instead of
drifting, and one approaching from below is caught smoothly. The field is then Lipschitz in
the state (the SDCP solution is), a plain ODE, integrated by ``fluxode.engine.solve`` with a
fixed-step Runge–Kutta method (default rk4, Δτ = 0.5): adaptive error control buys nothing for
a field whose every evaluation is a Lanczos solve, and the step must resolve κ (κΔτ ≲ 1). As
κ → ∞ the exact complementarity flow is recovered. Eigenpairs come from
``fluxode.sharpness.lanczos`` as *block* Lanczos warm-started from the previous k eigenvectors:
the constraint holds several eigenvalues at exactly 2/η, a repeated eigenvalue, and a single
start vector's Krylov space holds one vector per eigenspace — single-vector Lanczos then
misses copies while reporting converged (measured on the tanh MLP at η = 0.5: [4, 4, 3.9999,
3.946] returned as [4, 3.9999, 3.946, 3.517]), the missed direction goes unconstrained for
that evaluation and its eigenvalue rises past 2/η (4.005) until caught again. Each saved point
carries its Lanczos and SDCP reports.

Where it applies. The central flow describes an *established* oscillation. When progressive
sharpening carries GD's sharpness across 2/η, the unstable mode starts from ~0 and grows at
the rate |1 − ηS| per step, so GD first follows gradient flow past the threshold (on the
tanh MLP at η = 0.5: crossing at step 58, overshoot to 1.4 × 2/η at step 150) before the
grown oscillation pushes S back. That first push can overshoot below 2/η, where GD is
stable and its oscillation dies within tens of steps (on the tanh MLP on 400 digits at
η = 0.5 and 0.3, and for RMSprop), to regrow at the next crossing. ``compare`` therefore
starts the flows at ``eos_onset`` — the halved overshoot after the last such collapse — from
the discrete run's centre ½(y_t + y_{t+1}).

What "GD's time-averaged loss" is. The prediction L + ½⟨Σ, H⟩ is the average over the
oscillation, and GD's oscillation is not only the period-two flip: its amplitude rises and
falls in self-stabilization cycles of tens to hundreds of steps (GD's loss spikes once per
cycle). A short window (a centred 40-step mean) leaves the cycles in — ±15% pointwise on the
tanh MLP at η = 0.5 — and a long one applied to GD's loss alone adds the filter's own bias on
a curving loss. ``compare`` averages GD's loss and the predicted loss with the *same* Gaussian
filter (σ = 50 steps, the width the authors' public example smooths GD's loss with), over the
EoS phase only: the filter's bias cancels, what is left is the model's error.

η = 0.3 on the tanh MLP on 100 digits (``tanh_mlp()``) never holds an established
oscillation: S overshoots 2/η by ≤ 4% for ~700 steps while the unstable mode grows at
ηS − 1 ≈ 1% per step, releases in a catapult (step ~1650) that throws S to 0.98 × 2/η where
GD is stable and its oscillation dies, crosses again (~1950) and repeats in slower cycles —
GD alternates between δ ≈ 0 and bursts, which no flow with a steady σ² describes. On 400
digits (``tanh_mlp(n=400)``) the first overshoot (1.057 × 2/η) swings S down to 0.96 × 2/η,
GD's oscillation dies (×30), S crosses again at ~2020 and GD then hovers at 1.003 × 2/η with a
sustained oscillation: ``eos_onset`` starts the comparison there (see experiments/README.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from . import engine
from .sharpness import Eigenpairs, hvp_operator, lanczos

__all__ = [
    "CentralFlow",
    "CentralTrajectory",
    "GDCentralFlow",
    "RMSpropCentralFlow",
    "central_flow",
    "compare",
    "eos_onset",
    "solve_sdcp",
    "time_average",
]


def _psd(X: np.ndarray) -> np.ndarray:
    """Projection of a symmetric matrix onto the PSD cone."""
    lam, V = np.linalg.eigh(0.5 * (X + X.T))
    return (V * np.maximum(lam, 0.0)) @ V.T


def solve_sdcp(alpha: np.ndarray, B: np.ndarray, X0: np.ndarray | None = None,
               tol: float = 1e-12, max_iter: int = 20000) -> tuple[np.ndarray, float]:
    """(X, residual) for the semidefinite complementarity problem

        X ⪰ 0,   Y = α + 𝔅[X] ⪰ 0,   ⟨X, Y⟩ = 0,        𝔅[X]ᵢⱼ = Σₖₗ Bᵢⱼₖₗ Xₖₗ,

    α symmetric (k, k), 𝔅 self-adjoint and positive semidefinite (Bᵢⱼₖₗ = Bₖₗᵢⱼ): then X
    minimizes ⟨α, X⟩ + ½⟨X, 𝔅[X]⟩ over X ⪰ 0 (a convex QP whose KKT conditions are the
    SDCP), solved by accelerated projected gradient (FISTA with restarts, step 1/‖𝔅‖,
    Π₊ = projection onto the PSD cone by eigh) warm-started from X0. ``residual``: the
    natural-map residual max|X − Π₊(X − Y)| relative to 1 + max|α| (0 at the solution).
    k = 1: X = max(0, −α/B)."""
    k = alpha.shape[0]
    if alpha.shape != (k, k) or B.shape != (k, k, k, k):
        raise ValueError(f"alpha must be (k, k) and B (k, k, k, k), got {alpha.shape}, "
                         f"{B.shape}")
    a = 0.5 * (alpha + alpha.T)
    M = B.reshape(k * k, k * k)
    if not (np.isfinite(a).all() and np.isfinite(M).all()):
        raise ValueError("alpha and B must be finite")
    L = np.linalg.norm(M, 2)
    if not L > 0 or not np.allclose(M, M.T, rtol=1e-8, atol=1e-12 * L):
        raise ValueError("B must be a nonzero self-adjoint operator (B[i,j,k,l] = B[k,l,i,j])")
    if k == 1:
        return np.array([[max(0.0, -float(a[0, 0]) / float(M[0, 0]))]]), 0.0
    t, scale = 1.0 / L, 1.0 + np.abs(a).max()

    def F(X):
        return a + (M @ X.reshape(-1)).reshape(k, k)

    X = _psd(np.zeros_like(a) if X0 is None else X0)
    Z, s, res = X, 1.0, math.inf
    for it in range(max_iter):
        Xn = _psd(Z - t * F(Z))
        sn = 0.5 * (1 + math.sqrt(1 + 4 * s * s))
        restart = np.sum((Z - Xn) * (Xn - X)) > 0
        Z = Xn if restart else Xn + ((s - 1) / sn) * (Xn - X)
        s = 1.0 if restart else sn
        X = Xn
        if it % 10 == 9 or it == max_iter - 1:
            res = float(np.abs(X - _psd(X - F(X))).max()) / scale
            if res <= tol:
                break
    return 0.5 * (X + X.T), res


@dataclass
class Point:
    """The central flow's field and diagnostics at one state: X (k, k) the time-averaged
    oscillation covariance in the basis zᵢ of the top (preconditioned) eigenvectors
    (Σ = Σᵢⱼ Xᵢⱼ zᵢzⱼᵀ; σᵢ² = Xᵢᵢ), the eigenpairs, L(w) and the SDCP residual."""

    dstate: Tensor
    X: np.ndarray
    eig: Eigenpairs
    loss: float
    sdcp_residual: float = 0.0

    @property
    def sigma2(self) -> np.ndarray:
        return np.diag(self.X).copy()

    @property
    def predicted_loss(self) -> float:
        """E L(w̄ + δ) = L + ½⟨Σ, H⟩ = L + ½ Σᵢ Xᵢᵢ λᵢ (zᵢᵀHzⱼ = λᵢδᵢⱼ)."""
        return self.loss + 0.5 * float(np.dot(np.diag(self.X), self.eig.values))


class CentralFlow:
    """Base: state y (flat), the stabilized complementarity field, and the integration.

    A flow supplies its preconditioner P(y) (None: P = I) and ``_linearize``: the state's
    field as D₀ + Σₖₗ Xₖₗ Dₖₗ and the derivative C of the constrained matrix
    Mᵢⱼ = uᵢᵀP^{1/2}HP^{1/2}uⱼ (u fixed) along the state, so dM/dτ = C·D₀ + Σ Xₖₗ C·Dₖₗ;
    the base solves the SDCP for X and assembles the field (one engine for both flows)."""

    name = "central"

    def __init__(self, lr: float, k: int = 4, kappa: float = 1.0, lanczos_iters: int = 150,
                 lanczos_tol: float = 1e-7):
        self.lr = float(lr)
        if not self.lr > 0:
            raise ValueError(f"lr must be in (0, inf), got {lr}")
        if not kappa > 0:
            raise ValueError(f"kappa must be in (0, inf), got {kappa}")
        if not (isinstance(k, int) and k >= 1):
            raise ValueError(f"k must be an integer in [1, inf), got {k}")
        self.k, self.kappa = int(k), float(kappa)
        self.iters, self.tol = lanczos_iters, lanczos_tol
        self._warm: Tensor | None = None
        self._X: np.ndarray | None = None

    @property
    def threshold(self) -> float:
        return 2.0 / self.lr

    def preconditioner(self, y: Tensor) -> Tensor | None:
        return None

    def _eig(self, loss, W, precond=None) -> Eigenpairs:
        v0 = self._warm if self._warm is not None else torch.randn(
            W.numel(), generator=torch.Generator().manual_seed(0), dtype=W.dtype)
        e = lanczos(hvp_operator(loss, W, precond), v0, k=min(self.k, W.numel()), iters=self.iters,
                    tol=self.tol)
        self._warm = e.vectors
        return e

    @staticmethod
    def _curvature_gradients(loss, W: Tensor, Z: Tensor) -> Tensor:
        """E (k, k, n): Eᵢⱼ = ∇_w(zᵢᵀ∇²L(w)zⱼ) at W with the columns zᵢ of Z fixed (the third
        derivative D³L[zᵢ, zⱼ, ·]), by autograd through Hessian-vector products."""
        k = Z.shape[1]
        W = W.detach().requires_grad_(True)
        E = torch.empty(k, k, W.numel(), dtype=W.dtype, device=W.device)
        with torch.enable_grad():
            g = torch.autograd.grad(loss(W), W, create_graph=True)[0]
            for j in range(k):
                Hz = torch.autograd.grad(g, W, Z[:, j].contiguous(), create_graph=True)[0]
                for i in range(j + 1):
                    E[i, j] = E[j, i] = torch.autograd.grad(Hz @ Z[:, i], W,
                                                            retain_graph=True)[0]
        return E

    def _linearize(self, problem, y, g, P, lam, U, Z, E):  # pragma: no cover - abstract
        """(C (k, k, N), D₀ (N), D (k, k, N)) on the flat state of size N."""
        raise NotImplementedError

    def point(self, problem, y: Tensor) -> Point:
        """The field at y: eigenpairs of P^{1/2}HP^{1/2} (k largest), the SDCP

            X ⪰ 0,  (2/η)I − M − (dM/dτ)/κ ⪰ 0,  ⟨X, ·⟩ = 0     (M = diag λ at the eigenbasis)

        and dy/dτ = D₀ + Σₖₗ Xₖₗ Dₖₗ."""
        n = problem.dim
        W = y[:n]
        P = self.preconditioner(y)
        g = problem.grad(W).reshape(-1)
        e = self._eig(problem.loss, W, P)
        lam = np.array(e.values)
        U = e.vectors
        Z = U if P is None else P.sqrt()[:, None] * U
        E = self._curvature_gradients(problem.loss, W, Z)
        C, D0, D = self._linearize(problem, y, g, P, lam, U, Z, E)
        k = len(lam)
        m0 = (C @ D0).numpy()
        B = torch.einsum("ijn,kln->ijkl", C, D).numpy()
        alpha = np.diag(self.threshold - lam) - m0 / self.kappa
        warm = self._X if self._X is not None and self._X.shape == (k, k) else None
        X, res = solve_sdcp(alpha, -B / self.kappa, X0=warm)
        self._X = X
        dstate = D0 + torch.einsum("kl,kln->n", torch.from_numpy(X).to(D), D)
        return Point(dstate, X, e, float(problem.loss(W)), res)

    def initial(self, problem, W0: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def solve(self, problem, W0: Tensor | None = None, T: float = 100.0, save_every: float = 1.0,
              method: str = "rk4", step_size: float = 0.5, y0: Tensor | None = None,
              times: Tensor | None = None) -> CentralTrajectory:
        """Integrate from W₀ (or the flat state y0) over [0, T] with ``fluxode.engine.solve``,
        saving every ``save_every`` step-clock units (or at ``times``, from 0) with X, the
        eigenvalues, loss, predicted loss and the Lanczos and SDCP reports at each point."""
        y0, times = self._start(problem, W0, y0, T, save_every, times)

        def rhs(tau, y):
            return self.point(problem, y).dstate

        sol, stats = engine.solve(rhs, y0, times, method=method, step_size=step_size)
        return self._record(problem, times, sol, stats)

    def solve_plain(self, problem, W0: Tensor | None = None, T: float = 100.0,
                    save_every: float = 1.0, y0: Tensor | None = None, rtol: float = 1e-8,
                    atol: float = 1e-10, times: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(times, states) of the unconstrained flow (σ² = 0: gradient flow, RMSprop's flow)
        from the same start, by ``fluxode.engine.solve`` with dopri5 (its stiffness grows
        past 2/η, so no fixed step)."""
        y0, times = self._start(problem, W0, y0, T, save_every, times)
        sol, _ = engine.solve(lambda tau, y: self.plain_field(problem, y), y0, times,
                              method="dopri5", rtol=rtol, atol=atol)
        return times, sol

    def _start(self, problem, W0, y0, T, save_every, times=None):
        W0 = problem.x0() if W0 is None else W0
        y0 = self.initial(problem, W0.detach().reshape(-1)) if y0 is None else y0
        self._warm, self._X = None, None
        if times is not None:
            if len(times) < 2 or float(times[0]) != 0 or not bool((times.diff() > 0).all()):
                raise ValueError("times must increase from 0 with at least 2 entries")
            return y0, times.to(torch.float64)
        n = round(T / save_every)
        if n < 1 or abs(n * save_every - T) > 1e-9 * T:
            raise ValueError(f"T must be a positive multiple of save_every, got {T}, "
                             f"{save_every}")
        return y0, torch.arange(n + 1, dtype=torch.float64) * save_every

    def plain_field(self, problem, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _record(self, problem, times, sol, stats) -> CentralTrajectory:
        sig, sharp, loss, pred, res, conv, sdcp = [], [], [], [], [], [], []
        for y in sol:
            p = self.point(problem, y)
            sig.append(p.sigma2.tolist())
            sharp.append(p.eig.values)
            loss.append(p.loss)
            pred.append(p.predicted_loss)
            res.append(max(p.eig.residuals))
            conv.append(p.eig.converged)
            sdcp.append(p.sdcp_residual)
        dim = problem.dim
        return CentralTrajectory(self.name, self.lr, self.threshold, times, sol[:, :dim],
                                 sol, np.array(sig), np.array(sharp), np.array(loss),
                                 np.array(pred), np.array(res), np.array(conv),
                                 np.array(sdcp), stats)


@dataclass
class CentralTrajectory:
    """A central flow sampled at ``times``: W (rows), the full state, σᵢ² = Xᵢᵢ, the top
    (effective) eigenvalues, L(w), the predicted loss L + ½ΣXᵢᵢλᵢ, and the Lanczos residual /
    converged flag and SDCP residual at each point."""

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
    sdcp_residual: np.ndarray
    stats: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"flow": self.flow, "lr": self.lr, "threshold": self.threshold,
                "T": float(self.times[-1]), "final_loss": float(self.loss[-1]),
                "final_predicted_loss": float(self.predicted_loss[-1]),
                "final_sharpness": self.sharpness[-1].tolist(),
                "max_lanczos_residual": float(self.lanczos_residual.max()),
                "all_converged": bool(self.lanczos_converged.all()),
                "max_sdcp_residual": float(self.sdcp_residual.max()), **self.stats}


class GDCentralFlow(CentralFlow):
    """dw/dτ = -η[∇L + ½ Σₖₗ Xₖₗ Eₖₗ], Eₖₗ = ∇(uₖᵀHuₗ); the top eigenvalues of H ≤ 2/η
    (state: W)."""

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

    def _linearize(self, problem, y, g, P, lam, U, Z, E):
        # dM/dτ = ⟨Eᵢⱼ, dw/dτ⟩: C = E, D₀ = -ηg, Dₖₗ = -(η/2)Eₖₗ
        return E, -self.lr * g, -0.5 * self.lr * E


class RMSpropCentralFlow(CentralFlow):
    """dw/dτ = -ηP·E g, dv/dτ = (1-α)(E g² - v), λ(P^{1/2}HP^{1/2}) ≤ 2/η (state: [W | v])."""

    name = "central-rmsprop"

    def __init__(self, lr: float, alpha: float = 0.99, eps: float = 1e-8, **kw):
        super().__init__(lr, **kw)
        if not 0 <= alpha < 1:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        if not eps > 0:
            raise ValueError(f"eps must be in (0, inf), got {eps}")
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

    def _linearize(self, problem, y, g, P, lam, U, Z, E):
        # w: dw/dτ = -ηP(g + ½ΣXₖₗEₖₗ), dMᵢⱼ/dτ ∋ ⟨Eᵢⱼ, dw/dτ⟩.
        # v: E g² = g² + ΣXₖₗ (Hzₖ)(Hzₗ), Hzₖ = λₖuₖ/P^{1/2}; with u fixed and
        #    ∂P^{1/2}/∂v = -P^{3/2}/(4√v):  ∂Mᵢⱼ/∂v = -(λᵢ + λⱼ) uᵢuⱼ P/(4√v).
        # In these v-terms λ is taken at the threshold 2/η (exact on the active set, which the
        # constraint holds there; X vanishes off it): the SDCP operator is then self-adjoint.
        # √v is floored at ε in ∂P/∂v (√ is not differentiable at 0; a coordinate with
        # v < ε² — a dead input, zero gradient — has no curvature: uᵢ vanishes there).
        n, r, eta = problem.dim, 1 - self.alpha, self.lr
        v = y[n:].clamp(min=0.0)
        Hz = self.threshold * U / P.sqrt()[:, None]
        uu = U.T[:, None, :] * U.T[None, :, :]                       # (k, k, n)
        Cv = -(self.threshold / 2) * uu * (P / v.sqrt().clamp(min=self.eps))
        C = torch.cat([E, Cv], dim=2)
        D0 = torch.cat([-eta * P * g, r * (g * g - v)])
        D = torch.cat([-0.5 * eta * P * E, r * Hz.T[:, None, :] * Hz.T[None, :, :]], dim=2)
        return C, D0, D


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


def eos_onset(central: CentralFlow, problem, disc: Tensor, every: int = 2,
              collapse: float = 10.0, window: int = 50, hold: int = 25) -> dict:
    """Where the discrete run ``disc`` (rows: states) enters the edge of stability for good,
    from its (preconditioned) sharpness S_t measured every ``every`` steps and its period-two
    oscillation a_t = ‖w_{t+1} − 2w_t + w_{t−1}‖/4 (every step).

    ``crossing``: the first t with S_t ≥ 2/η after S was below it (progressive sharpening
    reaches the threshold); ``onset``: the first t after it where the overshoot has halved,
    S_t − 2/η ≤ ½ max_{crossing ≤ s ≤ t}(S_s − 2/η): past 2/η the unstable mode grows from ~0
    at the rate |1 − ηS| per step, so the run first follows gradient flow beyond the threshold;
    the grown oscillation then pushes S back (self-stabilization). That first push can
    overshoot the other way: S falls below 2/η, GD is stable there and its oscillation dies
    (a_t stays ``collapse`` × below its maximum over the ``window`` steps before, for ``hold``
    steps or more), and the mode has to regrow from ~0 when S crosses again (measured on the
    tanh MLP on 400 digits right after the first onset: for 55 steps, ×6000, at η = 0.5; 34
    steps, ×22, at η = 0.3; 50 steps, ×85, for RMSprop — while within GD's self-stabilization
    cycles on 100 digits at η = 0.5 a_t dips ×15–34 for only 14–17 steps). The
    oscillation the central flow averages over is established only after the last such
    collapse: the crossing and the halved overshoot are searched again from there
    (``collapses``: where they happened; ``first_onset``: the onset before the first one).
    None where not reached; ``steps`` and ``sharpness``: the measurements; ``amplitude``:
    a_t (NaN at the ends)."""
    if not collapse > 1:
        raise ValueError(f"collapse must be a factor in (1, inf), got {collapse!r}")
    for name, v in (("window", window), ("hold", hold)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer in [1, inf), got {v!r}")
    n = problem.dim
    at, vals, warm = [], [], None
    for t in range(0, len(disc), every):
        y = disc[t]
        e = lanczos(hvp_operator(problem.loss, y[:n], central.preconditioner(y)),
                    warm if warm is not None else torch.ones(n, dtype=y.dtype), k=1,
                    iters=100, tol=1e-7)
        warm = e.vectors
        at.append(t)
        vals.append(e.values[0])
    W = disc[:, :n]
    amp = np.full(len(disc), np.nan)
    if len(disc) > 2:
        amp[1:-1] = ((W[2:] - 2 * W[1:-1] + W[:-2]).norm(dim=1) / 4).numpy()

    def entry(after: int):
        """(crossing, onset) of S measured after step ``after``."""
        crossing = onset = None
        below, peak = False, -math.inf
        for t, S in zip(at, vals):
            if t <= after:
                continue
            if crossing is None and below and S >= central.threshold:
                crossing = t
            if crossing is not None:
                peak = max(peak, S - central.threshold)
                if S - central.threshold <= 0.5 * peak and peak > 0:
                    onset = t
                    break
            below = below or S < central.threshold
        return crossing, onset

    crossing, onset = entry(-1)
    first, collapses = onset, []
    while onset is not None:
        low = [amp[t] * collapse < np.nanmax(amp[max(onset, t - window):t])
               for t in range(onset + 1, len(disc) - 1)]
        died = next((onset + 1 + i for i in range(len(low) - hold + 1)
                     if all(low[i:i + hold])), None)
        if died is None:
            break
        collapses.append(died)
        crossing, onset = entry(died)  # each pass starts later: the loop ends
    return {"crossing": crossing, "onset": onset, "first_onset": first,
            "collapses": collapses, "steps": at, "sharpness": vals,
            "amplitude": amp.tolist()}


def compare(central: CentralFlow, problem, T: int, save_every: int = 10, sigma: float = 50.0,
            W0: Tensor | None = None, step_size: float = 0.5, method: str = "rk4",
            start: int | str = "eos", probe_every: int = 2) -> dict:
    """The discrete optimizer vs its plain flow vs its central flow through the EoS phase.

    The discrete run goes from W₀ for T steps; ``start="eos"`` starts both flows at its
    ``eos_onset`` (an int: at that step), from the discrete run's centre ½(y_t + y_{t+1})
    (the period-two oscillation averaged out), and compares on [start, T] on the step clock:
    ``ratio`` = ‖w_disc − w_central‖/‖w_disc − w_plain‖ (raw iterate), ``ratio_centered``
    the same with the centre ½(w_t + w_{t+1}). Loss: the central flow predicts the time
    average of the discrete loss, E L = L + ½⟨Σ, H⟩; the discrete loss and the predicted loss
    (interpolated linearly between the saved times onto every step) are averaged by the same
    Gaussian filter (``time_average``, σ = ``sigma`` steps) over the EoS phase only, and
    ``rel_loss_error`` = |⟨pred⟩ − ⟨L_disc⟩|/⟨L_disc⟩ at the saved times — the same filter on
    both, so the filter's own bias on a curving loss cancels and what is left is the model's
    error (a σ long against the oscillation's self-stabilization cycles, tens of steps, is
    needed: GD's loss spikes once per cycle); ``eos_loss_error``: the same for the means over
    the whole phase (σ = ∞). The discrete (preconditioned) sharpness against the central
    flow's. Data only."""
    W0 = problem.x0() if W0 is None else W0
    y0 = central.initial(problem, W0.detach().reshape(-1))
    n = problem.dim
    disc = central.discrete(problem, y0, T)
    losses = np.array([float(problem.loss(y[:n])) for y in disc])
    probe = eos_onset(central, problem, disc, every=probe_every)
    if start == "eos":
        if probe["onset"] is None:
            raise ValueError(f"the discrete run does not reach the EoS within T = {T} steps "
                             f"(sharpness crosses 2/η at {probe['crossing']}): raise T")
        t0 = int(probe["onset"])
    elif isinstance(start, int) and 0 <= start < T:
        t0 = start
    else:
        raise ValueError(f"start must be 'eos' or an int in [0, {T}), got {start!r}")
    L = T - t0
    rel_t = torch.tensor(sorted(set(range(0, L, save_every)) | {L}), dtype=torch.float64)
    ys = 0.5 * (disc[t0] + disc[t0 + 1])
    _, plain = central.solve_plain(problem, y0=ys, times=rel_t)
    cen = central.solve(problem, y0=ys, times=rel_t, step_size=step_size, method=method)
    idx = rel_t.long() + t0
    times = idx.to(torch.float64)
    Wd = disc[idx, :n]
    Wc = 0.5 * (disc[idx, :n] + disc[(idx + 1).clamp(max=T), :n])
    dplain = (Wd - plain[:, :n]).norm(dim=1)
    ratio = ((Wd - cen.W).norm(dim=1) / dplain).numpy()
    ratio_c = ((Wc - cen.W).norm(dim=1) / (Wc - plain[:, :n]).norm(dim=1)).numpy()
    pred = np.interp(np.arange(L + 1), rel_t.numpy(), cen.predicted_loss)
    avg = time_average(losses[t0:], sigma)
    avg_pred = time_average(pred, sigma)
    rel = (np.abs(avg_pred - avg) / avg)[rel_t.long().numpy()]
    eos_err = abs(pred.mean() - losses[t0:].mean()) / losses[t0:].mean()
    at = np.array(probe["steps"])
    sharp = [probe["sharpness"][int(np.argmin(np.abs(at - t)))] for t in idx.tolist()]
    return {"optimizer": central.name, "lr": central.lr, "threshold": central.threshold,
            "T": T, "start": t0, "crossing": probe["crossing"], "k": central.k,
            "kappa": central.kappa, "times": times.tolist(), "ratio": ratio.tolist(),
            "ratio_centered": ratio_c.tolist(), "distance_plain": dplain.tolist(),
            "discrete_loss": losses.tolist(),
            "discrete_loss_avg": avg[rel_t.long().numpy()].tolist(),
            "predicted_loss_avg": avg_pred[rel_t.long().numpy()].tolist(),
            "plain_loss": [float(problem.loss(y[:n])) for y in plain],
            "central_loss": cen.loss.tolist(), "predicted_loss": cen.predicted_loss.tolist(),
            "rel_loss_error": rel.tolist(), "eos_loss_error": float(eos_err),
            "discrete_sharpness": sharp, "probe": probe,
            "central_sharpness": cen.sharpness[:, 0].tolist(),
            "central_eigenvalues": cen.sharpness.tolist(),
            "sigma2": cen.sigma2.tolist(), "sigma": sigma, "window": f"σ={sigma:g} Gaussian",
            "lanczos_max_residual": float(cen.lanczos_residual.max()),
            "lanczos_all_converged": bool(cen.lanczos_converged.all()),
            "max_sdcp_residual": float(cen.sdcp_residual.max()),
            "solver": {k: v for k, v in cen.stats.items() if k != "wall_time_s"},
            "wall_time_s": cen.stats["wall_time_s"]}


def time_average(x, sigma: float) -> np.ndarray:
    """Gaussian time average over the samples given, x̄ₜ = Σₛ g(t − s)xₛ / Σₛ g(t − s),
    g(d) = exp(−d²/2σ²) cut at |d| ≤ 4σ, renormalized at the ends (nothing outside the samples
    enters); σ = 0 returns x."""
    x = np.asarray(x, dtype=float)
    if not sigma >= 0:
        raise ValueError(f"sigma must be in [0, inf), got {sigma}")
    if sigma == 0:
        return x.copy()
    h = int(4 * sigma)
    g = np.exp(-0.5 * (np.arange(-h, h + 1) / sigma) ** 2)
    n = len(x)
    return (np.convolve(x, g)[h:h + n]) / np.convolve(np.ones(n), g)[h:h + n]
