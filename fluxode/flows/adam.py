"""Adam and AdamW as flows (torch.optim.Adam / AdamW semantics), bias correction as a flow.

    ṁ  = (1-β₁)(g - m)              v̇  = (1-β₂)(g² - v)
    ċ₁ = (1-β₁)(1 - c₁)             ċ₂ = (1-β₂)(1 - c₂)          c₁(0) = c₂(0) = 0
    v̂  = max_{s≤τ} v(s)  (amsgrad)   or  v
    Ẇ  = -η(τ)·[ (m/c₁) / (√(v̂/c₂) + ε) + λ·W ]                  (λ: AdamW only)

One Euler step of size 1 of the clock gives c₁ = 1 - β₁ᵏ, torch's bias correction. At τ = 0
the quotients m/c₁ and v/c₂ are 0/0; their limits are g and g².

Capabilities (``fluxode.flows.capabilities``):

    betas-fixed limit   m → g, v → g², c → 1:  Ẇ = -η·[g/(|g| + ε) + λ·W]   (``SignFlow``)
    sqrt path at h      lr·√h, β → 1 - h(1-β), ε/√h, Σ → Σ/h          (Malladi et al. 2022)
    stability on ½λw²   with P = 1/(√v̂ + ε) frozen and the clocks at 1, Adam is
                        m ← β₁m + (1-β₁)λw, w ← w - lr·P·m: heavy ball with momentum β₁ on
                        the curvature (1-β₁)·a, a = λ/(√v + ε), so
                          lr* = (2 + 2β₁)/((1-β₁)·a)
                        (Cohen et al. 2022's adaptive edge of stability: 38/lr for β₁ = 0.9)
    fused kernels       ``fluxode.kernels.adam_step_`` (step), ``adam_field`` (field)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import validation as check
from .base import Block, Envelope, Flow
from .capabilities import SqrtPoint
from .modified import ModifiedAdam, SignFlow
from .rates import Clock, Linear, Term, Toward


def moment_rates(betas, tau, g, stepped: dict | None = None):
    """ṁ = (1-β₁)(g - m), v̇ = (1-β₂)(g² - v) and their clocks, in torch's operations
    (``m.lerp_(g, 1-β₁)``, ``v.mul_(β₂).addcmul_(g, g, value=1-β₂)``, ``1 - βᵏ``).
    ``stepped``: a dict that receives the clocks' new values {"c1": …, "c2": …} as Python
    numbers when a discrete step advances them (``rates.Clock.report``)."""
    b1, b2 = betas
    report = (lambda name: None) if stepped is None else \
        (lambda name: functools.partial(stepped.__setitem__, name))
    return (Toward(1 - b1, g), Linear((Term(1 - b2, g, g, "mul"),), decay=1 - b2, keep=b2),
            Clock(b1, tau, report("c1")), Clock(b2, tau, report("c2")))


def moment_floor(betas, m: Tensor, c1) -> Tensor | None:
    """The bound v ≥ (1-β₂)/(1-β₁)·m²/c₁ of the exact flow ṁ = (1-β₁)(g-m), v̇ = (1-β₂)(g²-v),
    ċ₁ = (1-β₁)(1-c₁) from m = v = c₁ = 0 (β₁ ≤ β₂, c₁ > 0; 0 at c₁ = 0; None for β₁ > β₂).

    With wᵢ(s) = (1-βᵢ)e^{-(1-βᵢ)(τ-s)}: m = ∫w₁g, v = ∫w₂g², c₁ = ∫w₁, and Cauchy–Schwarz
    with w₁/w₂ ≤ (1-β₁)/(1-β₂) gives m² ≤ v·∫w₁²/w₂ ≤ v·c₁·(1-β₁)/(1-β₂). A tensor c₁
    is not read back to the host: the factor is chosen on the device."""
    b1, b2 = betas
    if b1 > b2:
        return None
    if isinstance(c1, Tensor):
        floor = m.square().mul_((1 - b2) / ((1 - b1) * c1.double()))
        return torch.where(c1 > 0, floor, 0.0)  # 0 at c₁ = 0 (not inf·m², NaN·0)
    c1 = float(c1)
    if c1 <= 0:
        return None
    return m.square().mul_((1 - b2) / ((1 - b1) * c1))


def adam_sqrt_point(flow: Flow, kappa: float, **per_step: float) -> SqrtPoint:
    """Adam's square-root point for an Adam-like flow (betas, eps, decoupled_decay): lr·√κ,
    1-βᵢ → κ(1-βᵢ), ε/√κ, λ·√κ when decoupled, Σ → Σ/κ; ``per_step`` hyperparameters (rates
    per step, like 1-β) are multiplied by κ."""
    kappa, r = flow._path_step(kappa)
    b1, b2 = flow.betas
    wd = flow.weight_decay * r if flow.decoupled_decay else flow.weight_decay
    return SqrtPoint(flow.replace(lr=flow.lr * r, betas=(1 - kappa * (1 - b1),
                                                          1 - kappa * (1 - b2)),
                                  eps=flow.eps / r, weight_decay=wd,
                                  **{k: v * kappa for k, v in per_step.items()}), 1.0 / kappa)



class Adam(Flow):
    name = "adam"
    summary = "Adam with bias correction as a flow, coupled L2 decay (torch.optim.Adam)"
    torch_twin = "Adam"
    clocks = ("c1", "c2")
    decoupled_decay = False

    torch_names = {"m": "exp_avg", "v": "exp_avg_sq", "vmax": "max_exp_avg_sq"}

    def __init__(self, lr=None, betas=(0.9, 0.999), eps=1e-8, weight_decay=None, amsgrad=False,
                 *, maximize=False, schedule=None, max_grad_norm=None,
                 decoupled_weight_decay=None):
        if weight_decay is None:
            weight_decay = 1e-2 if type(self).decoupled_decay else 0.0
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule,
                         max_grad_norm=max_grad_norm)
        if decoupled_weight_decay is not None:  # torch.optim.Adam's switch to AdamW's decay
            if type(self).decoupled_decay:
                raise ValueError("decoupled_weight_decay is torch.optim.Adam's flag; AdamW's "
                                 "weight decay is always decoupled")
            self.decoupled_decay = check.flag("decoupled_weight_decay", decoupled_weight_decay)
        self.betas = check.betas(betas)
        self.eps = check.positive("eps", eps)
        self.amsgrad = check.flag("amsgrad", amsgrad)
        self.vectors = ("m", "v", "vmax") if self.amsgrad else ("m", "v")

    def moment_floor(self, S) -> Tensor | None:
        """``moment_floor(betas, m, c₁)`` at this state (None: no bound)."""
        return moment_floor(self.betas, S["m"], S["c1"])

    def admissible(self, S):
        floor = self.moment_floor(S)
        floor = 0.0 if floor is None else floor
        return self._raise_to(S, {n: floor for n in self.vectors if n != "m"})

    def blocks(self):
        stepped: dict = {}  # a discrete step's new clock values, reported by their Clock rates

        def moments(tau, S, g):
            return moment_rates(self.betas, tau, g, stepped)

        def position(tau, S, g):
            eta = self.eta(tau)
            decay = eta * self.weight_decay if self.decoupled_decay else 0.0
            if stepped:  # the discrete step just advanced the clocks: 1 - βᵢᵏ, Python numbers
                return (self._position(eta, S, g, stepped["c1"], stepped["c2"], decay),)
            if isinstance(S["c1"], Tensor):  # the field on device clocks: no host read
                return (_BiasCorrected(self, eta, S, g, decay),)
            return (self._position(eta, S, g, float(S["c1"]), float(S["c2"]), decay),)

        out = [Block(("m", "v", "c1", "c2"), moments)]
        if self.amsgrad:
            out.append(Envelope("vmax", "v"))
        return out + [Block(("W",), position)]

    def _position(self, eta, S, g, bc1, bc2, decay):
        """Ẇ = -η·(m/c₁)/(√v̂/√c₂ + ε) - decay·W for clocks given as numbers, in torch's
        operations (``p.addcdiv_(m, denom, value=-lr/bc1)``); at c = 0 (τ = 0 of the
        continuous flow) the limits m/c₁ → g, v/c₂ → g²."""
        keep = 1 - decay
        if bc1 == 0 or bc2 == 0:
            return Linear((Term(-eta, g, g.abs().add_(self.eps), "div"),), decay, keep)
        v = S["vmax"] if self.amsgrad else S["v"]
        denom = (v.sqrt() / bc2 ** 0.5).add_(self.eps)
        return Linear((Term(-(eta / bc1), S["m"], denom, "div"),), decay, keep)

    def equations(self):
        b1, b2 = self.betas
        vhat = "v̂" if self.amsgrad else "v"
        eqs = [f"ṁ  = (1-β₁)(g - m)            β₁={b1:g}",
               f"v̇  = (1-β₂)(g² - v)           β₂={b2:g}",
               "ċ₁ = (1-β₁)(1 - c₁),  ċ₂ = (1-β₂)(1 - c₂),  c₁(0) = c₂(0) = 0"]
        if self.amsgrad:
            eqs.append("v̂  = max_{s≤τ} v(s)           (amsgrad envelope)")
        decay = " + λ·W" if self.decoupled_decay and self.weight_decay else ""
        eqs.append(f"Ẇ  = -η(τ)·[(m/c₁)/(√({vhat}/c₂) + ε){decay}]    ε={self.eps:g}"
                   + (f", λ={self.weight_decay:g}" if decay else ""))
        return eqs

    # --- capabilities ------------------------------------------------------------------------
    def betas_fixed_limit(self):
        """Ẇ = -η·[g/(|g| + ε) + λ·W] (λ: AdamW's decoupled decay): m → g, v → g², c → 1."""
        self._require_constant_lr("betas-fixed limits")
        if self.amsgrad:
            raise ValueError("betas-fixed limit of Adam is derived for amsgrad=False")
        return SignFlow(lr=self.lr, eps=self.eps, weight_decay=self.weight_decay,
                        decoupled=self.decoupled_decay, maximize=self.maximize)

    def modified(self, h, path="rates"):
        """The first-order modified flow at step h along ``rates`` (``ModifiedAdam``: the
        moment and clock filters at rates -log(1-h(1-βᵢ))/h, started half a step ahead;
        Ẇ scaled by 1 + hηλ/2 under decoupled decay)."""
        self._require_constant_lr("modified flows")
        if path != "rates":
            raise self._refuse(f"modified flow along {path!r} (derived along 'rates')")
        if self.amsgrad:
            raise ValueError("the modified flow of Adam is derived for amsgrad=False")
        return ModifiedAdam(lr=self.lr, betas=self.betas, eps=self.eps,
                            weight_decay=self.weight_decay, decoupled=self.decoupled_decay,
                            h=h, maximize=self.maximize)

    def preconditioner(self, S):
        """P = 1/(c₁·(√(v̂/c₂) + ε)) (per entry): the Euler step is W ← W - h·η·P·m, so the
        linearized dynamics see the preconditioned Hessian P^{1/2}HP^{1/2} (Cohen et al. 2022)
        and its top eigenvalue is compared with ``max_stable_sharpness``. Before the first
        step (c = 0) the step's own limit 1/(|g|+ε) is unknown: None."""
        bc1, bc2 = float(S["c1"]), float(S["c2"])
        if bc1 == 0 or bc2 == 0:
            return None
        v = S["vmax"] if self.amsgrad else S["v"]
        return 1.0 / ((v.sqrt() / bc2 ** 0.5).add_(self.eps) * bc1)

    def max_stable_sharpness(self):
        """(2 + 2β₁)/((1-β₁)·lr): the largest eigenvalue of the preconditioned Hessian
        P^{1/2}HP^{1/2} (``preconditioner``) that Adam with v frozen tolerates (heavy ball with
        momentum β₁ on (1-β₁)·λ(PH)); the adaptive edge of stability, 38/lr at β₁ = 0.9."""
        b1 = self.betas[0]
        return (2 + 2 * b1) / ((1 - b1) * self.lr)

    def sqrt_point(self, h):
        """lr → √h·lr, βᵢ → 1 - h(1-βᵢ), ε → ε/√h, decoupled λ → √h·λ (lr·λ is a per-step
        rate, like 1-β), Σ → Σ/h."""
        return adam_sqrt_point(self, h)

    def frozen_states(self):
        """v (the preconditioner); the clocks are held at 1 (late time)."""
        self._require_linear_map()
        if self.amsgrad:
            raise ValueError("stability analysis excludes amsgrad and centered variants")
        return ("v",)

    def stable_lr(self, lam, v=1.0):
        """(2 + 2β₁)/((1-β₁)·a),  a = λ/(√v + ε)."""
        self.frozen_states()
        a = lam / (math.sqrt(v) + self.eps)
        b1 = self.betas[0]
        return (2 + 2 * b1) / ((1 - b1) * a)

    def fused_step_(self, tau, S, g, h=1.0, backend="auto"):
        """torch's step k = τ + 1 through ``fluxode.kernels.adam_step_``; c₁, c₂ ← 1 - βᵢᵏ."""
        from .. import kernels

        if h != 1.0:
            return False
        flat = kernels.flat_state(S, g, backend, self.clocks)
        if flat is None:
            return False
        F, g = flat
        k = round(float(tau)) + 1
        kernels.adam_step_(F["W"], g, F["m"], F["v"], step=k, lr=self.eta(tau),
                           betas=self.betas, eps=self.eps, weight_decay=self.weight_decay,
                           decoupled=self.decoupled_decay, amsgrad=self.amsgrad,
                           vmax=F.get("vmax"), maximize=self.maximize, backend=backend)
        S["c1"].fill_(1 - self.betas[0] ** float(k))
        S["c2"].fill_(1 - self.betas[1] ** float(k))
        return True

    def fused_group_step_(self, taus, states, grads, h=1.0, backend="auto"):
        """Every tensor's torch step k = τ + 1 (its own τ) through
        ``fluxode.kernels.adam_group_step_``: one launch per dtype combination (and per
        distinct lr, when a schedule gives tensors at different τ different rates); each
        tensor's c₁, c₂ ← 1 - βᵢᵏ."""
        from .. import kernels

        if h != 1.0 or not states:
            return False
        names = ("m", "v", "vmax") if self.amsgrad else ("m", "v")
        Ws = [S["W"] for S in states]
        L = {n: [S[n] for S in states] for n in names}
        parts = kernels.group_fits(Ws, grads, list(L.values()), backend)
        if not parts:
            return False
        k_of = {t: round(float(t)) + 1 for t in set(taus)}  # usually one τ for the group
        ks = [k_of[t] for t in taus]
        lr_of = {t: self.eta(t) for t in k_of}
        for lr, idx in kernels.by_value([lr_of[t] for t in taus]):
            sub = lambda x: kernels.subset(x, idx)  # noqa: E731
            kernels.adam_group_step_(sub(Ws), sub(grads), sub(L["m"]), sub(L["v"]),
                                     steps=sub(ks), lr=lr, betas=self.betas, eps=self.eps,
                                     weight_decay=self.weight_decay,
                                     decoupled=self.decoupled_decay, amsgrad=self.amsgrad,
                                     vmaxs=sub(L.get("vmax")), maximize=self.maximize,
                                     backend=backend, _parts=parts if idx is None else None)
        b1, b2 = self.betas
        for k, idx in kernels.by_value(ks):  # the clocks c_i = 1 - β_iᵏ
            for name, c in (("c1", 1 - b1 ** float(k)), ("c2", 1 - b2 ** float(k))):
                kernels.set_scalars_(kernels.subset(states, idx), name, c)
        return True

    def fused_field_into(self, tau, S, g, out, backend="auto"):
        """(dW, dm, dv) through ``fluxode.kernels.adam_field``; dc₁, dc₂ by the clocks' own
        rates (``moment_rates``), in the clocks' dtype as ``vector_field`` computes them."""
        from .. import kernels

        if self.amsgrad:
            return self._no_fused("field", backend, " with amsgrad")
        if not kernels.fits(S["W"], g, [S["m"], S["v"], out["W"], out["m"], out["v"]],
                            backend):
            return False
        kernels.adam_field(S["W"], S["m"], S["v"], S["c1"], S["c2"], g, lr=self.eta(tau),
                           betas=self.betas, eps=self.eps, weight_decay=self.weight_decay,
                           decoupled=self.decoupled_decay, maximize=self.maximize,
                           out=(out["W"], out["m"], out["v"]), backend=backend)
        for name, clock in zip(("c1", "c2"), moment_rates(self.betas, tau, g)[2:]):
            if isinstance(S[name], Tensor):
                clock.rate(S[name], out[name])
            else:
                out[name].fill_(clock.rate(S[name]))
        return True

    def hyperparameters(self):
        hp = {**super().hyperparameters(), "betas": self.betas, "eps": self.eps,
              "amsgrad": self.amsgrad}
        if not type(self).decoupled_decay:
            hp["decoupled_weight_decay"] = self.decoupled_decay
        return hp

    @classmethod
    def option_grid(cls):
        return [dict(amsgrad=a, weight_decay=wd, maximize=mx, betas=b)
                for a in (False, True) for wd in (0.0, 1e-2) for mx in (False, True)
                for b in ((0.9, 0.999), (0.8, 0.9)) if not (mx and b != (0.9, 0.999))]

    @classmethod
    def invalid_options(cls):
        return super().invalid_options() + [
            {"betas": (1.0, 0.999)}, {"betas": (0.9, -0.1)}, {"betas": 0.9},
            {"eps": 0.0}, {"eps": float("nan")}, {"amsgrad": None}]


class AdamW(Adam):
    name = "adamw"
    summary = "AdamW: Adam with decoupled weight decay (torch.optim.AdamW)"
    torch_twin = "AdamW"
    decoupled_decay = True


@dataclass(frozen=True)
class _BiasCorrected:
    """Adam's Ẇ = -η·(m/c₁)/(√(v̂/c₂) + ε) - decay·W with the clocks c₁, c₂ as 0-d tensors.

    ``rate`` (the continuous field) keeps them on the device: the limits m/c₁ → g and
    √(v̂/c₂) → |g| at c = 0 are selected by ``torch.where``, not by a host branch. ``euler_``
    (a discrete step whose clocks did not report their values, e.g. a rescaled flow) reads
    them and takes the number form (``Adam._position``)."""

    flow: Adam
    eta: float
    S: dict
    g: Tensor
    decay: float

    def rate(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        S, f = self.S, self.flow
        c1, c2 = S["c1"].double(), S["c2"].double()
        on = (c1 > 0) & (c2 > 0)  # off only at τ = 0 of the flow (c₁ = c₂ = 0)
        m = torch.where(on, S["m"], self.g)
        coef = -self.eta / torch.where(on, c1, 1.0)
        v = S["vmax"] if f.amsgrad else S["v"]
        root = torch.where(on, v.sqrt().div_(torch.where(on, c2, 1.0).sqrt()), self.g.abs())
        return Linear((Term(coef, m, root.add_(f.eps), "div"),), self.decay,
                      1 - self.decay).rate(x, out)

    def euler_(self, x: Tensor, h: float) -> None:
        S = self.S
        self.flow._position(self.eta, S, self.g, float(S["c1"]), float(S["c2"]),
                            self.decay).euler_(x, h)
