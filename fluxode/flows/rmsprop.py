"""RMSprop as a flow (torch.optim.RMSprop semantics).

    v̇ = (1-α)(g² - v)
    ḡ̇ = (1-α)(g - ḡ)                           (centered only)
    a = √(v - ḡ²) + ε    (centered)   or   √v + ε
    ḃ = g/a - (1-μ)·b,   Ẇ = -η(τ)·b          (momentum μ > 0)
    Ẇ = -η(τ)·g/a                              (μ = 0)

Capabilities (``fluxode.flows.capabilities``):

    betas-fixed limit   v → g², b → g/(a(1-μ)):  Ẇ = -η/(1-μ)·g/(|g| + ε)   (``SignFlow``)
    sqrt path at h      lr·√h, α → 1 - h(1-α), ε/√h, Σ → Σ/h          (Malladi et al. 2022)
    stability on ½λw²   with v frozen, RMSprop is heavy ball with momentum μ on the
                        curvature a = λ/(√v + ε):  lr* = (2 + 2μ)/a
    fused kernels       ``fluxode.kernels.rmsprop_step_`` (step; no fused field)
"""

from __future__ import annotations

import math

from .. import validation as check
from .base import Block, Flow
from .capabilities import SqrtPoint
from .modified import ModifiedRMSprop, SignFlow
from .rates import Linear, Term, Toward


