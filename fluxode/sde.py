"""Stochastic limits: minibatch noise, the SDEs of SGD, RMSprop and Adam on noisy quadratics.

One clock. Everything here runs on the step clock τ (τ = k at the k-th torch step; τ = k·h at
step h of a path). The Li–Tai–E formulas below are stated, as in the paper, in lr-time
t = kη; the functions take the step clock and convert explicitly (``paths.lr_time``).

SMEs for any problem or model (``SME``, ``sme_loss``, ``sgd_monte_carlo``). For SGD with lr η
and batch B (with replacement) on a problem with per-example losses ℓᵢ, on the step clock,

    dW = F(τ, W, ∇L(W)) dτ + η(τ)·Σ_B(W)^{1/2} dB,      Σ_B = Σ(W)/B,  Σ = cov(∇ℓᵢ(W))

the drift F the flow's own field (Ẇ = -η(τ)·g for SGD; ``order=2``: the modified flow's,
-η∇(L + (η/4)‖∇L‖²), Li–Tai–E's second order) and the diffusion measured on the model at
every state: Σ_B^{1/2} as the n × m factor D/√B with DDᵀ = Σ, D the centred per-example
gradients of m examples over √(m-1) (``noise="full"``: rank m; m ≤ ``examples`` drawn once;
``noise="diagonal"``: √diag Σ, for models too large for a factor). torchsde integrates it
(Euler–Maruyama, dt ≤ 1 step); ``sgd_monte_carlo`` runs the real discrete SGD (the engine's
step, fresh minibatches) as the check.

Minibatch noise. With per-example gradients gᵢ (i = 1..N), the gradient noise covariance is
Σ = cov(gᵢ); a batch of B drawn with replacement has covariance Σ/B (without replacement
Σ·(N-B)/(B(N-1))).

SGD (Li, Tai & E 2017). SGD with lr η on g = ∇L + ξ, cov ξ = Σ, in lr-time t = kη:

    first order    dX = -∇L dt + √η Σ^{1/2} dB
    second order   dX = -∇(L + (η/4)‖∇L‖²) dt + √η Σ^{1/2} dB

weak errors O(η) and O(η²) over a fixed horizon. On L = ½xᵀAx with constant Σ both are
Ornstein–Uhlenbeck processes, dX = -A'X dt + √η Σ^{1/2} dB (A' = A, or A + (η/2)A²):

    mean  e^{-A't}x₀,   covariance in A's eigenbasis  C_ij = ηΣ_ij(1 - e^{-(a_i+a_j)t})/(a_i+a_j)

and the discrete SGD moments are exact too: μ_{k+1} = (I-ηA)μ_k, C_{k+1} = (I-ηA)C_k(I-ηA) + η²Σ.

RMSprop along the square-root path (Malladi et al. 2022; ``fluxode.paths.sqrt_point``): at
step h, lr √h·lr, 1-α → h(1-α), ε → ε/√h and noise covariance Σ/h. With u = h·v, on the step
clock τ = k·h, as h → 0:

    du = (1-α)(diag Σ - u) dτ                       (the noise in u vanishes)
    dθ = -lr·P∇L dτ + lr·PΣ^{1/2} dB,   P = diag(1/(√u + ε))

With diagonal A and Σ, u(τ) = σ²(1 - e^{-(1-α)τ}) and the moments of θ solve linear ODEs
(mean ṁ = -lr·P·a·m, variance ċ = -2lr·P·a·c + lr²P²σ²), integrated here to 1e-11.

Adam along the square-root path: lr → √h·lr, (1-βᵢ) → h(1-βᵢ), ε → ε/√h, noise Σ/h, with
g = aθ + σξ/√h. One torch step (m ← m + h(1-β₁)(g - m), v likewise with g², cᵢ = 1 - β'ᵢᵏ,
θ ← θ - √h·lr·(m/c₁)/(√(v/c₂) + ε/√h)) reads, with u = h·v and τ = k·h,

    Δm = h(1-β₁)(aθ - m) + √h(1-β₁)σξ
    Δu = h(1-β₂)(σ² - u) + h(1-β₂)σ²(ξ² - 1) + O(h^{3/2})   (noise variance O(h) over τ)
    Δθ = -h·lr·(m/c₁)/(√(u/c₂) + ε),    cᵢ = 1 - (1 - h(1-βᵢ))^{τ/h} → 1 - e^{-(1-βᵢ)τ}

so as h → 0

    dm = (1-β₁)(aθ - m) dτ + (1-β₁)σ dB        du = (1-β₂)(σ² - u) dτ
    ċᵢ = (1-βᵢ)(1 - cᵢ), cᵢ(0) = 0             dθ = -lr·P·(m/c₁) dτ,  P = 1/(√(u/c₂) + ε)

and u = σ²c₂ exactly, so the bias-corrected second moment is σ² and P = 1/(σ + ε) is
constant. Given that, (θ, m) is linear, and its moments (mean μ, covariance C) solve

    μ̇θ = -lr·P·μm/c₁                      μ̇m = (1-β₁)(a·μθ - μm)
    Ċθθ = -2lr·P·Cθm/c₁                   Ċθm = -lr·P·Cmm/c₁ + (1-β₁)(a·Cθθ - Cθm)
    Ċmm = 2(1-β₁)(a·Cθm - Cmm) + (1-β₁)²σ²

The quotients by c₁ are 0/0 at τ = 0 (m/c₁ is the bias-corrected momentum, whose variance
≈ σ²/τ blows up while the moments of θ stay smooth). The ODEs start at τ₀ = 1e-9 from their
leading-order values (μθ = θ₀ - lr·P·aθ₀τ₀, μm = (1-β₁)aθ₀τ₀, Cmm = (1-β₁)²σ²τ₀,
Cθm = -lr·P(1-β₁)σ²τ₀, Cθθ = 2lr²P²σ²τ₀), whose O(τ₀²) errors enter the moments at T only
through ∫ δ/c₁ ~ δ·log(T/τ₀): ~1e-17, far below any Monte Carlo resolution; the 1/c₁ modes
decay forward (like τ₀/τ), so the integration is stable.
The discrete runs approach these moments slowly (~h·log(1/h)): early on the bias-corrected
v/c₂ averages only k ≈ τ/h samples of g², so the discrete P fluctuates by ~1/√k, correlated
with m/c₁ (``adam_sqrt_path_study``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .discretize import run_discrete
from .flows import make_flow
from .paths import sqrt_point


# --- minibatch noise ---------------------------------------------------------------------------
def noise_covariance(per_example: Tensor) -> Tensor:
    """Σ = cov of the rows of ``per_example`` (N × n per-example gradients, N ≥ 2)."""
    if per_example.ndim != 2 or per_example.shape[0] < 2:
        raise ValueError(f"per_example must be N × n with N ≥ 2, got {tuple(per_example.shape)}")
    d = per_example - per_example.mean(0)
    return d.T @ d / (per_example.shape[0] - 1)


def minibatch_covariance(sigma: Tensor, batch_size: int, n: int | None = None,
                         replacement: bool = True) -> Tensor:
    """Covariance of a batch-mean gradient: Σ/B (with replacement) or Σ(N-B)/(B(N-1))."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer in [1, inf), got {batch_size!r}")
    if replacement:
        return sigma / batch_size
    if n is None or not batch_size <= n or n < 2:
        raise ValueError(f"without replacement, n must be in [max(2, batch_size), inf), got {n!r}")
    return sigma * ((n - batch_size) / (batch_size * (n - 1)))


