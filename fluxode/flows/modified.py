"""Flows derived from others: first-order modified equations and betas-fixed limits.

Modified equations (backward error analysis). With lr-step s = h·lr (h: the step along the
path, lr: torch's lr) and lr-time t = lr·τ, heavy ball  b ← μb + g,  W ← W - s·b  follows

    dW/dt = -(1/(1-μ))·∇L̃,     L̃ = L + s(1+μ)/(4(1-μ)²)·‖∇L‖²,     ∇L̃ = g + s(1+μ)/(2(1-μ)²)·Hg

to O(s²) per unit time (μ = 0: gradient descent and L + (s/4)‖∇L‖², Barrett & Dherin 2021;
μ > 0: Kovachki & Stuart 2021, Ghosh et al. 2023). Derivation: insert W_k = W(ks) into
W_{k+1} - W_k = μ(W_k - W_{k-1}) - s·g(W_k) and expand, (1-μ)Ẇ + (s/2)(1+μ)Ẅ = -g + O(s²).

The start (derivation). Heavy ball is a two-step recurrence: its iterates are the modified
flow's W(ks) plus a parasitic mode that decays like μᵏ, and torch's first step (b₁ = g₀, so
W₁ = W₀ - s·g₀) fixes how much of W₀ goes into each. The start W(0) = W₀ + δ must put the
iterates on the flow to the flow's order, O(s²); δ has the form a₁·s·g₀ + a₂·s²·H₀g₀ (the
only O(s) and O(s²) vectors: a third-derivative term is O(s³)), so the linear case fixes
a₁, a₂. On L = ½λw² with x = sλ, W_k = A·z₁ᵏ + B·z₂ᵏ, z₁,₂ the roots of
z² - (1+μ-x)z + μ = 0 (z₁ = 1 - x/(1-μ) - μx²/(1-μ)³ - …, z₂ = μ/z₁), and W₀ = A + B,
W₁ = (1-x)W₀ give

    A/W₀ = (1 - x - z₂)/(z₁ - z₂) = 1 + μu + μ(2+μ)u² + O(u³),     u = sλ/(1-μ)²,

hence the start (``ModifiedSGD.start_shift``; ``init``)

    W(0) = W₀ + s·μ/(1-μ)²·g₀ + s²·μ(2+μ)/(1-μ)⁴·H₀g₀            (shift_start=False: W₀)

(the O(s) term alone leaves an O(s²) offset in the error constant; the engine passes the
effective gradient G = g₀ + 2c·H₀g₀ to ``init``, and the raw g₀ and H₀g₀ are read back from
it). The discrete iterates then follow the flow to O(s²) once μᵏ is negligible (at τ = T:
μ^{T/h}); the maximum error over [0, T] still sees the O(s) parasitic mode in the first steps.

The error constant (``ModifiedSGD.error_constant``). With that start the error left at
lr-time t = lr·τ is the flow's own: per step log z₁ and the modified rate -ã·s differ at
O(x³), -log z₁ - ãs = κ₃x³ + O(x⁴) with

    κ₃ = 1/(3(1-μ)³) + μ/(1-μ)⁴ + μ(1+μ)/(1-μ)⁵         (μ = 0: 1/3, Barrett–Dherin's GD)

so on ½wᵀAw, in A's eigenbasis, W_k - W(ks) = -κ₃·λᵢ³·t·e^{-λᵢt/(1-μ)}·(A/W₀)ᵢ·zᵢ·s² + O(s³):
the leading error is C·h² with C = -lr²·Σᵢ κ₃λᵢ³·t·e^{-λᵢt/(1-μ)}·qᵢqᵢᵀW₀.

Betas-fixed limit of Adam/RMSprop (``Adam.betas_fixed_limit``, ``RMSprop.betas_fixed_limit``,
used by ``fluxode.paths``): the moments are slaved, m → g, v → g²,

    Ẇ = -η(τ)·[g/(|g| + ε) + λ·W]        (λ: decoupled decay only; a sign flow as ε → 0)

Modified flows of Adam and RMSprop along ``rates`` (``ModifiedAdam``, ``ModifiedRMSprop``).
Along ``rates`` the discrete run is the partitioned Euler scheme with step h applied to the
flow's own ODE: auxiliaries a (moments, clocks) first, then W with the new a. Write the flow
as a' = F_a(a, W), W' = F_W(a, W). One step is y + hF + h²D + O(h³) with D = (0, ∂ₐF_W·F_a)
(W sees a_{k+1} = a_k + hF_a), so backward error analysis gives the first-order modified flow

    a' = F_a - (h/2)(∂ₐF_a·F_a + ∂_W F_a·F_W)
    W' = F_W + (h/2)(∂ₐF_W·F_a - ∂_W F_W·F_W).

For Adam and RMSprop this is singular where the discrete run starts (c₁ = c₂ = 0, v = 0:
m/c₁ is 0/0 and ∂ₐF_W ~ 1/c₁), and its O(h)·∂ₐF_W term multiplies an O(h) lag of m/c₁
into an O(h²/τ) field, not integrable at τ = 0. The change of variables b = a + (h/2)F_a
(the auxiliaries half a step ahead: W_{k+1} - W_k uses a_{k+1}, which the flow reaches at
the step's midpoint) removes both: to O(h²),

    b' = F_a(b, W) - (h/2)·∂ₐF_a·F_a          W' = F_W(b, W) - (h/2)·∂_W F_W·F_W,
    b(0) = a₀ + (h/2)·F_a(a₀, W₀).

The moments and clocks of Adam/RMSprop are linear filters ẋ = r(u - x) (∂ₓF = -r), so their
modified rate is r(1 + hr/2) = r̃ + O(h²) with r̃ = -log(1 - hr)/h, the rate whose exact
flow decays as much over h as one Euler step (1 - hr). We use r̃ and start each filter half a
step ahead *exactly*: x(0) = (1 - √(1 - hr))·u₀ (= (h/2)·r·u₀ + O(h²)), so the modified
clocks c(τ) = 1 - √(1-hr)·e^{-r̃τ} pass through torch's bias corrections 1 - (1-hr)ᵏ at the
midpoints τ = (k - ½)h, and the bias-corrected m/c₁, v/c₂ start at g₀, g₀² (no 0/0).

    Adam/AdamW (F_W has no W but decoupled decay -ηλW):
        ṁ = r̃₁(g - m),  v̇ = r̃₂(g² - v),  ċᵢ = r̃ᵢ(1 - cᵢ),  cᵢ(0) = 1 - √(1 - h rᵢ)
        m(0) = c₁(0)·g₀,  v(0) = c₂(0)·g₀²,  rᵢ = 1 - βᵢ
        Ẇ = -η(1 + hηλ/2)·[(m/c₁)/(√(v/c₂) + ε) + λW]        (λ = 0 for Adam)
    RMSprop (F_W = -η·P·g(W), P = 1/(√v + ε), ∂_W F_W = -ηPH):
        v̇ = r̃(g² - v),  v(0) = (1 - √(1 - hr))·g₀²,  r = 1 - α
        Ẇ = -η·P·[g + (h/2)·η·H·P·g]             (μ = 0: -η∇(L + (hη/4)‖∇L‖²), Barrett–Dherin)

(Cattaneo, Klusowski & Shigida 2024 derive Adam's modified equation along betas-fixed, the
moments slaved to g; along ``rates`` the moments stay states and the correction above is
the whole first-order term, bias corrections included through the clocks.)

The start transient of RMSprop. From v = 0 the field is Ẇ ~ -η·sign(g)/√(rτ) near τ = 0:
the discrete steps at k = 1, 2, … differ from the flow by terms that sum like k^{-5/2}, an
offset O(√h) in W (for the plain flow, O(√h) with constant ζ(½): the plain flow is order ½
there). ``ModifiedRMSprop`` removes the leading part by shifting W(0) by that offset computed
with g frozen at g₀ (``start_shift``): the sum over the first steps of (discrete step − the
flow's integral over the step), which converges. Adam's v/c₂ is a weighted mean of g², with
no such singularity.
"""

