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


def lanczos_top(hvp: Callable[[Tensor], Tensor], v0: Tensor, iters: int = 20,
                tol: float = 1e-10) -> tuple[float, Tensor]:
    """Largest Ritz value and vector of the symmetric operator ``hvp`` after ``iters``
    Lanczos steps from v0 (full reorthogonalization)."""
    if iters < 1:
        raise ValueError(f"iters must be in [1, inf), got {iters}")
    q = v0 / v0.norm()
    Q, alphas, betas = [], [], []
    for j in range(iters):
        Q.append(q)
        w = hvp(q)
        alphas.append(float(w @ q))
        Qm = torch.stack(Q)
        for _ in range(2):
            w = w - Qm.T @ (Qm @ w)
        b = float(w.norm())
        if b < tol * max(1.0, abs(alphas[-1])) or j == iters - 1:
            break
        betas.append(b)
        q = w / b
    k = len(alphas)
    T = np.diag(alphas) + np.diag(betas[:k - 1], 1) + np.diag(betas[:k - 1], -1)
    vals, vecs = np.linalg.eigh(T)
    v = torch.stack(Q).T @ torch.from_numpy(vecs[:, -1]).to(v0.dtype)
    return float(vals[-1]), v / v.norm()


def sharpness(loss: Callable[[Tensor], Tensor], W: Tensor, v0: Tensor | None = None,
              iters: int = 20, seed: int = 0) -> tuple[float, Tensor]:
    """(λ_max(∇²L(W)), its eigenvector) from Hessian-vector products of ``loss``."""
    W = W.detach().requires_grad_(True)
    with torch.enable_grad():
        g = torch.autograd.grad(loss(W), W, create_graph=True)[0]

    def hvp(v):
        return torch.autograd.grad(g, W, v, retain_graph=True)[0].detach()

    if v0 is None:
        v0 = torch.randn(W.shape, generator=torch.Generator().manual_seed(seed), dtype=W.dtype)
    return lanczos_top(hvp, v0, iters)


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
    (None when the flow declares none)."""
    flow = make_flow(flow, **hyperparameters) if isinstance(flow, (str, type)) else flow
    if steps < 1 or every < 1:
        raise ValueError(f"steps and every must be in [1, inf), got {steps}, {every}")
    try:
        threshold = max_stable_sharpness(flow)
    except ValueError:
        threshold = None
    S, g, H = engine.start(flow, problem, problem.x0())
    losses, at, sharp, v = [], [], [], None

    def record(S, tau):
        nonlocal v
        k = len(losses)
        if k % every == 0 or k == steps:
            s, v = sharpness(problem.loss, S["W"], v, iters)
            at.append(k)
            sharp.append(s)
        losses.append(float(problem.loss(S["W"])))
        if not np.isfinite(losses[-1]):
            raise ValueError(f"the run diverged at step {k}: lower lr")

    engine.run(flow, problem, S, steps, first=(g, H), record=record)
    return {"flow": flow.name, "lr": flow.lr, "threshold": threshold,
            "loss": losses, "sharpness_steps": at, "sharpness": sharp}


def last_quarter_ratio(record: dict) -> tuple[float, float]:
    """(min, max) of sharpness / threshold over the last quarter of the run."""
    steps = np.array(record["sharpness_steps"])
    r = np.array(record["sharpness"]) / record["threshold"]
    q = r[steps >= 0.75 * steps[-1]]
    return float(q.min()), float(q.max())