def _spd(name, M) -> Tensor:
    M = torch.as_tensor(M, dtype=torch.float64)
    if M.ndim != 2 or M.shape[0] != M.shape[1] or not torch.allclose(M, M.T):
        raise ValueError(f"{name} must be a symmetric square matrix")
    return M


# --- SGD: exact discrete moments and the OU moments of its SDEs -----------------------------------
def sgd_moments(A, Sigma, x0, lr: float, steps: int) -> tuple[Tensor, Tensor]:
    """Exact mean and covariance of SGD after ``steps`` steps on ½xᵀAx with noise cov Σ."""
    A, Sigma = _spd("A", A), _spd("Sigma", Sigma)
    if not lr > 0:
        raise ValueError(f"lr must be in (0, inf), got {lr!r}")
    M = torch.eye(len(A), dtype=torch.float64) - lr * A
    m, C = torch.as_tensor(x0, dtype=torch.float64).clone(), torch.zeros_like(A)
    for _ in range(steps):
        m, C = M @ m, M @ C @ M.T + lr * lr * Sigma
    return m, C


def sde_moments(A, Sigma, x0, lr: float, T: float, order: int = 1) -> tuple[Tensor, Tensor]:
    """Mean and covariance at step-clock T (T steps of SGD with lr η; lr-time t = ηT) of the
    first- or second-order SGD SDE (closed form)."""
    A, Sigma = _spd("A", A), _spd("Sigma", Sigma)
    t = lr * T  # lr-time, the formulas' clock
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    lam, Q = torch.linalg.eigh(A)
    a = lam + (lr / 2) * lam ** 2 if order == 2 else lam
    z0 = Q.T @ torch.as_tensor(x0, dtype=torch.float64)
    mean = Q @ (torch.exp(-a * t) * z0)
    s = a[:, None] + a[None, :]
    C = lr * (Q.T @ Sigma @ Q) * (-torch.expm1(-s * t)) / s
    return mean, Q @ C @ Q.T