from __future__ import annotations

import math

import torch

from .. import validation as check
from .base import Block, Flow
from .rates import Linear, Term, Toward


class ModifiedSGD(Flow):
    """Modified flow of heavy ball / gradient descent at path step h ∈ (0, 1] (needs the
    Hessian), started by the derived shift (module doc: W₀ + sμ/(1-μ)²g₀ + s²μ(2+μ)/(1-μ)⁴Hg₀)."""

    name = "modified-sgd"
    summary = "first-order modified flow of GD / heavy ball: -(1/(1-μ))∇[L + c·‖∇L‖²]"
    needs_hessian = True
    default_lr = 1e-2
    ranges = {"momentum": check.Interval(0.0, 1.0)}  # the field divides by 1 - μ

    def __init__(self, lr=None, momentum=0.0, h=1.0, shift_start=True, *, schedule=None):
        from ..paths import check_step

        super().__init__(lr, schedule=schedule)
        self.momentum = check.within("momentum", momentum, self.ranges["momentum"])
        self.h = check_step(h)
        self.shift_start = check.flag("shift_start", shift_start)

    @property
    def step(self) -> float:
        """s = h·lr, the step in lr-time."""
        return self.h * self.lr

    @property
    def coefficient(self) -> float:
        """c in L̃ = L + c‖∇L‖²: s(1+μ)/(4(1-μ)²)."""
        mu = self.momentum
        return self.step * (1 + mu) / (4 * (1 - mu) ** 2)

    @property
    def kappa3(self) -> float:
        """κ₃ = 1/(3(1-μ)³) + μ/(1-μ)⁴ + μ(1+μ)/(1-μ)⁵: the per-step O((sλ)³) gap between
        heavy ball's slow root and the modified rate (module doc)."""
        mu, d = self.momentum, 1 - self.momentum
        return 1 / (3 * d ** 3) + mu / d ** 4 + mu * (1 + mu) / d ** 5

    def effective_gradient(self, W, g, H=None):
        """G = g + 2c·Hg, carrying the raw g and Hg (``.raw``, ``.hg``) for ``init``."""
        if H is None:
            raise ValueError("the modified flow needs the Hessian H (pass a problem with one)")
        n = W.numel()
        Hg = (H.reshape(n, n) @ g.reshape(n)).reshape(W.shape)
        ge = g.add(Hg, alpha=2 * self.coefficient)
        ge.raw, ge.hg = g, Hg
        return ge

    def start_shift(self, g0, Hg0=None):
        """δ = s·μ/(1-μ)²·g₀ + s²·μ(2+μ)/(1-μ)⁴·H₀g₀ (module doc: the discrete run then sits
        on the flow to O(s²)). ``g0``: the raw gradient, or the effective one from
        ``effective_gradient`` (its raw g₀ and H₀g₀ are read back); a plain tensor without
        Hg0 gives only the O(s) term."""
        mu, s, d = self.momentum, self.step, 1 - self.momentum
        if Hg0 is None and hasattr(g0, "hg"):
            g0, Hg0 = g0.raw, g0.hg
        delta = g0 * (s * mu / d ** 2)
        if Hg0 is not None:
            delta = delta + Hg0 * (s * s * mu * (2 + mu) / d ** 4)
        return delta

    def init(self, W, g0=None):
        S = super().init(W, g0)
        if self.shift_start and self.momentum and g0 is not None:
            S["W"] = W + self.start_shift(g0)
        return S

    def error_constant(self, A, W0, T: float):
        """C with W_h(T) - W(T) = C·h² + O(h³) on L = ½wᵀAw (step-clock T, from W₀, this
        flow's lr and μ, the derived start): C = -lr²·Σᵢ κ₃λᵢ³·t·e^{-λᵢt/(1-μ)}·qᵢqᵢᵀW₀,
        t = lr·T (module doc). Independent of h (``self.h`` is not used)."""
        A = torch.as_tensor(A, dtype=torch.float64)
        lam, Q = torch.linalg.eigh(A)
        t = self.lr * float(T)
        z0 = Q.T @ torch.as_tensor(W0, dtype=torch.float64).reshape(-1)
        c = -self.lr ** 2 * self.kappa3 * lam ** 3 * t * torch.exp(-lam * t /
                                                                   (1 - self.momentum))
        return Q @ (c * z0)

    def blocks(self):
        def position(tau, S, g):
            return (Linear((Term(-self.eta(tau) / (1 - self.momentum), g),)),)

        return [Block(("W",), position)]

    def equations(self):
        mu = self.momentum
        return [f"Ẇ  = -η(τ)/(1-μ)·[g + 2c·Hg]      μ={mu:g}, c = s(1+μ)/(4(1-μ)²) = "
                f"{self.coefficient:.4g}, s = h·lr = {self.step:g}",
                "W(0) = W₀ + sμ/(1-μ)²·g₀ + s²μ(2+μ)/(1-μ)⁴·H₀g₀" if (mu and self.shift_start)
                else "W(0) = W₀"]

    def hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum, "h": self.h,
                "shift_start": self.shift_start}


