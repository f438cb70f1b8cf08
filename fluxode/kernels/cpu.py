"""CPU fast path.

* Adam / AdamW: torch's own fused CPU kernels (``torch._fused_adam_`` / ``torch._fused_adamw_``,
  the ops behind ``fused=True``), one pass over memory; a multi-tensor group is ONE call per
  dtype combination (the op takes tensor lists and one step tensor per tensor). Against the
  single-tensor reference (tests/test_kernels.py allows: m bit-identical, v within 1 ulp,
  W within 2 ulps of max(|W_old|, |W_new|)). Measured on 2^20 elements (AMD EPYC, torch
  2.13, ``benchmarks/cuda_kernels._inputs``, step 5, every amsgrad × decoupled case): m and
  v bit-identical; W differs in 0.22–0.28% of the elements, by at most 2 ulps at the update's
  scale. The cause is the reference's ``torch.sqrt``: torch's vectorized CPU sqrt is not
  correctly rounded (16% of float32 inputs come out 1 ulp off here), the fused op's is, and
  the 1-ulp denominator difference reaches W's last bit in a few elements.
* Low precision (bfloat16/float16 W). States in W's dtype (torch.optim's layout): the fused
  op itself, which computes in float32 and rounds each stored buffer once (round to nearest
  even) — bit for bit torch's ``AdamW(fused=True)`` on such parameters. float32 (master)
  states: the same op on float32 copies of W (and g), rounded back to W's dtype once; the
  single-tensor path copies chunk by chunk so the copy stays in cache.
* RMSprop: no fused CPU op exists. Single tensor: the reference ops. Group: torch's
  multi-tensor (``_foreach_*``) ops in the reference's op order, one call per op per dtype
  combination (bit-identical to the reference). Low precision: computed on float32 copies,
  each buffer rounded back once.
* The Adam field: no fused CPU op; whole-buffer torch ops writing into the ``out`` buffers
  (``adam_field``), bit for bit the reference on finite inputs.
"""

from __future__ import annotations

import math

import torch

from . import reference
from ._checks import LOW

DEFAULT_CHUNK = 1 << 16


def _adam_fn(decoupled: bool):
    return torch._fused_adamw_ if decoupled else torch._fused_adam_


def _adam_kw(lr, beta1, beta2, eps, weight_decay, amsgrad, maximize) -> dict:
    return dict(lr=float(lr), beta1=float(beta1), beta2=float(beta2),
                weight_decay=float(weight_decay), eps=float(eps), amsgrad=bool(amsgrad),
                maximize=bool(maximize))


def adam_step_(w, g, m, v, *, step, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad,
               vmax, maximize, chunk: int = DEFAULT_CHUNK):
    """Adam/AdamW step on CPU with torch's fused kernel (low-precision W with float32
    states: per-chunk float32 copy)."""
    if not hasattr(torch, "_fused_adamw_"):
        return reference.adam_step_(w, g, m, v, step=step, lr=lr, beta1=beta1, beta2=beta2,
                                    eps=eps, weight_decay=weight_decay, decoupled=decoupled,
                                    amsgrad=amsgrad, vmax=vmax, maximize=maximize)
    fn = _adam_fn(decoupled)
    steps = [torch.tensor(float(step), dtype=torch.float32)]
    kw = _adam_kw(lr, beta1, beta2, eps, weight_decay, amsgrad, maximize)
    if w.dtype == m.dtype:  # one dtype throughout (g converted if it is the master dtype)
        gg = g if g.dtype == w.dtype else g.to(w.dtype)
        fn([w], [gg], [m], [v], [vmax] if amsgrad else [], steps, **kw)
        return
    n = w.numel()
    scratch = torch.empty(min(n, chunk), dtype=m.dtype)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        w32 = scratch[:hi - lo]
        w32.copy_(w[lo:hi])
        gc = g[lo:hi] if g.dtype == m.dtype else g[lo:hi].to(m.dtype)
        fn([w32], [gc], [m[lo:hi]], [v[lo:hi]], [vmax[lo:hi]] if amsgrad else [], steps,
           **kw)
        w[lo:hi].copy_(w32)