def li_tai_e_study(A=None, Sigma=None, x0=None, T: float = 2.0, lrs=None) -> dict:
    """Errors of the first- and second-order SDE moments against exact SGD moments at lr-time T
    (the paper's clock: T/η steps), with fitted weak orders (mean: 1 and 2; covariance, itself O(η): 2 and 2)."""
    from .limits import fit_order

    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64) if A is None else A
    Sigma = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64) if Sigma is None else Sigma
    x0 = torch.tensor([1.0, -1.0], dtype=torch.float64) if x0 is None else x0
    lrs = [0.1 / 2 ** j for j in range(6)] if lrs is None else lrs
    out = {"lrs": list(lrs), "T": T}
    for order in (1, 2):
        em, ec = [], []
        for lr in lrs:
            steps = round(T / lr)
            if abs(steps * lr - T) > 1e-9 * T:
                raise ValueError(f"T/lr must be an integer, got T={T:g}, lr={lr:g}")
            m, C = sgd_moments(A, Sigma, x0, lr, steps)
            ms, Cs = sde_moments(A, Sigma, x0, lr, steps, order)
            em.append(float((m - ms).norm()))
            ec.append(float((C - Cs).norm()))
        fm, fc = fit_order(lrs, em), fit_order(lrs, ec)
        out[f"order{order}"] = {"mean_errors": em, "cov_errors": ec,
                                "mean_order": fm.order, "mean_order_ci": fm.ci,
                                "cov_order": fc.order, "cov_order_ci": fc.ci}
    return out


class SGDSDE(torch.nn.Module):
    """torchsde model of the SGD SDE on ½xᵀAx on the step clock: f = -ηA'x, g = ηΣ^{1/2}
    (general noise; lr-time t = ητ)."""

    noise_type, sde_type = "general", "ito"

    def __init__(self, A, Sigma, lr: float, order: int = 1):
        super().__init__()
        A = _spd("A", A)
        self.drift = lr * (A + (lr / 2) * A @ A if order == 2 else A)
        lam, Q = torch.linalg.eigh(_spd("Sigma", Sigma))
        self.root = lr * (Q * lam.clamp(min=0).sqrt()) @ Q.T

    def f(self, t, y):
        return -y @ self.drift.T

    def g(self, t, y):
        return self.root.expand(y.shape[0], *self.root.shape)