class SignFlow(Flow):
    """Ẇ = -η(τ)[g/(|g| + ε) + λW]: Adam's and RMSprop's limit along betas-fixed."""

    name = "sign-flow"
    summary = "sign-like flow Ẇ = -η·g/(|g|+ε) (Adam/RMSprop with β fixed, lr → 0)"
    default_lr = 1e-3

    def __init__(self, lr=None, eps=1e-8, weight_decay=0.0, decoupled=False, *,
                 maximize=False, schedule=None):
        self.decoupled_decay = check.flag("decoupled", decoupled)
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule)
        self.eps = check.positive("eps", eps)

    def blocks(self):
        def position(tau, S, g):
            eta = self.eta(tau)
            decay = eta * self.weight_decay if self.decoupled_decay else 0.0
            return (Linear((Term(-eta, g, g.abs().add_(self.eps), "div"),), decay, 1 - decay),)

        return [Block(("W",), position)]

    def equations(self):
        decay = " + λ·W" if self.decoupled_decay and self.weight_decay else ""
        return [f"Ẇ  = -η(τ)·[g/(|g| + ε){decay}]      ε={self.eps:g}"]

    def hyperparameters(self):
        return {**super().hyperparameters(), "eps": self.eps, "decoupled": self.decoupled_decay}


