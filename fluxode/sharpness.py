"""Sharpness (top Hessian eigenvalue) along training runs, and the edge of stability.

Sharpness λ_max(∇²L(W)) is computed from Hessian-vector products (double backward) by
Lanczos with full reorthogonalization, warm-started from the previous top eigenvector, so a
few tens of products per measurement suffice along a run.

Edge of stability (Cohen et al. 2021): full-batch GD with step η on a network trained with
MSE shows *progressive sharpening* — λ_max rises — until it reaches 2/η, the largest
curvature GD is stable on (``fluxode.stability``); then it hovers at 2/η while the loss keeps
decreasing non-monotonically. At a smaller η the run converges before λ_max reaches 2/η.
``tanh_mlp`` is a CPU-fast setting that shows both: a 64-32-10 tanh MLP (2410 parameters) on
100 digits with one-hot MSE, its output layer initialized at 0.1× scale so that the initial
sharpness (≈ 2.3) is well below 2/η at η = 0.5 (= 4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import engine
from .flows import Flow, make_flow
from .stability import max_stable_sharpness


@dataclass
class Eigenpairs:
    """Top eigenpairs of a symmetric operator with a convergence report.

    ``values`` descending, ``vectors`` (n, k) orthonormal columns, ``residuals[i]`` =
    ‖A uᵢ - λᵢ uᵢ‖ (the Lanczos estimate β_m·|e_mᵀ sᵢ|, exact with full reorthogonalization;
    ``lanczos(check=True)`` recomputes it with k more products), ``converged`` when every
    residual is ≤ tol·max(1, |λ₁|), ``products``: operator applications spent."""

    values: list[float]
    vectors: Tensor
    residuals: list[float]
    converged: bool
    products: int
    tol: float

    @property
    def top(self) -> float:
        return self.values[0]

    def report(self) -> dict:
        return {"values": self.values, "residuals": self.residuals,
                "converged": self.converged, "products": self.products}


def lanczos(op: Callable[[Tensor], Tensor], v0: Tensor, k: int = 1, iters: int = 40,
            tol: float = 1e-6, min_iters: int = 4, check: bool = False,
            seed: int = 0) -> Eigenpairs:
    """The k largest eigenpairs of the symmetric operator ``op`` by Lanczos with full
    reorthogonalization: Rayleigh–Ritz on the Krylov space of v0, T = QᵀAQ. v0 is a vector,
    or an (n, b) block (e.g. previous eigenvectors): then *block* Lanczos from the block plus
    one random vector, so a newly risen eigenvalue is not missed, and an eigenvalue of
    multiplicity up to b is found whole — a single start vector's Krylov space holds one
    vector per eigenspace, so it finds one copy of a repeated eigenvalue and reports
    converged. Residuals ‖Auᵢ − λᵢuᵢ‖ = ‖R sᵢ‖ (R the last block's reorthogonalized
    remainder, sᵢ's last block). Stops when the k Ritz pairs' residuals are below
    tol·max(1, |λ₁|) (checked from ``min_iters`` products on) or when the basis would exceed
    ``iters`` vectors (products)."""
    if iters < 1 or k < 1:
        raise ValueError(f"iters and k must be in [1, inf), got {iters}, {k}")
    if v0.dim() == 2:
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(v0.shape[0], 1, generator=gen, dtype=v0.dtype).to(v0.device)
        q = torch.linalg.qr(torch.cat([v0, noise], 1))[0].T
    else:
        q = (v0 / v0.norm())[None]
    Qbuf = torch.empty(iters, v0.shape[0], dtype=v0.dtype, device=v0.device)
    T = np.zeros((0, 0))
    products, m = 0, 0
    while True:
        b = len(q)
        Qbuf[m:m + b] = q
        w = torch.stack([op(x) for x in q])
        products += b
        Qm = Qbuf[:m + b]
        C = (Qm @ w.T).detach().cpu().numpy()                   # Qᵀ A q, (m + b, b)
        T = np.block([[T, C[:m]], [C[:m].T, 0.5 * (C[m:] + C[m:].T)]])
        m += b
        for _ in range(2):
            w = w - (w @ Qm.T) @ Qm
        vals, vecs = np.linalg.eigh(T)
        kk = min(k, m)
        top = vecs[:, ::-1][:, :kk]
        res = torch.from_numpy(top[m - b:].copy()).to(w).T @ w  # R sᵢ, (kk, n)
        res = [float(r) for r in res.norm(dim=1)]
        scale = max(1.0, abs(vals[-1]))
        Rq, Rr = torch.linalg.qr(w.T)
        keep = Rr.diagonal().abs() > 1e-12 * scale
        invariant = not bool(keep.any())
        done = kk == k and m >= min_iters and max(res) <= tol * scale
        if invariant or done or m + int(keep.sum()) > iters:
            break
        q = Rq.T[keep]
        for _ in range(2):
            q = q - (q @ Qm.T) @ Qm
        q = torch.linalg.qr(q.T)[0].T
    S = torch.from_numpy(top.copy()).to(v0.dtype).to(v0.device)
    U = Qbuf[:m].T @ S
    U = U / U.norm(dim=0, keepdim=True)
    values = [float(x) for x in vals[::-1][:kk]]
    if invariant:
        res = [0.0] * kk
    if check:
        res = [float((op(U[:, i]) - values[i] * U[:, i]).norm()) for i in range(kk)]
        products += kk
    scale = max(1.0, abs(values[0]))
    return Eigenpairs(values, U, [float(r) for r in res],
                      kk == k and max(res) <= tol * scale, products, tol)


def lanczos_top(hvp: Callable[[Tensor], Tensor], v0: Tensor, iters: int = 20,
                tol: float = 1e-10) -> tuple[float, Tensor]:
    """Largest Ritz value and vector of the symmetric operator ``hvp`` after at most ``iters``
    Lanczos steps from v0 (full reorthogonalization; ``lanczos`` for more pairs and a
    convergence report)."""
    e = lanczos(hvp, v0, k=1, iters=iters, tol=tol, min_iters=iters)
    return e.values[0], e.vectors[:, 0]


def hvp_operator(loss: Callable[[Tensor], Tensor], W: Tensor,
                 precond: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """x ↦ ∇²L(W)·x by double backward, or P^{1/2}·∇²L(W)·P^{1/2}·x for a diagonal
    preconditioner P (a tensor shaped like W): the operator whose top eigenvalue is the
    (preconditioned) sharpness."""
    W = W.detach().requires_grad_(True)
    with torch.enable_grad():
        g = torch.autograd.grad(loss(W), W, create_graph=True)[0]

    def hvp(v):
        return torch.autograd.grad(g, W, v.reshape(W.shape), retain_graph=True)[0] \
            .detach().reshape(v.shape)

    if precond is None:
        return hvp
    r = precond.detach().reshape(-1).sqrt()
    return lambda v: r * hvp(r * v)


def top_eigenpairs(loss: Callable[[Tensor], Tensor], W: Tensor, k: int = 1,
                   v0: Tensor | None = None, precond: Tensor | None = None,
                   iters: int = 40, tol: float = 1e-6, seed: int = 0) -> Eigenpairs:
    """The k largest eigenpairs of ∇²L(W) (or of P^{1/2}∇²L(W)P^{1/2}) with a convergence
    report; ``v0``: a warm start (a vector or previous eigenvectors as columns)."""
    if v0 is None:
        v0 = torch.randn(W.numel(), generator=torch.Generator().manual_seed(seed),
                         dtype=W.dtype).to(W.device)
    return lanczos(hvp_operator(loss, W, precond), v0, k=k, iters=iters, tol=tol, seed=seed)


def sharpness(loss: Callable[[Tensor], Tensor], W: Tensor, v0: Tensor | None = None,
              iters: int = 20, seed: int = 0, precond: Tensor | None = None,
              report: bool = False, tol: float = 1e-6):
    """(λ_max(∇²L(W)), its eigenvector) from Hessian-vector products of ``loss``; with a
    diagonal preconditioner P, λ_max(P^{1/2}∇²L(W)P^{1/2}) (= λ_max(PH), the preconditioned
    sharpness) and its eigenvector. ``report=True`` returns the ``Eigenpairs`` instead, with
    the residual ‖Hv - λv‖ and the ``converged`` flag (Lanczos run until the residual is
    below tol·max(1, |λ|) or ``iters`` products: ``top_eigenpairs``)."""
    if report:
        start = None if v0 is None else v0.reshape(-1)
        return top_eigenpairs(loss, W, k=1, v0=start, precond=precond, iters=iters, tol=tol,
                              seed=seed)
    if v0 is None:
        v0 = torch.randn(W.shape, generator=torch.Generator().manual_seed(seed), dtype=W.dtype)
    return lanczos_top(hvp_operator(loss, W, precond), v0.reshape(-1), iters)


# --- a small network with progressive sharpening -----------------------------------------------
@dataclass
class TanhMLP:
    """L(W) = ½·mean‖f_W(x) - y‖², f_W(x) = B·tanh(Ax + a) + b (one-hot y), W flat."""

    x: Tensor
    y: Tensor
    hidden: int
    W0: Tensor
    name: str = "tanh-mlp"

    @property
    def sizes(self):
        d, c, h = self.x.shape[1], self.y.shape[1], self.hidden
        return [h * d, h, c * h, c]

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    def loss(self, W: Tensor) -> Tensor:
        d, c, h = self.x.shape[1], self.y.shape[1], self.hidden
        A, a, B, b = W.split(self.sizes)
        out = torch.tanh(self.x @ A.view(h, d).T + a) @ B.view(c, h).T + b
        return 0.5 * ((out - self.y) ** 2).sum(1).mean()

    def grad(self, W: Tensor, tau: float = 0.0) -> Tensor:
        W = W.detach().requires_grad_(True)
        with torch.enable_grad():
            return torch.autograd.grad(self.loss(W), W)[0]

    def hessian(self, W: Tensor) -> Tensor:
        return torch.autograd.functional.hessian(self.loss, W.detach())

    def x0(self) -> Tensor:
        return self.W0.clone()


def tanh_mlp(n: int = 100, hidden: int = 32, out_scale: float = 0.1, seed: int = 0) -> TanhMLP:
    """The digits tanh MLP above (float64); weights N(0, 1/fan_in), output layer × out_scale."""
    from .datasets import load

    ds = load("digits", dtype=torch.float64)
    if not 1 <= n <= len(ds.y_train):
        raise ValueError(f"n must be in [1, {len(ds.y_train)}], got {n}")
    x = ds.x_train[:n]
    y = torch.nn.functional.one_hot(ds.y_train[:n], ds.n_classes).to(torch.float64)
    d, c = ds.n_features, ds.n_classes
    g = torch.Generator().manual_seed(seed)
    z = torch.zeros
    W0 = torch.cat([torch.randn(hidden * d, generator=g, dtype=torch.float64) / d ** 0.5,
                    z(hidden, dtype=torch.float64),
                    out_scale * torch.randn(c * hidden, generator=g, dtype=torch.float64)
                    / hidden ** 0.5, z(c, dtype=torch.float64)])
    return TanhMLP(x, y, hidden, W0)


def track(flow: Flow | str, problem, steps: int, every: int = 25, iters: int = 20,
          **hyperparameters) -> dict:
    """Run the discrete optimizer (h = 1, ``fluxode.engine.run`` from the consistent start,
    clipping included) for ``steps`` steps, recording the loss every step and the sharpness
    every ``every`` steps; ``threshold`` is the flow's largest stable sharpness at its lr
    (None when the flow declares none).

    Adaptive flows state a preconditioner (``Flow.preconditioner(S)``, e.g. RMSprop's
    1/(√v + ε)): their sharpness is then the preconditioned one, λ_max(P^{1/2}HP^{1/2})
    (Cohen et al. 2022), measured with P at the state after each recorded step and compared
    with the flow's own threshold (Adam: (2 + 2β₁)/((1-β₁)η)); ``preconditioned`` says
    which was measured. Before the first step an adaptive flow's preconditioner is not yet
    defined (v = 0, Adam's clocks at 0): its records start after step 1."""
    flow = make_flow(flow, **hyperparameters) if isinstance(flow, (str, type)) else flow
    if steps < 1 or every < 1:
        raise ValueError(f"steps and every must be in [1, inf), got {steps}, {every}")
    try:
        threshold = max_stable_sharpness(flow)
    except ValueError:
        threshold = None
    S, g, H = engine.start(flow, problem, problem.x0())
    losses, at, sharp, v = [], [], [], None
    preconditioned = False

    def record(S, tau):
        nonlocal v, preconditioned
        k = len(losses)
        if k % every == 0 or k == steps:
            P = flow.preconditioner(S)
            if k > 0 or type(flow).preconditioner is Flow.preconditioner:
                preconditioned = preconditioned or P is not None
                s, v = sharpness(problem.loss, S["W"], v, iters, precond=P)
                at.append(k)
                sharp.append(s)
        losses.append(float(problem.loss(S["W"])))
        if not np.isfinite(losses[-1]):
            raise ValueError(f"the run diverged at step {k}: lower lr")

    engine.run(flow, problem, S, steps, first=(g, H), record=record)
    return {"flow": flow.name, "lr": flow.lr, "threshold": threshold,
            "preconditioned": preconditioned,
            "loss": losses, "sharpness_steps": at, "sharpness": sharp}


def last_quarter_ratio(record: dict) -> tuple[float, float]:
    """(min, max) of sharpness / threshold over the last quarter of the run."""
    steps = np.array(record["sharpness_steps"])
    r = np.array(record["sharpness"]) / record["threshold"]
    q = r[steps >= 0.75 * steps[-1]]
    return float(q.min()), float(q.max())