def adam_group_step_(ws, gs, ms, vs, *, steps, lr, beta1, beta2, eps, weight_decay, decoupled,
                     amsgrad, vmaxs, maximize):
    """Adam/AdamW on a list of tensors of one dtype combination, each at its own step count
    ``steps[i]`` (k >= 1): ONE call of torch's fused multi-tensor op."""
    if not hasattr(torch, "_fused_adamw_"):
        return reference.adam_group_step_(ws, gs, ms, vs, steps=steps, lr=lr, beta1=beta1,
                                          beta2=beta2, eps=eps, weight_decay=weight_decay,
                                          decoupled=decoupled, amsgrad=amsgrad, vmaxs=vmaxs,
                                          maximize=maximize)
    kw = _adam_kw(lr, beta1, beta2, eps, weight_decay, amsgrad, maximize)
    # one float32 step tensor per tensor (torch keeps float32 steps): the same tensor when
    # every tensor is at the same step (the op only reads it), else views of one allocation
    if steps.count(steps[0]) == len(steps):
        K = [torch.tensor(float(steps[0]), dtype=torch.float32)] * len(steps)
    else:
        K = torch.tensor(steps, dtype=torch.float32).unbind(0)
    wdt, gdt, sdt = ws[0].dtype, gs[0].dtype, ms[0].dtype
    if wdt == sdt and gdt != wdt:  # the op takes one dtype throughout
        gs = [g.to(wdt) for g in gs]
    VM = vmaxs if amsgrad else []
    if wdt == sdt:
        _adam_fn(decoupled)(ws, gs, ms, vs, VM, K, **kw)
        return
    w32 = [w.to(sdt) for w in ws]  # low-precision W, float32 (master) states
    if gs[0].dtype != sdt:
        gs = [g.to(sdt) for g in gs]
    _adam_fn(decoupled)(w32, gs, ms, vs, VM, K, **kw)
    torch._foreach_copy_(ws, w32)


def rmsprop_group_step_(ws, gs, ss, *, lr, alpha, eps, weight_decay, momentum, centered,
                        grad_avgs, momentum_bufs, maximize):
    """RMSprop on a list of tensors of one dtype combination with torch's multi-tensor ops, in
    the reference's op order (torch.optim's single-tensor RMSprop): one call per op."""
    A = grad_avgs if centered else None
    B = momentum_bufs if momentum > 0 else None
    low = ws[0].dtype in LOW or gs[0].dtype in LOW or ss[0].dtype in LOW
    if not low:
        return _rmsprop_foreach(ws, gs, ss, A, B, lr=lr, alpha=alpha, eps=eps,
                                weight_decay=weight_decay, momentum=momentum,
                                maximize=maximize)
    # compute in float32, round each buffer back once
    f32 = lambda L: None if L is None else [x.float() for x in L]  # noqa: E731
    W, S, A2, B2 = f32(ws), f32(ss), f32(A), f32(B)
    _rmsprop_foreach(W, f32(gs), S, A2, B2, lr=lr, alpha=alpha, eps=eps,
                     weight_decay=weight_decay, momentum=momentum, maximize=maximize)
    for dst, src in ((ws, W), (ss, S), (A, A2), (B, B2)):
        if dst is not None and dst[0].dtype in LOW:
            torch._foreach_copy_(dst, src)


def _rmsprop_foreach(W, G, S, A, B, *, lr, alpha, eps, weight_decay, momentum, maximize):
    if maximize:
        G = torch._foreach_neg(G)
    if weight_decay:
        G = torch._foreach_add(G, W, alpha=weight_decay)
    torch._foreach_mul_(S, alpha)
    torch._foreach_addcmul_(S, G, G, value=1 - alpha)
    if A is not None:
        torch._foreach_lerp_(A, G, 1 - alpha)
        avg = torch._foreach_addcmul(S, A, A, value=-1)
        torch._foreach_sqrt_(avg)
    else:
        avg = torch._foreach_sqrt(S)
    torch._foreach_add_(avg, eps)
    if B is not None:
        torch._foreach_mul_(B, momentum)
        torch._foreach_addcdiv_(B, G, avg)
        torch._foreach_add_(W, B, alpha=-lr)
    else:
        torch._foreach_addcdiv_(W, G, avg, value=-lr)


def rmsprop_step_(w, g, square_avg, *, lr, alpha, eps, weight_decay, momentum, centered,
                  grad_avg, momentum_buf, maximize):
    """RMSprop step on CPU: the reference ops (low precision: on float32 copies)."""
    if not (w.dtype in LOW or g.dtype in LOW or square_avg.dtype in LOW):
        return reference.rmsprop_step_(w, g, square_avg, lr=lr, alpha=alpha, eps=eps,
                                       weight_decay=weight_decay, momentum=momentum,
                                       centered=centered, grad_avg=grad_avg,
                                       momentum_buf=momentum_buf, maximize=maximize)
    rmsprop_group_step_([w], [g], [square_avg], lr=lr, alpha=alpha, eps=eps,
                        weight_decay=weight_decay, momentum=momentum, centered=centered,
                        grad_avgs=[grad_avg], momentum_bufs=[momentum_buf], maximize=maximize)