def _path_step(h) -> float:
    """h checked like every path step: (0, 1] (``fluxode.paths.check_step``)."""
    from ..paths import check_step

    return check_step(h)


def _filter_rate(r: float, h: float) -> float:
    """r̃ = -log(1 - hr)/h: the rate whose exact decay over h is one Euler step's (1 - hr)."""
    if not 0 < h * r < 1:
        raise ValueError(f"modified flows need 0 < h·(1-β) < 1, got h={h:g}, 1-β={r:g}")
    return -math.log1p(-h * r) / h


def _half_step(r: float, h: float) -> float:
    """1 - √(1 - hr): a filter ẋ = r̃(u - x) from 0 run for h/2 (x(0) of the modified flow)."""
    return -math.expm1(0.5 * math.log1p(-h * r))


class ModifiedAdam(Flow):
    """First-order modified flow of Adam/AdamW along ``rates`` at step h (see module doc)."""

    name = "modified-adam"
    summary = "first-order modified flow of Adam along rates: filters r̃ = -log(1-hr)/h, " \
              "started half a step ahead"
    clocks = ("c1", "c2")
    vectors = ("m", "v")

    def __init__(self, lr=None, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled=False, h=1.0, *, maximize=False):
        self.decoupled_decay = check.flag("decoupled", decoupled)
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize)
        self.betas = check.betas(betas)
        self.eps = check.positive("eps", eps)
        self.h = _path_step(h)
        self.filter_rates = tuple(_filter_rate(1 - b, self.h) for b in self.betas)
        self.clock_starts = tuple(_half_step(1 - b, self.h) for b in self.betas)

    def from_state(self, S, g):
        """The modified flow's start for a discrete run at state S (W, m, v, c₁, c₂) with
        effective gradient g there: each filter half a step ahead, x + (1 - √(1-hr))(u - x)."""
        s1, s2 = self.clock_starts
        c = lambda x: torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
        return {"W": S["W"].clone(), "m": S["m"] + (g - S["m"]) * s1,
                "v": S["v"] + (g * g - S["v"]) * s2,
                "c1": c(S["c1"] + (1 - S["c1"]) * s1), "c2": c(S["c2"] + (1 - S["c2"]) * s2)}

    def init(self, W, g0=None):
        """torch's cold start m = v = c₁ = c₂ = 0, half a step ahead: cᵢ(0) = 1 - √(1-hrᵢ),
        m(0) = c₁(0)·g₀, v(0) = c₂(0)·g₀² (so m/c₁ = g₀, v/c₂ = g₀² at τ = 0)."""
        if g0 is None:
            raise ValueError("the modified Adam flow starts from the first gradient g0")
        z = torch.zeros_like(W)
        zero = torch.zeros((), dtype=torch.float64)
        return self.from_state({"W": W, "m": z, "v": z, "c1": zero, "c2": zero}, g0)

    @property
    def decay_factor(self) -> float:
        """1 + hηλ/2: the modified flow's factor on Ẇ (decoupled decay λ; 1 without)."""
        lam = self.weight_decay if self.decoupled_decay else 0.0
        return 1 + 0.5 * self.h * self.lr * lam

    def blocks(self):
        r1, r2 = self.filter_rates

        def moments(tau, S, g):
            return (Toward(r1, g), Linear((Term(r2, g, g, "mul"),), decay=r2),
                    Toward(r1, 1.0), Toward(r2, 1.0))

        def position(tau, S, g):
            eta = self.lr * self.decay_factor
            decay = eta * self.weight_decay if self.decoupled_decay else 0.0
            bc1, bc2 = float(S["c1"]), float(S["c2"])
            denom = (S["v"].sqrt() / bc2 ** 0.5).add_(self.eps)
            return (Linear((Term(-(eta / bc1), S["m"], denom, "div"),), decay),)

        return [Block(("m", "v", "c1", "c2"), moments), Block(("W",), position)]

    def equations(self):
        (b1, b2), (r1, r2) = self.betas, self.filter_rates
        s1, s2 = self.clock_starts
        decay = " + λW" if self.decoupled_decay and self.weight_decay else ""
        return [f"ṁ  = r̃₁(g - m),  v̇ = r̃₂(g² - v),  ċᵢ = r̃ᵢ(1 - cᵢ)    r̃ᵢ = -log(1-h(1-βᵢ))/h"
                f" = {r1:.6g}, {r2:.6g}",
                f"cᵢ(0) = 1 - √(1-h(1-βᵢ)) = {s1:.4g}, {s2:.4g};  m(0) = c₁(0)g₀,  "
                "v(0) = c₂(0)g₀²",
                f"Ẇ  = -η(1 + hηλ/2)·[(m/c₁)/(√(v/c₂) + ε){decay}]    h={self.h:g}, "
                f"β=({b1:g}, {b2:g}), ε={self.eps:g}"]

    def hyperparameters(self):
        return {**super().hyperparameters(), "betas": self.betas, "eps": self.eps,
                "decoupled": self.decoupled_decay, "h": self.h}


