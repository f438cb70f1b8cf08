"""Rate expressions: the right-hand sides of the flows, in a form the discretizer can apply
with the same floating-point operations as torch.optim.

Two shapes cover every optimizer here:

    Linear(terms, decay): ẋ = -decay·x + Σ cᵢ·uᵢ           uᵢ = a,  a·b  or  a/b
    Toward(rate, target): ẋ = rate·(target - x)

Their explicit-Euler step of size h is

    Linear:  x ← κ_h·x + Σ h·cᵢ·uᵢ     κ_h = 1 - h·decay        (mul_, then add_/addcmul_/addcdiv_)
    Toward:  x ← lerp(x, target, h·rate)

plus ``Clock``, the bias-correction clock ċ = (1-β)(1-c), whose Euler iterates 1 - βᵏ are
evaluated in closed form.

so at h = 1 the step *is* torch's ``buf.mul_(μ).add_(g, alpha=1-d)``, ``exp_avg.lerp_(g, 1-β₁)``,
``param.addcdiv_(m, denom, value=-step)`` and so on, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class Term:
    """coef · a, coef · a·b (op='mul') or coef · a/b (op='div')."""

    coef: float
    a: Tensor | float
    b: Tensor | None = None
    op: str | None = None

    def value(self, out: Tensor | None = None) -> Tensor:
        """The term's value; written into ``out`` (same bits) when given and shapes agree."""
        if out is None or not isinstance(self.a, Tensor) or self.a.shape != out.shape:
            if self.op == "mul":
                return self.a * self.b * self.coef
            if self.op == "div":
                return self.a * self.coef / self.b
            return self.a * self.coef
        if self.op == "mul":
            return torch.mul(self.a, self.b, out=out).mul_(self.coef)
        if self.op == "div":
            return torch.mul(self.a, self.coef, out=out).div_(self.b)
        return torch.mul(self.a, self.coef, out=out)


@dataclass(frozen=True)
class Linear:
    """ẋ = -decay·x + Σ terms.

    ``keep`` is the retention κ₁ = 1 - decay of a unit step as torch writes it (μ, β₂, α,
    1 - lr·λ); it is used verbatim at h = 1 so the factor has torch's rounding, while the
    rate and other steps use ``decay`` itself (no cancellation in 1 - κ for small decay)."""

    terms: tuple[Term, ...]
    decay: float = 0.0
    keep: float | None = None

    def rate(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        """ẋ at x; written into ``out`` when given (no temporary for the first term)."""
        acc = None
        for t in self.terms:
            if acc is None:
                acc = t.value(out)
            else:
                acc = acc.add_(t.value()) if acc is out else acc + t.value()
        if acc is None:
            acc = torch.zeros_like(x)
        if self.decay != 0.0:
            acc = acc.sub_(self.decay * x) if acc is out else acc - self.decay * x
        if acc.shape != x.shape:
            acc = torch.broadcast_to(acc, x.shape)
        if out is not None and acc is not out:
            out.copy_(acc)
            return out
        return acc

    def euler_(self, x: Tensor, h: float) -> None:
        if h == 1.0 and self.keep is not None:
            factor = self.keep
        else:
            factor = 1.0 - h * self.decay
        if factor != 1.0:
            x.mul_(factor)
        for t in self.terms:
            c = t.coef if h == 1.0 else h * t.coef
            if t.op == "mul":
                x.addcmul_(t.a, t.b, value=c)
            elif t.op == "div":
                x.addcdiv_(t.a, t.b, value=c)
            elif isinstance(t.a, Tensor):
                x.add_(t.a, alpha=c)
            else:
                x.add_(c * t.a)


@dataclass(frozen=True)
class Toward:
    """ẋ = rate·(target - x)."""

    rate_: float
    target: Tensor | float

    def rate(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        if out is None:
            return (self.target - x) * self.rate_
        return torch.sub(self.target, x, out=out).mul_(self.rate_) \
            if isinstance(self.target, Tensor) else out.copy_((self.target - x) * self.rate_)

    def euler_(self, x: Tensor, h: float) -> None:
        w = self.rate_ if h == 1.0 else h * self.rate_
        if isinstance(self.target, Tensor):
            x.lerp_(self.target, w)
        else:
            x.lerp_(torch.full_like(x, self.target), w)


@dataclass(frozen=True)
class Clock:
    """ċ = (1 - keep)·(1 - c), c(0) = 0: a bias-correction clock, at time τ.

    Its Euler iterates are known in closed form, c_k = 1 - κ_hᵏ with κ_h = 1 - h(1 - keep),
    so the step from τ to τ + h evaluates that power (as torch does with ``1 - β**step``)
    rather than accumulating k roundings. It assumes c holds the Euler iterate at τ, which is
    true whenever the clock started at 0 at τ = 0 and only this scheme advanced it.

    A clock kept as a Python number (the discrete optimizer's exact scalars) steps by
    ``euler``, which returns the new value; a 0-d tensor steps in place by ``euler_``.
    ``report``, if given, receives the new value (a Python number) when either runs: a
    later block of the same partitioned step then uses the clock without reading it back
    from the device (Adam's bias corrections)."""

    keep: float
    tau: float
    report: Callable[[float], None] | None = field(default=None, compare=False, repr=False)

    @staticmethod
    def value(keep: float, k: int, h: float = 1.0) -> float:
        """c_k = 1 - κ_hᵏ, the clock after k Euler steps of size h from c = 0 (κ_1 = keep)."""
        kappa = keep if h == 1.0 else 1.0 - h * (1.0 - keep)
        return 1 - kappa ** float(k)

    def rate(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        r = (1 - x) * (1 - self.keep)
        return r if out is None else out.copy_(r)

    def euler(self, x: float, h: float) -> float:
        """The clock at τ + h, c = 1 - κ_hᵏ with k = (τ + h)/h (x, its value at τ, is not
        read: the closed form needs none)."""
        c = Clock.value(self.keep, round((float(self.tau) + h) / h), h)
        if self.report is not None:
            self.report(c)
        return c

    def euler_(self, x: Tensor, h: float) -> None:
        x.fill_(self.euler(x, h))


@dataclass(frozen=True)
class Exact:
    """A rate whose Euler step of size ``step`` has a known exact value.

    Continuously it is ``inner``; the discrete step of size ``step`` writes ``value`` instead of
    rounding its way there. Used where torch assigns rather than updates: SGD's first momentum
    step ``buf = g.clone()``, which equals the Euler step μ·b(0) + (1-d)·g₀ from the consistent
    start b(0) = d·g₀/μ in exact arithmetic but not in floating point."""

    inner: Linear | Toward
    value: Tensor
    step: float = 1.0

    def rate(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        return self.inner.rate(x, out)

    def euler_(self, x: Tensor, h: float) -> None:
        if h == self.step:
            x.copy_(self.value)
        else:
            self.inner.euler_(x, h)


Rate = Linear | Toward | Clock | Exact
