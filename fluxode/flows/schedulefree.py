"""Schedule-Free SGD and AdamW (Defazio et al. 2024) as flows, with the ``schedulefree``
package's ``SGDScheduleFree`` / ``AdamWScheduleFree`` as references (bit for bit at h = 1).

Three sequences: z (the base SGD/Adam iterate), x (its weighted average: the *evaluation*
point) and y = (1-β)z + βx (the *training* point, where gradients are taken). The package
keeps y in the parameters in train mode and z in the state; ``eval()`` moves them to
x = lerp(y, z, 1 - 1/β), ``train()`` back to y = lerp(x, z, 1 - β).

**The flow's W is y**, the train-mode point: the gradient oracle is evaluated at W, as the
package evaluates it at the parameters in train mode. x is a function of the state
(``eval_point``), and ``to_eval``/``to_train`` switch a FlowOptimizer's parameters between
the two points as the package's ``eval()``/``train()`` do.

Step k (k = 0, 1, …; the package's group ``k``): η̃ = lr·min(1, (k+1)/warmup_steps),
ℓ = max(ℓ, η̃), ω = (k+1)^r·ℓ^p, Ω ← Ω + ω, c = ω/Ω, and with u = g + λy (SGD) or
u = g/(√(v/c₂) + ε) + λy (AdamW, v ← β₂v + (1-β₂)g², c₂ = 1 - β₂^{k+1}):

    y ← lerp(y, z, c) + η̃·(β(1-c) - 1)·u          z ← z - η̃·u

This is the partitioned Euler step of the (z, x) system below, z first, then x with the new z
(x ← x + c(z_new - x)), written in y = (1-β)z + βx. As an ODE on the step clock τ:

    ℓ = max_{s≤τ} η̃(s)        Ω̇ = ω(τ) = (τ+1)^r·ℓ^p        Ω(0) = 0
    ż = -η̃(τ)·u               ẋ = (ω/Ω)(z - x)              z(0) = x(0) = W₀
    ⇔ ẏ = (ω/Ω)(z - y) - (1-β)·η̃(τ)·u                        y(0) = W₀

(AdamW: v̇ = (1-β₂)(g² - v), ċ₂ = (1-β₂)(1 - c₂), c₂(0) = 0, v/c₂ → g² at τ = 0.)

Start. x is the ω-weighted average of z, so at τ = 0 the ratio (z - y)/Ω is 0/0; its limit
(z - x ≈ ż·τ/2, Ω ≈ ω·τ) gives ẏ(0) = -(1 - β/2)·η̃(0)·u(0), which the field uses at Ω = 0.
ℓ starts at η̃(0) (the first step's max), a consistent start: the reference's -1 is
replaced by the same value on the first step. Continuously ℓ follows the running max,
ℓ̇ = [η̃'(τ)]₊·1{η̃(τ) ≥ ℓ} (η̃' by a forward difference of the schedule); every Euler step
writes the running max max(ℓ, η̃(τ)) exactly (``rates.Exact``). η̃'s warmup is
min(1, (τ+1)/warmup_steps), a kink, equal to the package's at every step.

The package keeps k, Ω and ℓ per param group; the flow keeps them per parameter. They agree
while every parameter of a group gets a gradient on every step (a parameter that misses
steps keeps its own clock here).

Limits:

    betas-fixed   lr → h·lr, β (and β₂, AdamW) fixed: the package at lr·h. β is an
                  interpolation weight, not a rate, and the package's averaging weight is
                  c_k = ω/Ω = 1/(k+1) for r = 0 at any lr: on the step clock τ = k·h that is
                  h/τ per step, a 1/τ rate independent of h. So Ω is no filter: it keeps its
                  rate on the path (``WeightSum.divided`` is the identity; divided like a
                  filter it made c = h/(k+1), x froze at W₀ and the error to the flow grew
                  0.37 → 0.65 from h = 1/4 to 1/64), and the step-h run — bit for bit the
                  package with lr·h — is the Euler step h of the *same* system: the limit of
                  Schedule-Free SGD is the flow itself (order 1.009 on ``quadratic``,
                  lr 0.1, T 4, h = 1/4 … 1/64). For AdamW
                  β₂'s filter is slaved, v → g², c₂ → 1, and the limit is that system on
                  u = g/(|g| + ε) + λy (``ScheduleFreeSignLimit``). r ≠ 0 or warmup (counted
                  in steps) are refused.
    sqrt          not declared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import validation as check
from .base import Block, Flow, Var
from .rates import Clock, Exact, Linear, Term


def _one(x: Tensor) -> Tensor:
    return torch.ones((), dtype=x.dtype, device=x.device)


class _Average:
    """ẏ = (ω/Ω)(z - y) - (1-β)η̃·u; its Euler step h is the package's
    ``y.lerp_(z, c); y.add_(u, alpha=h·η̃·(β(1-c) - 1))`` with c = h·ω/Ω (Ω already advanced)."""

    def __init__(self, z, u, eta, beta, omega, Omega):
        self.z, self.u, self.eta, self.beta, self.omega, self.Omega = z, u, eta, beta, omega, Omega

    def rate(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        if self.Omega == 0:  # τ = 0: (ω/Ω)(z - y) → -β·η̃·u/2
            r = self.u * (-(1 - self.beta / 2) * self.eta)
        else:
            r = (self.z - x) * (self.omega / self.Omega) - self.u * ((1 - self.beta) * self.eta)
        return r if out is None else out.copy_(r)

    def euler_(self, x: Tensor, h: float) -> None:
        w = self.omega if h == 1.0 else h * self.omega
        try:
            c = w / self.Omega
        except ZeroDivisionError:
            c = 0
        x.lerp_(self.z, c)
        lr = self.eta if h == 1.0 else h * self.eta
        x.add_(self.u, alpha=lr * (self.beta * (1 - c) - 1))


@dataclass(frozen=True)
class WeightSum:
    """Ω̇ = ω(τ), the sum of the averaging weights (unit step: the package's
    ``weight_sum + weight``); Ω enters the field only through the averaging rate ω/Ω.

    Along betas-fixed Ω keeps its rate (``divided(h)`` is the identity): it is not a filter.
    The package at lr·h averages with c_k = ω_k/Σ_{j≤k} ω_j, which for r = 0 is 1/(k+1)
    whatever lr is. On the step clock τ = k·h that is the Euler step h of the undivided rate
    (Ω_k = h·Σω, c = h·ω/Ω = 1/(k+1)), a 1/τ rate the same at every h. Divided by h, Ω counts
    steps and every weight becomes c = h/(k+1), a rate h/τ → 0: x freezes at W₀ and the runs
    leave both the package and the declared limit (measured that way: the error to the flow
    grew from 0.37 at h = 1/4 to 0.65 at h = 1/64 on ``quadratic``)."""

    inner: Linear

    def rate(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        return self.inner.rate(x, out)

    def euler_(self, x: Tensor, h: float) -> None:
        self.inner.euler_(x, h)

    def divided(self, h: float) -> WeightSum:
        return self


class ScheduleFreeSGD(Flow):
    name = "sgd-schedulefree"
    summary = "Schedule-Free SGD: y = (1-β)z + βx, x the weighted average of z (schedulefree)"
    reference = "schedulefree:SGDScheduleFree"
    default_lr = 1.0
    decoupled_decay = False  # the package adds λy to the gradient
    adaptive = False
    # β = 0 (Polyak averaging) is a valid method, but then y = z and the eval point
    # x = lerp(y, z, 1 - 1/β) is not a function of the state the flow keeps. β = 1 (primal
    # averaging) is left out: it is not checked against the package here
    ranges = {"momentum": check.Interval(0.0, 1.0, low_open=True)}

    def __init__(self, lr=None, momentum=0.9, weight_decay=0.0, warmup_steps=0, r=0.0,
                 weight_lr_power=2.0, *, schedule=None, max_grad_norm=None):
        super().__init__(lr, weight_decay=weight_decay, schedule=schedule,
                         max_grad_norm=max_grad_norm)
        self.momentum = check.within("momentum", momentum, self.ranges["momentum"])
        self._common(warmup_steps, r, weight_lr_power)

    def _common(self, warmup_steps, r, weight_lr_power):
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) \
                or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer in [0, inf), got "
                             f"{warmup_steps!r}")
        self.warmup_steps = warmup_steps
        self.r = check.at_least("r", r, 0.0)
        self.weight_lr_power = check.at_least("weight_lr_power", weight_lr_power, 0.0)

    @property
    def beta(self) -> float:
        return self.momentum

    # --- state ---------------------------------------------------------------------------------
    def variables(self):
        return (Var("lr_max", "scalar", lambda W, g0: torch.tensor(self.scheduled_lr(0.0),
                                                                    dtype=torch.float64),
                    "float64"),
                Var("weight_sum", "scalar", 0.0, "float64"),
                *self._moment_vars(),
                Var("z", "param", lambda W, g0: W.clone()))

    def _moment_vars(self):
        return ()

    def scheduled_lr(self, tau: float) -> float:
        """η̃(τ) = η(τ)·min(1, (τ+1)/warmup_steps) (the package's ``lr*sched`` at τ = k)."""
        tau = float(tau)
        sched = min(1.0, (tau + 1) / self.warmup_steps) if tau < self.warmup_steps else 1.0
        return self.eta(tau) * sched

    def _ell_rate(self, tau, S):
        ell = float(S["lr_max"])
        now = self.scheduled_lr(tau)
        delta = 1e-7 * max(1.0, abs(float(tau)))
        slope = (self.scheduled_lr(tau + delta) - now) / delta if now >= ell else 0.0
        one = _one(S["lr_max"])
        return Exact(Linear((Term(max(slope, 0.0), one),)),
                     torch.tensor(max(now, ell), dtype=S["lr_max"].dtype,
                                  device=S["lr_max"].device))

    def _omega(self, tau, ell: float) -> float:
        return ((float(tau) + 1) ** self.r) * (ell ** self.weight_lr_power)

    def blocks(self):
        def running_max(tau, S, g):
            return (self._ell_rate(tau, S),)

        def weight_sum(tau, S, g):
            return (WeightSum(Linear((Term(self._omega(tau, float(S["lr_max"])),
                                           _one(S["weight_sum"])),))),)

        def iterates(tau, S, g):
            eta = self.scheduled_lr(tau)
            omega = self._omega(tau, float(S["lr_max"]))
            u = self.direction(S, g)
            return (_Average(S["z"], u, eta, self.beta, omega, float(S["weight_sum"])),
                    Linear((Term(-eta, u),)))

        return [Block(("lr_max",), running_max), Block(("weight_sum",), weight_sum),
                *self._moment_blocks(), Block(("W", "z"), iterates)]

    def _moment_blocks(self):
        return []

    def direction(self, S, g) -> Tensor:
        """u: the gradient the package steps with (SGD: g + λy, already in g)."""
        return g

    # --- train / eval points -------------------------------------------------------------------
    def eval_point(self, S) -> Tensor:
        """x = lerp(y, z, 1 - 1/β), the evaluation point (the package's ``eval()``)."""
        return S["W"].lerp(S["z"], 1 - 1 / self.beta)

    def train_point(self, x: Tensor, z: Tensor) -> Tensor:
        """y = lerp(x, z, 1 - β) (the package's ``train()``)."""
        return x.lerp(z, 1 - self.beta)

    def reference_optimizer(self, params):
        opt = super().reference_optimizer(params)
        opt.train()  # the package starts in eval mode and refuses to step there
        return opt

    def torch_kwargs(self):
        kw = super().torch_kwargs()
        kw.pop("maximize", None)
        return kw

    # --- description ---------------------------------------------------------------------------
    def equations(self):
        b = f"β={self.beta:g}"
        return ["ℓ  = max_{s≤τ} η̃(s),  η̃ = η(τ)·min(1, (τ+1)/warmup),  Ω̇ = (τ+1)^r·ℓ^p, Ω(0) = 0"
                f"     r={self.r:g}, p={self.weight_lr_power:g}, warmup={self.warmup_steps}",
                *self._moment_equations(),
                f"ż  = -η̃·u,   u = {self._u_text()}",
                f"Ẇ  = ((τ+1)^r ℓ^p/Ω)(z - W) - (1-β)·η̃·u    (W = y, the train point; {b})",
                "x  = lerp(W, z, 1 - 1/β) (eval point);  W(0) = z(0) = W₀, Ẇ(0) = -(1-β/2)η̃u"]

    def _moment_equations(self):
        return []

    def _u_text(self):
        return "g (+ λW: coupled decay)"

    def hyperparameters(self):
        hp = super().hyperparameters()
        hp.pop("maximize")
        hp.update(momentum=self.momentum, warmup_steps=self.warmup_steps, r=self.r,
                  weight_lr_power=self.weight_lr_power)
        return hp

    # --- capabilities ------------------------------------------------------------------------
    def _require_betas_fixed(self):
        self._require_constant_lr("betas-fixed limits")
        if self.r != 0 or self.warmup_steps:
            raise ValueError("the betas-fixed limit of Schedule-Free is derived for r = 0 and "
                             "warmup_steps = 0 (both count steps, not time)")

    def betas_fixed_limit(self):
        """The flow itself (r = 0, no warmup): β is an interpolation weight and the package's
        weight at lr·h is c_k = 1/(k+1) = h/τ, the Euler step h of the rate ω/Ω (Ω keeps its
        rate on the path: ``WeightSum``), so the step-h run with lr·h is the Euler step h."""
        self._require_betas_fixed()
        return self

    @classmethod
    def option_grid(cls):
        return [dict(momentum=m, weight_decay=wd, warmup_steps=w, r=r, weight_lr_power=p)
                for m in (0.9, 0.5) for wd in (0.0, 1e-2) for w in (0, 20)
                for r in (0.0, 1.0) for p in (2.0, 0.0)
                if sum((m != 0.9, wd != 0.0, w != 0, r != 0.0, p != 2.0)) <= 1
                or (w, r) == (20, 1.0)]

    @classmethod
    def invalid_options(cls):
        return [{"lr": -1.0}, {"weight_decay": -0.1}, {"momentum": 0.0}, {"momentum": 1.0},
                {"warmup_steps": -1}, {"warmup_steps": 1.5}, {"r": -1.0},
                {"weight_lr_power": -1.0}]


class ScheduleFreeAdamW(ScheduleFreeSGD):
    name = "adamw-schedulefree"
    summary = "Schedule-Free AdamW: Schedule-Free on Adam's normalized gradient (schedulefree)"
    reference = "schedulefree:AdamWScheduleFree"
    default_lr = 0.0025
    decoupled_decay = True  # λy is added to the *normalized* gradient
    torch_names = {"v": "exp_avg_sq"}
    # β₁ = 0: the eval point divides by it (see ScheduleFreeSGD.ranges)
    ranges = {"betas[0]": check.Interval(0.0, 1.0, low_open=True)}

    def __init__(self, lr=None, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 warmup_steps=0, r=0.0, weight_lr_power=2.0, *, schedule=None,
                 max_grad_norm=None):
        Flow.__init__(self, lr, weight_decay=weight_decay, schedule=schedule,
                      max_grad_norm=max_grad_norm)
        self.betas = check.betas(betas)
        if self.betas[0] not in self.ranges["betas[0]"]:
            raise ValueError(f"betas[0] must be in {self.ranges['betas[0]']}: the eval point "
                             f"divides by it, got {betas!r}")
        self.eps = check.positive("eps", eps)
        self._common(warmup_steps, r, weight_lr_power)

    @property
    def beta(self) -> float:
        return self.betas[0]

    def _moment_vars(self):
        return (Var("v"), Var("c2", "scalar", 0.0, "float64"))

    def admissible(self, S):
        """v ≥ 0 (a Runge–Kutta stage with negative weights can leave it; the exact flow
        never does); the discrete step never projects."""
        return self._raise_to(S, {"v": 0.0})

    def _moment_blocks(self):
        b2 = self.betas[1]

        def moments(tau, S, g):
            return (Linear((Term(1 - b2, g, g, "mul"),), decay=1 - b2, keep=b2), Clock(b2, tau))

        return [Block(("v", "c2"), moments)]

    def direction(self, S, g):
        bc2 = float(S["c2"])
        if bc2 == 0:  # τ = 0 of the continuous flow: v/c₂ → g²
            u = g / g.abs().add_(self.eps)
        else:
            u = g.div(S["v"].div(bc2).sqrt_().add_(self.eps))
        if self.weight_decay != 0:
            u.add_(S["W"], alpha=self.weight_decay)
        return u

    def _moment_equations(self):
        return [f"v̇  = (1-β₂)(g² - v),  ċ₂ = (1-β₂)(1 - c₂),  c₂(0) = 0     β₂={self.betas[1]:g}"]

    def _u_text(self):
        return f"g/(√(v/c₂) + ε) + λW     ε={self.eps:g}"

    def hyperparameters(self):
        hp = Flow.hyperparameters(self)
        hp.pop("maximize")
        hp.update(betas=self.betas, eps=self.eps, warmup_steps=self.warmup_steps, r=self.r,
                  weight_lr_power=self.weight_lr_power)
        return hp

    def betas_fixed_limit(self):
        """β₂'s filter is slaved (v → g², c₂ → 1) and the rest is Schedule-Free SGD's system
        (r = 0, no warmup): ż = -η·u, ẏ = (ω/Ω)(z - y) - (1-β₁)η·u on
        u = g/(|g| + ε) + λy (``ScheduleFreeSignLimit``)."""
        self._require_betas_fixed()
        return ScheduleFreeSignLimit(lr=self.lr, momentum=self.betas[0], eps=self.eps,
                                     weight_decay=self.weight_decay,
                                     weight_lr_power=self.weight_lr_power)

    @classmethod
    def option_grid(cls):
        return [dict(betas=b, weight_decay=wd, warmup_steps=w, r=r, weight_lr_power=p)
                for b in ((0.9, 0.999), (0.5, 0.9)) for wd in (0.0, 1e-2) for w in (0, 20)
                for r in (0.0, 1.0) for p in (2.0, 0.0)
                if sum((b != (0.9, 0.999), wd != 0.0, w != 0, r != 0.0, p != 2.0)) <= 1
                or (w, r) == (20, 1.0)]

    @classmethod
    def invalid_options(cls):
        return [{"lr": -1.0}, {"weight_decay": -0.1}, {"betas": (0.0, 0.9)},
                {"betas": (0.9, 1.0)}, {"eps": 0.0}, {"warmup_steps": -1}, {"r": -1.0}]


class ScheduleFreeSignLimit(ScheduleFreeSGD):
    """Schedule-Free AdamW along betas-fixed: Schedule-Free SGD's (z, y) system on the
    slaved direction u = g/(|g| + ε) + λy (decoupled: λy is added to the normalized g)."""

    name = "adamw-schedulefree-sign-limit"
    summary = "Schedule-Free AdamW's betas-fixed limit: Schedule-Free on g/(|g| + ε) + λW"
    reference = None
    decoupled_decay = True

    def __init__(self, lr=0.0025, momentum=0.9, eps=1e-8, weight_decay=0.0, warmup_steps=0,
                 r=0.0, weight_lr_power=2.0, *, schedule=None, max_grad_norm=None):
        super().__init__(lr, momentum=momentum, weight_decay=weight_decay,
                         warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power,
                         schedule=schedule, max_grad_norm=max_grad_norm)
        self.eps = check.positive("eps", eps)

    def direction(self, S, g):
        u = g / g.abs().add_(self.eps)
        if self.weight_decay != 0:
            u.add_(S["W"], alpha=self.weight_decay)
        return u

    def _u_text(self):
        return f"g/(|g| + ε) + λW     ε={self.eps:g}"

    def hyperparameters(self):
        return {**super().hyperparameters(), "eps": self.eps}


# --- train / eval for a FlowOptimizer ------------------------------------------------------------
def to_eval(optimizer) -> None:
    """Move a Schedule-Free FlowOptimizer's parameters from y to x (the package's ``eval()``):
    p ← lerp(p, z, 1 - 1/β) for every parameter with a state."""
    _switch(optimizer, "eval")


def to_train(optimizer) -> None:
    """Move them back from x to y (the package's ``train()``): p ← lerp(p, z, 1 - β)."""
    _switch(optimizer, "train")


def _switch(optimizer, mode: str) -> None:
    flow = optimizer.proto
    if not isinstance(flow, ScheduleFreeSGD):
        raise ValueError(f"to_{mode} is for Schedule-Free flows, got {flow.name!r}")
    current = getattr(optimizer, "_schedulefree_mode", "train")
    if current == mode:
        return
    with torch.no_grad():
        for group in optimizer.param_groups:
            beta = optimizer.flow_for(group).beta
            w = 1 - 1 / beta if mode == "eval" else 1 - beta
            for p in group["params"]:
                z = optimizer.state[p].get("z")
                if z is not None:
                    p.lerp_(z, w)
    optimizer._schedulefree_mode = mode
