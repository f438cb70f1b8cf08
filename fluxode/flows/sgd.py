"""SGD, heavy-ball momentum and Nesterov momentum as flows (torch.optim.SGD semantics).

    plain:     Ẇ = -η(τ)·g
    momentum:  ḃ = (1-d)·g - (1-μ)·b,   Ẇ = -η(τ)·b              (heavy ball)
    nesterov:  ḃ = g - (1-μ)·b,         Ẇ = -η(τ)·(g + μ·b)

torch sets ``buf = g`` on the first step. That is the same equation started from the
consistent initial condition b(0) = d·g₀/μ, since then μ·b(0) + (1-d)·g₀ = g₀; the discrete
first step writes that exact value (``rates.Exact``) rather than rounding its way to it.

Capabilities (``fluxode.flows.capabilities``):

    betas-fixed limit   b is slaved to (1-d)g/(1-μ):  Ẇ = -lr(1-d)/(1-μ)·g   (gradient flow)
    modified flow       heavy ball / GD at step h: ``ModifiedSGD`` (``flows.modified``)
    stability on ½λw²   z_{k+1} = (1+μ-lr·λ')z_k - μz_{k-1} is stable iff lr < lr*:
                          GD           lr* = 2/λ
                          heavy ball   lr* = (2 + 2μ)/((1-d)·λ)          (λ' = (1-d)λ)
                          Nesterov     lr* = (2 + 2μ)/((1 + 2μ)·λ)
                        and at a given lr the largest stable sharpness is λ* = lr*(λ=1)/lr.
"""

from __future__ import annotations

from .. import validation as check
from .base import Block, Flow
from .modified import ModifiedSGD
from .rates import Exact, Linear, Term