class ModifiedRMSprop(Flow):
    """First-order modified flow of RMSprop (μ = 0, not centered) along ``rates`` at step h,
    started from the shifted point W₀ + δ (``start_shift``; see module doc). Needs H."""

    name = "modified-rmsprop"
    summary = "first-order modified flow of RMSprop along rates: -ηP[g + (h/2)ηHPg], " \
              "v-filter r̃ = -log(1-hr)/h started half a step ahead"
    vectors = ("v",)
    needs_hessian = True

    def __init__(self, lr=None, alpha=0.99, eps=1e-8, weight_decay=0.0, h=1.0,
                 shift_start=True, *, maximize=False):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize)
        self.alpha = check.unit_interval("alpha", alpha)
        self.eps = check.positive("eps", eps)
        self.h = _path_step(h)
        self.shift_start = check.flag("shift_start", shift_start)
        self.filter_rate = _filter_rate(1 - self.alpha, self.h)
        self.v_start = _half_step(1 - self.alpha, self.h)

    def effective_gradient(self, W, g, H=None):
        """G(W, ∇L), carrying its Jacobian ∂G/∂W = ±H + λI as ``.hessian`` for the field."""
        if H is None:
            raise ValueError("the modified RMSprop flow needs the Hessian H (pass a problem "
                             "with one)")
        ge = super().effective_gradient(W, g, H).clone()
        n = W.numel()
        J = (-H if self.maximize else H).reshape(n, n)
        if self.weight_decay:
            J = J + self.weight_decay * torch.eye(n, dtype=J.dtype, device=J.device)
        ge.hessian = J
        return ge

    def start_shift(self, g0, chunk: int = 4096, max_steps: int = 1 << 22):
        """δ = Σₖ [discrete step k − the modified flow's integral over [kh, (k+1)h]] with g
        frozen at g₀, elementwise (the Hessian term is O(h) smaller and left out).

        With g frozen, v_{k+1} = g₀²(1 - κ^{k+1}) (κ = 1 - hr) for the discrete run and
        v(τ) = g₀²(1 - √κ·e^{-r̃τ}) for the flow, so v((k+1)h) = g₀²(1 - √κ·κ^{k+1}). With
        s = √v, dτ = 2s·ds/(r̃(a² - s²)), a = |g₀|, and the step integral is exact:
        ∫ -η·a/(s + ε) dτ = -(η·a/r̃)·[Φ(s)], Φ' = 2s/((a² - s²)(s + ε)) =
        1/((a+ε)(a-s)) + 1/((a-ε)(a+s)) - 2ε/((a²-ε²)(s+ε)). The terms fall like k^{-5/2}
        while hrk ≪ 1, then geometrically; the sum stops when a chunk adds < 1e-16·|δ|."""
        h, eta, eps = self.h, self.lr, self.eps
        r, rt = 1 - self.alpha, self.filter_rate
        a = g0.detach().abs().double().reshape(-1)
        live = (a > 0) & ((a - eps).abs() > 1e-12 * (a + eps))
        a = torch.where(live, a, torch.full_like(a, 2 * eps + 1.0))
        A, B, C = 1 / (a + eps), 1 / (a - eps), -2 * eps / ((a - eps) * (a + eps))
        log_kappa = math.log1p(-h * r)

        def phi(logx):  # Φ at s = a√(1 - x), x = √κ·κᵏ, with log(a - s) taken without 0·∞
            x = torch.exp(logx)
            s = a * torch.sqrt(1 - x)
            log_a_minus_s = torch.log(a) + logx - torch.log1p(torch.sqrt(1 - x))
            return -A * log_a_minus_s + B * torch.log(a + s) + C * torch.log(s + eps)

        delta = torch.zeros_like(a)
        for k0 in range(0, max_steps, chunk):
            k = torch.arange(k0, k0 + chunk, dtype=torch.float64)[:, None]
            kk = torch.exp(k * log_kappa)                 # κᵏ
            vd = a * a * -torch.expm1((k + 1) * log_kappa)
            step_d = -h * eta * a / (vd.sqrt() + eps)
            logx0 = 0.5 * log_kappa + k * log_kappa
            step_f = -(eta * a / rt) * (phi(logx0 + log_kappa) - phi(logx0))
            d = (step_d - step_f).sum(0)
            delta += d
            if float(d.abs().max()) <= 1e-16 * float(delta.abs().max()) or \
                    float(kk[-1].max()) < 1e-30:
                break
        delta = torch.where(live, delta, torch.zeros_like(delta))
        return (torch.sign(g0.detach().reshape(-1)).double() * delta).reshape(g0.shape) \
            .to(g0.dtype)

    def from_state(self, S, g):
        """The modified flow's start for a discrete run that is at state S (W, v) with
        effective gradient g there: v half a step ahead, v + (1 - √(1-hr))(g² - v); W itself
        (a warm v > 0 has no start transient)."""
        return {"W": S["W"].clone(), "v": S["v"] + (g * g - S["v"]) * self.v_start}

    def init(self, W, g0=None):
        """torch's cold start v = 0: v(0) = (1 - √(1-hr))·g₀², W(0) = W₀ + δ (``start_shift``)."""
        if g0 is None:
            raise ValueError("the modified RMSprop flow starts from the first gradient g0")
        S = self.from_state({"W": W, "v": torch.zeros_like(W)}, g0)
        if self.shift_start:
            S["W"] = W + self.start_shift(g0)
        return S

    def blocks(self):
        rt = self.filter_rate

        def average(tau, S, g):
            return (Linear((Term(rt, g, g, "mul"),), decay=rt),)

        def position(tau, S, g):
            P = 1.0 / (S["v"].sqrt() + self.eps)
            Pg = P * g
            HPg = (g.hessian @ Pg.reshape(-1)).reshape(g.shape)
            return (Linear((Term(-self.lr, P, g + 0.5 * self.h * self.lr * HPg, "mul"),)),)

        return [Block(("v",), average), Block(("W",), position)]

    def equations(self):
        return [f"v̇  = r̃(g² - v),  r̃ = -log(1-h(1-α))/h = {self.filter_rate:.6g},  "
                f"v(0) = (1 - √(1-h(1-α)))·g₀²",
                f"Ẇ  = -η·P·[g + (h/2)·η·H·P·g],  P = 1/(√v + ε)    h={self.h:g}, "
                f"α={self.alpha:g}, ε={self.eps:g}",
                "W(0) = W₀ + δ (start transient, g frozen at g₀)" if self.shift_start
                else "W(0) = W₀"]

    def hyperparameters(self):
        return {**super().hyperparameters(), "alpha": self.alpha, "eps": self.eps,
                "h": self.h, "shift_start": self.shift_start}


__all__ = ["ModifiedSGD", "SignFlow", "ModifiedAdam", "ModifiedRMSprop"]