# --- RMSprop along the square-root path ----------------------------------------------------
def rmsprop_sqrt_moments(a, sigma, x0, lr: float, alpha: float, eps: float, T: float,
                         n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of θ at step-clock T for the RMSprop SDE on ½Σaᵢθᵢ² (diagonal noise
    std σ), by integrating the moment ODEs (rtol 1e-11)."""
    from scipy.integrate import solve_ivp

    a, s, x0 = (np.asarray(v, dtype=float) for v in (a, sigma, x0))
    r = 1 - alpha

    def P(t):
        return 1 / (np.sqrt(s ** 2 * (-np.expm1(-r * t))) + eps)

    def rhs(t, y):
        m, c = y[:len(a)], y[len(a):]
        p = P(t)
        return np.concatenate([-lr * p * a * m, -2 * lr * p * a * c + (lr * p * s) ** 2])

    sol = solve_ivp(rhs, (0, T), np.concatenate([x0, np.zeros_like(x0)]), rtol=1e-11,
                    atol=1e-13, method="DOP853")
    y = sol.y[:, -1]
    return y[:len(a)], y[len(a):]


class RMSpropSDE(torch.nn.Module):
    """torchsde model of RMSprop's square-root-path SDE, state y = [θ | u] (diagonal noise)."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, a, sigma, lr: float, alpha: float, eps: float):
        super().__init__()
        self.a = torch.as_tensor(a, dtype=torch.float64)
        self.s = torch.as_tensor(sigma, dtype=torch.float64)
        self.lr, self.r, self.eps, self.d = lr, 1 - alpha, eps, len(self.a)

    def _P(self, y):
        return 1 / (y[:, self.d:].clamp(min=0).sqrt() + self.eps)

    def f(self, t, y):
        th, u = y[:, :self.d], y[:, self.d:]
        return torch.cat([-self.lr * self._P(y) * self.a * th, self.r * (self.s ** 2 - u)], 1)

    def g(self, t, y):
        return torch.cat([self.lr * self._P(y) * self.s, torch.zeros_like(y[:, self.d:])], 1)


def rmsprop_sqrt_discrete(a, sigma, x0, lr: float, alpha: float, eps: float, T: float,
                          h: float, replicas: int = 20000, seed: int = 0):
    """Mean and variance over replicas of torch-semantics RMSprop at step h of the sqrt path
    (fluxode's RMSprop flow, h = 1 Euler steps, hyperparameters from ``sqrt_point``)."""
    pt = sqrt_point(make_flow("rmsprop", lr=lr, alpha=alpha, eps=eps), h)
    return _replica_moments(pt.flow, a, sigma, pt.noise_scale, x0, T, h, replicas, seed)


def sqrt_path_study(hs=None, T: float = 2.0, replicas: int = 20000, lr: float = 0.5,
                    alpha: float = 0.9, eps: float = 0.5, a=(1.0, 4.0), sigma=(1.0, 0.5),
                    x0=(1.0, -1.0), seed: int = 0) -> dict:
    """Discrete RMSprop moments at shrinking h on the square-root path vs the SDE moments."""
    hs = [0.5 / 2 ** j for j in range(5)] if hs is None else hs
    m_ref, v_ref = rmsprop_sqrt_moments(a, sigma, x0, lr, alpha, eps, T)
    rows = []
    for i, h in enumerate(hs):
        m, v, R = rmsprop_sqrt_discrete(a, sigma, x0, lr, alpha, eps, T, h, replicas, seed + i)
        rows.append(_study_row(h, m, v, R, m_ref, v_ref))
    return {"T": T, "sde_mean": m_ref.tolist(), "sde_var": v_ref.tolist(), "rows": rows,
            "hyperparameters": dict(lr=lr, alpha=alpha, eps=eps, a=list(a), sigma=list(sigma))}


# --- Adam along the square-root path -------------------------------------------------------
def _sqrt_path_args(a, sigma, x0, T: float):
    a, s, x0 = (np.asarray(v, dtype=float) for v in (a, sigma, x0))
    if a.ndim != 1 or a.shape != s.shape or a.shape != x0.shape:
        raise ValueError(f"a, sigma and x0 must be 1-d of one length, got shapes "
                         f"{a.shape}, {s.shape}, {x0.shape}")
    if not np.all(np.isfinite(a)) or not np.all(np.isfinite(x0)):
        raise ValueError("a and x0 must be finite")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError("sigma must be in [0, inf) elementwise")
    if not (math.isfinite(T) and T > 0):
        raise ValueError(f"T must be in (0, inf), got {T!r}")
    return a, s, x0


def _adam_hp(lr, betas, eps):
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be in (0, inf), got {lr!r}")
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be in (0, inf), got {eps!r}")
    return float(lr), (float(betas[0]), float(betas[1])), float(eps)


def adam_sqrt_moments(a, sigma, x0, lr: float, betas: tuple[float, float], eps: float,
                      T: float, tau0: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of θ at step-clock T for Adam's square-root-path SDE on ½Σaᵢθᵢ²
    (diagonal noise std σ): the linear moment ODEs of (θ, m), started at τ₀ from their
    leading-order values (module docstring), integrated with rtol 1e-11."""
    from scipy.integrate import solve_ivp

    a, s, x0 = _sqrt_path_args(a, sigma, x0, T)
    lr, (b1, _), eps = _adam_hp(lr, betas, eps)
    if not 0 < tau0 < T * 1e-3:
        raise ValueError(f"tau0 must be in (0, T/1000), got {tau0!r}")
    r, P, d = 1 - b1, 1 / (s + eps), len(a)  # √(u/c₂) = σ exactly on the limit

    def rhs(t, y):
        mt, mm, ctt, ctm, cmm = y.reshape(5, d)
        k = lr * P / -math.expm1(-r * t)  # lr·P/c₁
        return np.concatenate([-k * mm, r * (a * mt - mm), -2 * k * ctm,
                               -k * cmm + r * (a * ctt - ctm),
                               2 * r * (a * ctm - cmm) + (r * s) ** 2])

    t, q = tau0, lr * P
    y0 = np.concatenate([x0 - q * a * x0 * t, r * a * x0 * t, 2 * (q * s) ** 2 * t,
                         -q * r * s ** 2 * t, (r * s) ** 2 * t])
    sol = solve_ivp(rhs, (tau0, T), y0, rtol=1e-11, atol=1e-14, method="DOP853")
    if not sol.success:  # pragma: no cover
        raise RuntimeError(f"moment ODEs failed: {sol.message}")
    y = sol.y[:, -1].reshape(5, d)
    return y[0], y[2]


class AdamSDE(torch.nn.Module):
    """torchsde model of Adam's square-root-path SDE on ½Σaᵢθᵢ², state y = [θ | m]:

        dm = (1-β₁)(aθ - m) dτ + (1-β₁)σ dB,    dθ = -lr·(m/c₁)/(σ + ε) dτ,
        c₁ = 1 - e^{-(1-β₁)τ}   (√(u/c₂) = σ exactly on the limit; module docstring).

    m/c₁ is 0/0 at τ = 0, where its limit aθ is used; afterwards m/c₁ ~ σ·B(τ)/τ is singular
    but integrable, and an Euler–Maruyama step of size dt adds O(√dt) noise through it."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, a, sigma, lr: float, betas: tuple[float, float], eps: float):
        super().__init__()
        a_, s_, _ = _sqrt_path_args(a, sigma, np.zeros(len(a)), 1.0)
        self.lr, (b1, _), eps = _adam_hp(lr, betas, eps)
        self.a = torch.as_tensor(a_, dtype=torch.float64)
        self.s = torch.as_tensor(s_, dtype=torch.float64)
        self.r, self.P, self.d = 1 - b1, 1 / (self.s + eps), len(a_)

    def f(self, t, y):
        th, m = y[:, :self.d], y[:, self.d:]
        c1 = -math.expm1(-self.r * float(t))
        mhat = self.a * th if c1 == 0 else m / c1
        return torch.cat([-self.lr * self.P * mhat, self.r * (self.a * th - m)], 1)

    def g(self, t, y):
        return torch.cat([torch.zeros_like(y[:, :self.d]),
                          (self.r * self.s).expand(len(y), self.d)], 1)


def adam_sqrt_discrete(a, sigma, x0, lr: float, betas: tuple[float, float], eps: float,
                       T: float, h: float, replicas: int = 20000, seed: int = 0):
    """Mean and variance over replicas of torch-semantics Adam at step h of the sqrt path:
    fluxode's Adam flow (m, v and the bias-correction clocks c₁, c₂), h = 1 Euler steps,
    hyperparameters from ``sqrt_point``, gradient aθ + σξ/√h."""
    a_, s_, x0_ = _sqrt_path_args(a, sigma, x0, T)
    lr, betas, eps = _adam_hp(lr, betas, eps)
    if not isinstance(replicas, int) or replicas < 2:
        raise ValueError(f"replicas must be an integer in [2, inf), got {replicas!r}")
    pt = sqrt_point(make_flow("adam", lr=lr, betas=betas, eps=eps), h)
    return _replica_moments(pt.flow, a_, s_, pt.noise_scale, x0_, T, h, replicas, seed)


def _replica_moments(flow, a, sigma, noise_scale: float, x0, T: float, h: float,
                     replicas: int, seed: int):
    """Mean and variance over ``replicas`` rows of the flow's discrete run (T/h steps) on
    ½Σaᵢθᵢ² with gradient noise σ·√noise_scale·ξ, ξ ~ N(0, I)."""
    steps = round(T / h)
    if abs(steps * h - T) > 1e-9 * T:
        raise ValueError(f"T/h must be an integer, got T={T:g}, h={h:g}")
    a = torch.as_tensor(a, dtype=torch.float64)
    noise = torch.as_tensor(sigma, dtype=torch.float64) * math.sqrt(noise_scale)
    gen = torch.Generator().manual_seed(seed)

    def grad(W):
        return W * a + noise * torch.randn(W.shape, generator=gen, dtype=W.dtype)

    W0 = torch.as_tensor(x0, dtype=torch.float64).expand(replicas, len(a)).clone()
    _, Ws = run_discrete(flow, grad, W0, steps, every=steps)
    W = Ws[-1]
    return W.mean(0).numpy(), W.var(0).numpy(), replicas


def adam_sqrt_path_study(hs=None, T: float = 2.0, replicas: int = 20000, lr: float = 0.5,
                         betas: tuple[float, float] = (0.8, 0.9), eps: float = 0.5,
                         a=(1.0, 4.0), sigma=(1.0, 2.0), x0=(1.0, -1.0), seed: int = 0) -> dict:
    """Discrete Adam moments at shrinking h on the square-root path vs the SDE moments.

    The weak error is larger than RMSprop's and decays only like h·log(1/h): early on the
    bias-corrected v/c₂ averages k ≈ τ/h samples of g², so P fluctuates by ~1/√k and
    correlates with m/c₁; the (aθ)²·h part of u adds O(h·a²θ²/σ²). Hence h down to ~1/256."""
    hs = [0.5 / 4 ** j for j in range(5)] if hs is None else hs
    m_ref, v_ref = adam_sqrt_moments(a, sigma, x0, lr, betas, eps, T)
    rows = []
    for i, h in enumerate(hs):
        m, v, R = adam_sqrt_discrete(a, sigma, x0, lr, betas, eps, T, h, replicas, seed + i)
        rows.append(_study_row(h, m, v, R, m_ref, v_ref))
    return {"T": T, "sde_mean": m_ref.tolist(), "sde_var": v_ref.tolist(), "rows": rows,
            "hyperparameters": dict(lr=lr, betas=list(betas), eps=eps, a=list(a),
                                    sigma=list(sigma), x0=list(x0))}


def _study_row(h, m, v, R, m_ref, v_ref) -> dict:
    """Max-over-coordinates moment errors and Monte Carlo standard errors (Gaussian 4th moment
    for the variance: s.e. = v·√(2/(R-1)))."""
    return {"h": h, "mean": m.tolist(), "var": v.tolist(),
            "mean_err": float(np.abs(m - m_ref).max()),
            "var_err": float(np.abs(v - v_ref).max()),
            "mean_se": float(np.sqrt(v / R).max()),
            "var_se": float((v * np.sqrt(2 / (R - 1))).max())}


# --- SMEs for any problem or model ---------------------------------------------------------------
def _as_problem(problem, loss_fn=None, data=None):
    """A problem with per-example losses: a ModuleProblem, an nn.Module with loss_fn and
    data=(x, y), or any Problem with ``example_losses(W) -> (N,)``."""
    from .problems import ModuleProblem

    if isinstance(problem, torch.nn.Module):
        if loss_fn is None or data is None:
            raise ValueError("a model needs loss_fn and data=(x, y)")
        problem = ModuleProblem(problem, loss_fn, data=data)
    if isinstance(problem, ModuleProblem):
        return problem
    if not callable(getattr(problem, "example_losses", None)):
        raise ValueError("the SME needs per-example losses: give a ModuleProblem, a model with "
                         "loss_fn and data, or a Problem with example_losses(W) -> (N,)")
    return problem


class _Examples:
    """ℓ(W, idx): the mean loss of the examples idx (vmap-able), and N."""

    def __init__(self, problem):
        from .problems import ModuleProblem

        if isinstance(problem, ModuleProblem):
            x = torch.cat([b[0] for b in problem.batches])
            y = torch.cat([b[1] for b in problem.batches])
            self.n = len(y)
            self.fn = lambda W, idx: problem.batch_loss(W, (x[idx], y[idx]))
        else:
            self.n = len(problem.example_losses(problem.x0()))
            self.fn = lambda W, idx: problem.example_losses(W)[idx].mean()
        self.all = torch.arange(self.n)

    def loss(self, W):
        return self.fn(W, self.all)

    def per_example_grads(self, W, idx):
        """(len(idx), n): ∇ℓᵢ(W) for i in idx."""
        g = torch.func.grad(self.fn)
        return torch.func.vmap(lambda i: g(W, i[None]))(idx)


def per_example_gradients(problem, W: Tensor, examples: Tensor | None = None, *,
                          loss_fn=None, data=None) -> Tensor:
    """The per-example gradients ∇ℓᵢ(W) (N × n, or the rows ``examples``) of a ModuleProblem,
    a model (with loss_fn, data) or a Problem with ``example_losses``;
    ``noise_covariance`` of them is Σ(W)."""
    ex = _Examples(_as_problem(problem, loss_fn, data))
    return ex.per_example_grads(W.detach(), ex.all if examples is None else examples)


class SME(torch.nn.Module):
    """The stochastic modified equation of SGD (lr η, batch B with replacement, torch's step)
    on a problem with per-example losses, on the step clock, as a torchsde model
    (state: P rows of W):

        dW = F(τ, W, ∇L) dτ + η(τ)·(D(W)/√B) dB

    F: ``flow``'s field (SGD: -η(τ)g; ``order=2``: the modified flow -η∇(L + c‖∇L‖²),
    c = ``ModifiedSGD.coefficient`` at h = 1); D(W): the centred per-example gradients of
    ``examples`` examples (drawn once) over √(m-1), so DDᵀ = Σ(W) (``noise="full"``, general
    noise, rank m), or √diag Σ(W) (``noise="diagonal"``). Flows with auxiliary state
    (momentum, adaptive) are refused: their noise enters through the auxiliaries."""

    sde_type = "ito"

    def __init__(self, problem, flow="sgd", batch_size: int = 1, order: int = 1,
                 noise: str = "full", examples: int | None = 256, seed: int = 0,
                 refresh: float = 1.0, *, loss_fn=None, data=None):
        super().__init__()
        from . import validation as check
        from .flows import make_flow as _make

        flow = _make(flow) if isinstance(flow, (str, type)) else flow
        if flow.variables() or flow.needs_hessian or flow.weight_decay or flow.maximize \
                or flow.max_grad_norm is not None:
            raise ValueError(f"the SME is derived for SGD without momentum, decay or clipping "
                             f"(its noise enters W directly); flow {flow.name!r} has state "
                             f"{[v.name for v in flow.variables()]} or options it does not cover")
        if order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order!r}")
        self.noise_type = check.choice("noise", noise, ("full", "diagonal"))
        self.noise_type = "general" if noise == "full" else "diagonal"
        self.flow, self.order = flow, order
        self.B = check.positive_int("batch_size", batch_size)
        self.problem = _as_problem(problem, loss_fn, data)
        self.ex = _Examples(self.problem)
        m = self.ex.n if examples is None else min(check.positive_int("examples", examples),
                                                    self.ex.n)
        if m < 2:
            raise ValueError("the noise covariance needs at least 2 examples")
        gen = torch.Generator().manual_seed(seed)
        self.idx = self.ex.all if m == self.ex.n else torch.randperm(self.ex.n,
                                                                     generator=gen)[:m]
        self.c = flow.lr * (1 / 4) if order == 2 else 0.0  # c = s/4 at h = 1, μ = 0
        self.refresh = check.positive("refresh", refresh)
        self._cache = None  # (τ measured, factor per path)
        self.silent = False  # True: no noise (the flow's ODE, integrated by the same scheme)

    def _objective(self, W):
        if not self.c:
            return self.ex.loss(W)
        L, g = torch.func.grad_and_value(self.ex.loss)(W)[::-1]
        return L + self.c * (g * g).sum()

    def f(self, t, y):
        eta = self.flow.eta(float(t))
        return -eta * torch.func.vmap(torch.func.grad(self._objective))(y)

    def _factor(self, W):
        G = self.ex.per_example_grads(W, self.idx)  # (m, n)
        D = (G - G.mean(0)) / math.sqrt(len(self.idx) - 1)
        if self.noise_type == "diagonal":
            return D.pow(2).sum(0).sqrt()
        return D.T  # (n, m)

    def g(self, t, y):
        """η(τ)·D(W)/√B; D re-measured at each path's state once per ``refresh`` steps of the
        step clock (refresh ≤ dt: at every call)."""
        tau = float(t)
        if self.silent:
            return torch.zeros(*y.shape, *((len(self.idx),) if self.noise_type == "general"
                                           else ()), dtype=y.dtype)
        cell = math.floor(tau / self.refresh + 1e-9)
        if self._cache is None or self._cache[0] != cell or self._cache[1].shape[0] != len(y):
            self._cache = (cell, torch.func.vmap(self._factor)(y))
        return (self.flow.eta(tau) / math.sqrt(self.B)) * self._cache[1]

    def loss(self, Ws: Tensor) -> Tensor:
        """L(W) for each row of Ws (full data)."""
        with torch.no_grad():
            return torch.func.vmap(self.ex.loss)(Ws)


def sme_loss(problem, flow="sgd", batch_size: int = 1, steps: int = 100, paths: int = 64,
             dt: float = 0.5, every: int = 10, order: int = 1, noise: str = "full",
             examples: int | None = 256, W0: Tensor | None = None, seed: int = 0,
             refresh: float = 1.0, *, loss_fn=None, data=None) -> dict:
    """The SME's loss statistics on the step clock τ = 0, every, 2·every, …, steps: the mean
    and standard error over ``paths`` torchsde paths (Euler–Maruyama, step ``dt``; the noise
    factor re-measured every ``refresh`` steps). ``paths=0`` is no noise: the flow's ODE."""
    import torchsde

    sme = SME(problem, flow, batch_size, order, noise, examples, seed, refresh,
              loss_fn=loss_fn, data=data)
    W0 = (sme.problem.x0() if W0 is None else W0).detach()
    sme.silent = paths == 0
    paths = max(paths, 1)
    ts = torch.arange(0, steps + 1, every, dtype=W0.dtype)
    if float(ts[-1]) != steps:
        ts = torch.cat([ts, torch.tensor([float(steps)], dtype=W0.dtype)])
    y0 = W0.expand(paths, -1).clone()
    width = len(sme.idx) if sme.noise_type == "general" else y0.shape[1]
    bm = torchsde.BrownianInterval(float(ts[0]), float(ts[-1]), size=(paths, width),
                                   dtype=y0.dtype, entropy=seed)  # seeded: reproducible paths
    with torch.no_grad():
        ys = torchsde.sdeint(sme, y0, ts, method="euler", dt=dt, bm=bm)
    L = torch.stack([sme.loss(y) for y in ys])  # (times, paths)
    se = L.std(1) / math.sqrt(paths) if paths > 1 else torch.zeros_like(L[:, 0])
    return {"times": ts, "mean": L.mean(1), "se": se, "losses": L}


def sgd_monte_carlo(problem, flow="sgd", batch_size: int = 1, steps: int = 100,
                    runs: int = 64, every: int = 10, W0: Tensor | None = None, seed: int = 0,
                    *, loss_fn=None, data=None) -> dict:
    """``runs`` independent real SGD runs (the engine's discrete step, torch's update; a fresh
    batch of ``batch_size`` examples drawn with replacement at every step): their loss mean,
    standard error and the runs at τ = 0, every, …, steps."""
    from . import validation as check
    from .flows import make_flow as _make

    flow = _make(flow) if isinstance(flow, (str, type)) else flow
    B = check.positive_int("batch_size", batch_size)
    ex = _Examples(_as_problem(problem, loss_fn, data))
    prob = _as_problem(problem, loss_fn, data)
    W0 = (prob.x0() if W0 is None else W0).detach()
    gen = torch.Generator().manual_seed(seed)
    grad = torch.func.vmap(torch.func.grad(ex.fn))

    def grad_fn(W):  # one fresh minibatch per run
        return grad(W, torch.randint(ex.n, (len(W), B), generator=gen))

    _, Ws = run_discrete(flow, grad_fn, W0.expand(runs, -1).clone(), steps, h=1.0,
                         every=every)
    with torch.no_grad():
        L = torch.stack([torch.func.vmap(ex.loss)(W) for W in Ws])
    ts = torch.tensor([min(k * every, steps) for k in range(len(Ws))], dtype=W0.dtype)
    return {"times": ts, "mean": L.mean(1), "se": L.std(1) / math.sqrt(runs), "losses": L}
