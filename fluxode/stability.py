"""Linear stability of the discrete optimizers on a quadratic L = ½λw².

On a quadratic the discrete map (the partitioned Euler step at h = 1, i.e. torch.optim) is
linear in the dynamic state z = (W, momentum buffers) once the states a flow names in
``Flow.frozen_states()`` are held fixed (the preconditioner v of Adam/RMSprop, with the
bias-correction clocks at 1). Its one-step matrix M is built by applying
the engine's step (``fluxode.engine.step_``) to the basis states, and the iteration diverges exactly
when the spectral radius ρ(M) > 1. The largest stable lr is found by bisection on
ρ(M(lr)) ≤ 1 and compared with the flow's closed form ``Flow.stable_lr(λ, v)``, e.g.

    GD                   lr < 2/λ
    heavy ball μ, d      lr < (2 + 2μ)/((1-d)·λ)
    Nesterov μ           lr < (2 + 2μ)/((1 + 2μ)·λ)
    RMSprop, momentum μ  lr < (2 + 2μ)/a                   a = λ/(√v + ε), v frozen
    Adam β₁              lr < (2 + 2β₁)/((1-β₁)·a)         a = λ/(√v̂ + ε), v̂ frozen, late time

(derivations in the flows' docstrings). This module is generic: it asks the flow.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import engine
from .flows import Flow, make_flow
from .flows.base import Block, Envelope
from .flows.rates import Linear

LATE = 1e9  # step-clock time at which the bias-correction clocks are 1 to double precision


class Frozen(Flow):
    """``inner`` with the states ``names`` held constant (their rates replaced by ẋ = 0)."""

    def __init__(self, inner: Flow, names: tuple[str, ...]):
        self.inner, self.frozen = inner, tuple(names)
        self.name = inner.name
        self.vectors, self.clocks = inner.vectors, inner.clocks
        self.needs_hessian, self.max_grad_norm = inner.needs_hessian, inner.max_grad_norm

    def init(self, W, g0=None):
        return self.inner.init(W, g0)

    def effective_gradient(self, W, g, H=None):
        return self.inner.effective_gradient(W, g, H)

    def blocks(self):
        still = Linear(())
        out = []
        for b in self.inner.blocks():
            if isinstance(b, Envelope) or not set(b.names) & set(self.frozen):
                out.append(b)
                continue
            out.append(Block(b.names, lambda tau, S, g, b=b: tuple(
                still if n in self.frozen else r
                for n, r in zip(b.names, b.field(tau, S, g)))))
        return out


def _checked(flow: Flow) -> tuple[Flow, tuple[str, ...]]:
    """(the flow with its frozen states held constant, those states); refuses flows and
    variants without a linear stability analysis (``Flow.frozen_states``)."""
    frozen = tuple(flow.frozen_states())
    return (Frozen(flow, frozen) if frozen else flow), frozen


def _flow(name: str | Flow, lr: float | None = None, **hyperparameters) -> Flow:
    """A registered flow by name, or a ready-made flow (with ``lr`` replaced when given)."""
    if isinstance(name, Flow):
        flow = make_flow(name, **hyperparameters)
        return flow if lr is None else flow.replace(lr=lr)
    return make_flow(name, **hyperparameters) if lr is None else \
        make_flow(name, lr=lr, **hyperparameters)


def one_step_matrix(flow: Flow, lam: float, v: float = 1.0) -> np.ndarray:
    """M with z_{k+1} = M z_k on L = ½λw², z = (W, dynamic auxiliaries); ``v`` is the value
    of the frozen states (Adam/RMSprop's second moment; clocks at 1)."""
    flow, frozen = _checked(flow)
    lam = float(lam)
    dynamic = ["W"] + [n for n in flow.vectors if n not in frozen]
    cols = []
    for j in range(len(dynamic)):
        S = flow.init(torch.zeros(1, dtype=torch.float64))
        for name in frozen:
            S[name].fill_(v)
        for name in flow.clocks:
            S[name].fill_(1.0)
        S[dynamic[j]].fill_(1.0)
        engine.step_(flow, S, lam * S["W"].clone(), LATE)
        cols.append([float(S[name]) for name in dynamic])
    return np.array(cols).T


def spectral_radius(flow: Flow, lam: float, v: float = 1.0) -> float:
    return float(np.abs(np.linalg.eigvals(one_step_matrix(flow, lam, v))).max())


def max_stable_lr(name: str | Flow, lam: float, v: float = 1.0, rtol: float = 1e-10,
                  **hyperparameters) -> float:
    """Largest lr with ρ(M(lr)) ≤ 1, by bisection (the stable set is an interval (0, lr*))."""
    lam = _positive("lam", lam)
    _positive("v", v)

    def stable(lr):
        return spectral_radius(_flow(name, lr, **hyperparameters), lam, v) <= 1 + 1e-12

    lo, hi = 0.0, 1.0 / lam
    while stable(hi):
        lo, hi = hi, 2 * hi
        if hi > 1e12 / lam:
            raise ValueError("no divergence found: the map is stable for every lr")
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if stable(mid) else (lo, mid)
    return lo


def formula_lr(name: str | Flow, lam: float, v: float = 1.0, **hp) -> float:
    """The closed-form largest stable lr, as the flow states it (``Flow.stable_lr``)."""
    lam = _positive("lam", lam)
    flow = _flow(name, **hp)
    _checked(flow)
    return flow.stable_lr(lam, v)


def max_stable_sharpness(flow: Flow) -> float:
    """The largest curvature λ the flow's discrete map tolerates at its lr, as the flow states
    it (``Flow.max_stable_sharpness``; SGD: 2/lr for GD, (2+2μ)/lr for heavy ball,
    (2+2μ)/((1+2μ)lr) for Nesterov: the edge of stability)."""
    return flow.max_stable_sharpness()


def diverges(name: str | Flow, lam: float, lr: float, steps: int = 3000, v: float = 1.0,
             **hp) -> bool:
    """Iterate the real discrete map from w = 1 on L = ½λw² (frozen states at v) and report
    whether |w| grew past its start (a direct check of the bisection's verdict)."""
    flow, frozen = _checked(_flow(name, lr, **hp))
    S = flow.init(torch.ones(1, dtype=torch.float64))

    def freeze(S, tau):
        for n in frozen:
            S[n].fill_(v)

    _, finite = engine.run(flow, engine.Oracle(lambda W, tau: lam * W.clone()), S, steps,
                           tau0=LATE, before_step=freeze,
                           record=lambda S, tau: bool(torch.isfinite(S["W"]).all()))
    return not all(finite) or bool(S["W"].abs().item() > 1.0)


def table(lams=(1.0, 10.0, 100.0), momenta=(0.0, 0.5, 0.9), v: float = 1e-2,
          eps: float = 1e-8) -> list[dict]:
    """Numerical vs closed-form thresholds for GD, heavy ball, Nesterov, RMSprop, Adam."""
    rows = []
    for lam in lams:
        for mu in momenta:
            cases = [("sgd", dict(momentum=mu), "heavy ball" if mu else "GD")]
            if mu:
                cases.append(("sgd", dict(momentum=mu, nesterov=True), "Nesterov"))
                cases.append(("adam", dict(betas=(mu, 0.999), eps=eps), "Adam (frozen v)"))
            cases.append(("rmsprop", dict(momentum=mu, eps=eps), "RMSprop (frozen v)"))
            for name, hp, label in cases:
                num = max_stable_lr(name, lam, v=v, **hp)
                ref = formula_lr(name, lam, v=v, **hp)
                rows.append({"optimizer": label, "flow": name, "lam": lam, "momentum": mu,
                             "v": v if name != "sgd" else None, "numerical": num,
                             "formula": ref, "rel_diff": abs(num - ref) / ref})
    return rows


def _positive(name, x) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
        raise ValueError(f"{name} must be in (0, inf), got {x!r}")
    return float(x)