class SGD(Flow):
    name = "sgd"
    summary = "gradient descent, heavy-ball and Nesterov momentum (torch.optim.SGD)"
    torch_twin = "SGD"
    torch_names = {"b": "momentum_buffer"}
    complex_as_real = False  # torch's SGD steps complex tensors as they are (linear update)

    @property
    def sparse_gradients(self) -> bool:
        """Plain SGD steps sparse gradients as torch does. With momentum torch keeps a sparse,
        uncoalesced buffer whose duplicate entries update W one by one: a different rounding
        than a dense buffer, so fluxode refuses that case rather than differ silently."""
        return self.momentum == 0

    def __init__(self, lr=None, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                 *, maximize=False, schedule=None, max_grad_norm=None):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule,
                         max_grad_norm=max_grad_norm)
        # momentum > 1 makes the buffer grow without bound: a flow that does not dissipate.
        self.momentum = check.unit_interval("momentum", momentum, closed_right=True)
        self.dampening = check.unit_interval("dampening", dampening, closed_right=True)
        self.nesterov = check.flag("nesterov", nesterov)
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError("nesterov=True requires momentum in (0, 1] and dampening = 0, "
                             f"got momentum={momentum!r}, dampening={dampening!r}")
        self.vectors = ("b",) if self.momentum else ()

    def init(self, W, g0=None):
        S = super().init(W, g0)
        if self.momentum and self.dampening and g0 is not None:
            S["b"] = g0 * (self.dampening / self.momentum)
        return S

    def blocks(self):
        mu, d = self.momentum, self.dampening

        def buffer(tau, S, g):
            rate = Linear((Term(1 - d, g),), decay=1 - mu, keep=mu)
            return (Exact(rate, g) if tau == 0 else rate,)  # torch: buf = g on the first step

        def position(tau, S, g):
            eta = self.eta(tau)
            if not mu:
                return (Linear((Term(-eta, g),)),)
            u = g.add(S["b"], alpha=mu) if self.nesterov else S["b"]
            return (Linear((Term(-eta, u),)),)

        return ([Block(("b",), buffer)] if mu else []) + [Block(("W",), position)]

    def equations(self):
        mu, d = self.momentum, self.dampening
        if not mu:
            return ["Ẇ  = -η(τ)·g"]
        if self.nesterov:
            return [f"ḃ  = g - (1-μ)·b            μ={mu:g}, b(0)=0",
                    "Ẇ  = -η(τ)·(g + μ·b)"]
        return [f"ḃ  = (1-d)·g - (1-μ)·b        μ={mu:g}, d={d:g}, b(0)=d·g₀/μ",
                "Ẇ  = -η(τ)·b"]

    # --- capabilities ------------------------------------------------------------------------
    def betas_fixed_limit(self):
        """Ẇ = -lr(1-d)/(1-μ)·g: the buffer is slaved to (1-d)g/(1-μ) as h → 0."""
        self._require_constant_lr("betas-fixed limits")
        mu, d = self.momentum, self.dampening
        if mu == 1:
            raise ValueError("momentum must be in [0, 1) for a betas-fixed limit, got 1")
        scale = 1.0 if not mu else (1 - d) / (1 - mu)
        return SGD(lr=self.lr * scale, weight_decay=self.weight_decay, maximize=self.maximize)

    def sqrt_point(self, h):
        raise ValueError(f"the sqrt path is defined for adaptive flows; for {self.name!r} the "
                         f"SDE path is the linear scaling rule (fluxode.sde)")

    def modified(self, h, path="rates"):
        """Heavy ball / GD at step h: dW/dt = -(1/(1-μ))∇[L + s(1+μ)/(4(1-μ)²)‖∇L‖²],
        s = h·lr (``ModifiedSGD``); heavy ball along betas-fixed only."""
        from .. import schedules

        if self.nesterov or self.dampening or self.weight_decay or self.maximize \
                or self.max_grad_norm is not None \
                or not isinstance(self.schedule, schedules.Constant):
            raise ValueError("modified flows are derived for sgd (plain or heavy ball) with "
                             "dampening=0, nesterov=False, no decay, clipping or schedule")
        if self.momentum and path != "betas-fixed":
            raise ValueError("the heavy-ball modified flow is derived along path='betas-fixed' "
                             "(momentum fixed, lr → h·lr)")
        if self.momentum == 1:
            raise ValueError("momentum must be in [0, 1) for a modified flow, got 1")
        return ModifiedSGD(lr=self.lr, momentum=self.momentum, h=h)

    def frozen_states(self):
        """Nothing: the map (W, b) → (W', b') is already linear on ½λw²."""
        self._require_linear_map()
        return ()

    def stable_lr(self, lam, v=1.0):
        """2/λ (GD), (2+2μ)/((1-d)λ) (heavy ball), (2+2μ)/((1+2μ)λ) (Nesterov)."""
        self.frozen_states()
        return self._stable_lr(lam)

    def _stable_lr(self, lam):
        mu, d = self.momentum, self.dampening
        if self.nesterov:
            return (2 + 2 * mu) / ((1 + 2 * mu) * lam)
        return (2 + 2 * mu) / ((1 - d) * lam) if mu else 2 / lam

    def max_stable_sharpness(self):
        """2/lr (GD), (2+2μ)/((1-d)lr) (heavy ball), (2+2μ)/((1+2μ)lr) (Nesterov)."""
        return self._stable_lr(1.0) / self.lr

    def hyperparameters(self):
        return {**super().hyperparameters(), "momentum": self.momentum,
                "dampening": self.dampening, "nesterov": self.nesterov}

    @classmethod
    def option_grid(cls):
        return [dict(momentum=m, dampening=d, nesterov=n, weight_decay=wd, maximize=mx)
                for m, d, n in [(0.0, 0.0, False), (0.9, 0.0, False), (0.9, 0.1, False),
                                (0.99, 0.5, False), (0.3, 0.7, False), (0.9, 0.0, True)]
                for wd in (0.0, 1e-2) for mx in (False, True)]

    @classmethod
    def invalid_options(cls):
        return super().invalid_options() + [
            {"momentum": -0.1}, {"momentum": 1.5}, {"dampening": -1.0},
            {"nesterov": True}, {"nesterov": True, "momentum": 0.9, "dampening": 0.1}]