def adam_field(w, m, v, c1, c2, g, *, lr, beta1, beta2, eps, weight_decay, decoupled, maximize,
               out):
    """The Adam/AdamW field written into ``out`` by whole-buffer torch ops, in the core's op
    order (``fluxode.flows.adam``), at the admissible state v' = max(v, (1-β₂)/(1-β₁)·m²/c₁)::

        G  = ±g (+ λW, Adam)          dm = (G - m)·(1-β₁)      dv = G²·(1-β₂) - v'·(1-β₂)
        dW = (m·(-η/c₁)) / (√v'/√c₂ + ε) - ηλ·W   (AdamW)      at c = 0: m → G, √v'/√c₂ → |G|

    No N-sized temporary but G (only under maximize or Adam's coupled decay): v', then the
    denominator and dW live in ``out[0]``; ``out[1]`` is the workspace until dm is written
    last. 15 passes over memory for AdamW. Clocks given as numbers choose the c = 0 limit on
    the host. Clocks given as 0-d tensors stay on the device (no host read): the limit is
    selected by ``torch.lerp`` with weight [c = 0] (3 more passes), which returns exactly
    one operand when the other is finite; where the unused operand is non-finite (g at
    c > 0, m or v at c = 0) dW is NaN there, and at c₁ = 0 dv where m is (floor factor 0:
    0·m²); the reference selects with torch.where, a scalar loop ~5× the cost of a pass
    here. Bit for bit the reference otherwise; low-precision W or g: the reference itself."""
    dt = m.dtype
    if w.dtype != dt or g.dtype != dt:
        return reference.adam_field(w, m, v, c1, c2, g, lr=lr, beta1=beta1, beta2=beta2,
                                    eps=eps, weight_decay=weight_decay, decoupled=decoupled,
                                    maximize=maximize, out=out)
    dw, dm, dv = out if out is not None else (torch.empty_like(m) for _ in range(3))
    G = _effective_gradient(w, g, weight_decay, decoupled, maximize)
    k = _coefficients(c1, c2, lr=lr, beta1=beta1, beta2=beta2, dtype=dt)
    if k["floor"] is None:  # v' = max(v, floor) into dw
        torch.clamp(v, min=0.0, out=dw)
    else:
        torch.maximum(v, torch.mul(m, m, out=dw).mul_(k["floor"]), out=dw)
    torch.mul(G, G, out=dv).mul_(1 - beta2).sub_(torch.mul(dw, 1 - beta2, out=dm))
    if k["on"] is False:  # c = 0 (numbers): the limits m/c₁ → G, √(v/c₂) → |G|
        dw.copy_(G).abs_()
        torch.mul(G, -lr, out=dm)
    elif k["on"]:
        torch.sqrt(dw, out=dw).div_(k["sqrt_c2"])
        torch.mul(m, k["coef"], out=dm)
    else:  # device clocks: lerp with weight off = [c = 0] picks one operand
        torch.lerp(torch.sqrt(dw, out=dw).div_(k["sqrt_c2"]), G, k["off"], out=dw).abs_()
        torch.lerp(m, G, k["off"], out=dm).mul_(k["coef"])
    torch.div(dm, dw.add_(eps), out=dw)
    if decoupled and weight_decay:
        dw.sub_(torch.mul(w, lr * weight_decay, out=dm))
    torch.sub(G, m, out=dm).mul_(1 - beta1)
    if isinstance(c1, torch.Tensor):
        return dw, dm, dv, (1 - c1.double()) * (1 - beta1), (1 - c2.double()) * (1 - beta2)
    return dw, dm, dv, (1 - c1) * (1 - beta1), (1 - c2) * (1 - beta2)


def _effective_gradient(w, g, weight_decay, decoupled, maximize):
    """G = -g under maximize, + λW for Adam's coupled decay (``Flow.effective_gradient``'s
    ops): g itself when neither applies."""
    G = torch.neg(g) if maximize else g
    if weight_decay and not decoupled:
        G = G.add_(w, alpha=weight_decay) if maximize else g.add(w, alpha=weight_decay)
    return G


def _coefficients(c1, c2, *, lr, beta1, beta2, dtype) -> dict:
    """The field's scalars as the reference computes them from 0-d float64 clocks
    (``_BiasCorrected``, ``Adam.moment_floor``; ``x / t`` of a tensor t is
    ``t.reciprocal() * x``): coef = -η/c₁, √c₂, the floor factor (1-β₂)/((1-β₁)c₁) (None:
    no floor, v' = max(v, 0)). ``on`` (c₁, c₂ > 0): a bool for clocks given as numbers
    (Python numbers come back); None for 0-d tensors (0-d tensors of ``dtype`` come back,
    with off = [c = 0], coef = -η and √c₂ = 1 at c = 0, the floor factor 0 at c₁ = 0)."""
    if not isinstance(c1, torch.Tensor):
        c1, c2 = float(c1), float(c2)
        on = c1 > 0 and c2 > 0
        floor = (1.0 / ((1 - beta1) * c1)) * (1 - beta2) if c1 > 0 and beta1 <= beta2 else None
        return dict(on=on, floor=floor, coef=(1.0 / c1) * -lr if on else None,
                    sqrt_c2=math.sqrt(c2) if on else None)
    C1, C2 = c1.to(torch.float64), c2.to(torch.float64)
    on = (C1 > 0) & (C2 > 0)
    k = dict(on=None, floor=None, off=(~on).to(dtype),
             coef=(-lr / torch.where(on, C1, 1.0)).to(dtype),
             sqrt_c2=torch.where(on, C2, 1.0).sqrt_().to(dtype))
    if beta1 <= beta2:
        pos = C1 > 0
        k["floor"] = torch.where(pos, (1 - beta2) / ((1 - beta1) * torch.where(pos, C1, 1.0)),
                                 0.0).to(dtype)
    return k