class RMSprop(Flow):
    name = "rmsprop"
    summary = "RMSprop: leaky mean of squared gradients (torch.optim.RMSprop)"
    torch_twin = "RMSprop"
    torch_names = {"v": "square_avg", "gbar": "grad_avg", "b": "momentum_buffer"}
    default_lr = 1e-2

    def __init__(self, lr=None, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, maximize=False, schedule=None, max_grad_norm=None):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule,
                         max_grad_norm=max_grad_norm)
        self.alpha = check.unit_interval("alpha", alpha)
        self.eps = check.positive("eps", eps)
        self.momentum = check.unit_interval("momentum", momentum, closed_right=True)
        self.centered = check.flag("centered", centered)
        self.vectors = ("v",) + (("gbar",) if self.centered else ()) + (
            ("b",) if self.momentum else ())

    def singular_start(self):
        """v(0) = 0 (torch's start): Ẇ ≈ -η·sign(g)/√((1-α)τ) as τ → 0."""
        return "v(0) = 0, so Ẇ ≈ -η·sign(g)/√((1-α)τ) near τ = 0 and |Ẇ| = η|g|/ε at τ = 0"

    def admissible(self, S):
        """v ≥ 0, and v ≥ ḡ² when centered (Jensen: a mean of squares ≥ the square of the mean,
        both means with the same weights)."""
        return self._raise_to(S, {"v": S["gbar"].square() if self.centered else 0.0})

    def _denominator(self, S):
        v = S["v"]
        if self.centered:
            return v.addcmul(S["gbar"], S["gbar"], value=-1).sqrt_().add_(self.eps)
        return v.sqrt().add_(self.eps)

    def blocks(self):
        a = self.alpha

        def averages(tau, S, g):
            sq = Linear((Term(1 - a, g, g, "mul"),), decay=1 - a, keep=a)
            return (sq, Toward(1 - a, g)) if self.centered else (sq,)

        def buffer(tau, S, g):
            mu = self.momentum
            return (Linear((Term(1, g, self._denominator(S), "div"),), decay=1 - mu, keep=mu),)

        def position(tau, S, g):
            eta = self.eta(tau)
            if self.momentum:
                return (Linear((Term(-eta, S["b"]),)),)
            return (Linear((Term(-eta, g, self._denominator(S), "div"),)),)

        out = [Block(("v", "gbar") if self.centered else ("v",), averages)]
        if self.momentum:
            out.append(Block(("b",), buffer))
        return out + [Block(("W",), position)]

    def equations(self):
        eqs = [f"v̇  = (1-α)(g² - v)            α={self.alpha:g}"]
        if self.centered:
            eqs += ["ḡ̇  = (1-α)(g - ḡ)", f"a  = √(v - ḡ²) + ε          ε={self.eps:g}"]
        else:
            eqs += [f"a  = √v + ε                  ε={self.eps:g}"]
        if self.momentum:
            eqs += [f"ḃ  = g/a - (1-μ)·b           μ={self.momentum:g}", "Ẇ  = -η(τ)·b"]
        else:
            eqs += ["Ẇ  = -η(τ)·g/a"]
        return eqs

    # --- capabilities ------------------------------------------------------------------------
    def betas_fixed_limit(self):
        """Ẇ = -η/(1-μ)·g/(|g| + ε): v → g², the momentum buffer → g/(a(1-μ))."""
        self._require_constant_lr("betas-fixed limits")
        if self.centered:
            raise ValueError("betas-fixed limit of RMSprop is derived for centered=False")
        return SignFlow(lr=self.lr / (1 - self.momentum), eps=self.eps,
                        weight_decay=self.weight_decay, maximize=self.maximize)

    def modified(self, h, path="rates"):
        """The first-order modified flow at step h along ``rates`` (``ModifiedRMSprop``:
        Ẇ = -ηP[g + (h/2)ηHPg], the v-filter at rate -log(1-h(1-α))/h half a step ahead, and
        from torch's v = 0 a start shift for the 1/√τ transient)."""
        self._require_constant_lr("modified flows")
        if path != "rates":
            raise self._refuse(f"modified flow along {path!r} (derived along 'rates')")
        if self.momentum or self.centered:
            raise ValueError("the modified flow of RMSprop is derived for momentum=0, "
                             "centered=False")
        return ModifiedRMSprop(lr=self.lr, alpha=self.alpha, eps=self.eps,
                               weight_decay=self.weight_decay, h=h, maximize=self.maximize)

    def preconditioner(self, S):
        """P = 1/(√v + ε) (centered: 1/(√(v - ḡ²) + ε)), per entry: with v frozen the step is
        W ← W - η·P·g (μ = 0), so stability is decided by λ_max(P^{1/2}HP^{1/2}) against
        ``max_stable_sharpness`` (Cohen et al. 2022)."""
        return 1.0 / self._denominator(S)

    def max_stable_sharpness(self):
        """(2 + 2μ)/lr: the largest eigenvalue of the preconditioned Hessian P^{1/2}HP^{1/2}
        (``preconditioner``) stable for RMSprop with v frozen (heavy ball on λ(PH))."""
        return (2 + 2 * self.momentum) / self.lr

    def sqrt_point(self, h):
        """lr → √h·lr, α → 1 - h(1-α), ε → ε/√h, Σ → Σ/h."""
        h, r = self._path_step(h)
        return SqrtPoint(self.replace(lr=self.lr * r, alpha=1 - h * (1 - self.alpha),
                                      eps=self.eps / r), 1.0 / h)

    def frozen_states(self):
        """v (the preconditioner)."""
        self._require_linear_map()
        if self.centered:
            raise ValueError("stability analysis excludes amsgrad and centered variants")
        return ("v",)

    def stable_lr(self, lam, v=1.0):
        """(2 + 2μ)/a,  a = λ/(√v + ε)."""
        self.frozen_states()
        a = lam / (math.sqrt(v) + self.eps)
        return (2 + 2 * self.momentum) / a

    def fused_step_(self, tau, S, g, h=1.0, backend="auto"):
        """torch's step through ``fluxode.kernels.rmsprop_step_``."""
        from .. import kernels

        if h != 1.0:
            return False
        flat = kernels.flat_state(S, g, backend, self.clocks)
        if flat is None:
            return False
        F, g = flat
        kernels.rmsprop_step_(F["W"], g, F["v"], lr=self.eta(tau), alpha=self.alpha,
                              eps=self.eps, weight_decay=self.weight_decay,
                              momentum=self.momentum, centered=self.centered,
                              grad_avg=F.get("gbar"), momentum_buf=F.get("b"),
                              maximize=self.maximize, backend=backend)
        return True

    def fused_group_step_(self, taus, states, grads, h=1.0, backend="auto"):
        """torch's step on every tensor through ``fluxode.kernels.rmsprop_group_step_``: one
        launch per dtype combination (and per distinct lr under a schedule)."""
        from .. import kernels

        if h != 1.0 or not states:
            return False
        Ws = [S["W"] for S in states]
        L = {n: [S[n] for S in states] for n in self.vectors}
        parts = kernels.group_fits(Ws, grads, list(L.values()), backend)
        if not parts:
            return False
        lr_of = {t: self.eta(t) for t in set(taus)}  # usually one τ for the group
        for lr, idx in kernels.by_value([lr_of[t] for t in taus]):
            sub = lambda x: kernels.subset(x, idx)  # noqa: E731
            kernels.rmsprop_group_step_(sub(Ws), sub(grads), sub(L["v"]), lr=lr,
                                        alpha=self.alpha, eps=self.eps,
                                        weight_decay=self.weight_decay,
                                        momentum=self.momentum, centered=self.centered,
                                        grad_avgs=sub(L.get("gbar")),
                                        momentum_bufs=sub(L.get("b")), maximize=self.maximize,
                                        backend=backend, _parts=parts if idx is None else None)
        return True

    def hyperparameters(self):
        return {**super().hyperparameters(), "alpha": self.alpha, "eps": self.eps,
                "momentum": self.momentum, "centered": self.centered}

    @classmethod
    def option_grid(cls):
        return [dict(centered=c, momentum=m, weight_decay=wd, maximize=mx)
                for c in (False, True) for m in (0.0, 0.9) for wd in (0.0, 1e-2)
                for mx in (False, True) if not (mx and wd)]

    @classmethod
    def invalid_options(cls):
        return super().invalid_options() + [
            {"alpha": 1.0}, {"alpha": -0.1}, {"eps": -1e-8}, {"momentum": -0.5},
            {"centered": 1}]
