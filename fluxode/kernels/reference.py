"""Reference kernels: plain torch ops in exactly torch.optim's single-tensor order.

These are the numerical definition that the fused CPU path and the Triton kernels are
tested against. Buffers are flat 1-D. When W is bfloat16 the update is computed on a
float32 copy of W (states are float32) and rounded back to bfloat16 once, round to
nearest even ("fp32 master math, one rounding per step").

Adam / AdamW discrete step k (k >= 1, torch.optim order)::

    g  <- -g                      if maximize
    W  <- W (1 - lr*wd)           AdamW (decoupled)        | g <- g + wd*W   Adam (coupled)
    m  <- lerp(m, g, 1-b1)        v <- b2*v + (1-b2) g*g
    vmax <- max(vmax, v)          (amsgrad; v below then means vmax)
    W  <- W - (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps),  bc_i = 1 - b_i**k (Python double)

RMSprop step (torch.optim order)::

    g <- -g (maximize);  g <- g + wd*W
    s <- alpha*s + (1-alpha) g*g
    centered: a <- lerp(a, g, 1-alpha);  d = sqrt(s - a*a) + eps   else d = sqrt(s) + eps
    momentum > 0: b <- mu*b + g/d;  W <- W - lr*b      else W <- W - lr*g/d

Adam-family vector field on the step clock (tau = step count), see DESIGN.md section 2::

    m' = (1-b1)(g - m)            v' = (1-b2)(g^2 - v)
    c1' = (1-b1)(1 - c1)          c2' = (1-b2)(1 - c2)
    W' = -lr [ (m/c1) / (sqrt(v/c2) + eps) + wd_dec W ]
    coupled (Adam): g <- g + wd W before everything; decoupled (AdamW): wd_dec = wd.
    At c1 = 0 (resp. c2 = 0) the 0/0 quotient is replaced by its limit g (resp. g^2).
"""

from __future__ import annotations

from typing import Any

import torch

from ._checks import state_dtype_for


def _master(w: torch.Tensor) -> torch.Tensor:
    return w if w.dtype != torch.bfloat16 else w.float()


def adam_step_(w: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, *,
               step: int, lr: float, beta1: float, beta2: float, eps: float,
               weight_decay: float, decoupled: bool, amsgrad: bool,
               vmax: torch.Tensor | None, maximize: bool) -> None:
    """One Adam (decoupled=False) or AdamW (decoupled=True) step, in place."""
    p = _master(w)
    grad = -g if maximize else g
    if weight_decay != 0:
        if decoupled:
            p.mul_(1 - lr * weight_decay)
        else:
            grad = grad.add(p, alpha=weight_decay)
    m.lerp_(grad, 1 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5
    if amsgrad:
        torch.maximum(vmax, v, out=vmax)
        denom = (vmax.sqrt() / bias_correction2_sqrt).add_(eps)
    else:
        denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)
    p.addcdiv_(m, denom, value=-step_size)
    if p is not w:
        w.copy_(p)


def rmsprop_step_(w: torch.Tensor, g: torch.Tensor, square_avg: torch.Tensor, *,
                  lr: float, alpha: float, eps: float, weight_decay: float, momentum: float,
                  centered: bool, grad_avg: torch.Tensor | None,
                  momentum_buf: torch.Tensor | None, maximize: bool) -> None:
    """One RMSprop step (plain, centered, momentum, weight decay), in place."""
    p = _master(w)
    grad = -g if maximize else g
    if weight_decay != 0:
        grad = grad.add(p, alpha=weight_decay)
    square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
    if centered:
        grad_avg.lerp_(grad, 1 - alpha)
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
    else:
        avg = square_avg.sqrt()
    avg = avg.add_(eps)
    if momentum > 0:
        momentum_buf.mul_(momentum).addcdiv_(grad, avg)
        p.add_(momentum_buf, alpha=-lr)
    else:
        p.addcdiv_(grad, avg, value=-lr)
    if p is not w:
        w.copy_(p)


def adam_field(w: torch.Tensor, m: torch.Tensor, v: torch.Tensor, c1: float, c2: float,
               g: torch.Tensor, *, lr: float, beta1: float, beta2: float, eps: float,
               weight_decay: float, decoupled: bool, maximize: bool,
               out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any, Any]:
    """(dW, dm, dv, dc1, dc2) of the Adam/AdamW step-clock field; dW is in the state dtype.

    Op order (the fused kernels follow it bit for bit; no fused multiply-adds)::

        g  = -g (maximize);  g = g + (W*wd) (coupled)
        dm = (g - m)*(1-b1);   dv = (g*g - v)*(1-b2)
        u  = (m/c1) / (sqrt(v/c2) + eps)        (m/c1 -> g at c1 = 0, v/c2 -> g*g at c2 = 0)
        dW = (u + W*wd) * (-lr)                 (decoupled; coupled: dW = u * (-lr))
    """
    sdt = state_dtype_for(w)
    wf = w.to(sdt)
    grad = -g if maximize else g
    if weight_decay != 0 and not decoupled:
        grad = grad + wf * weight_decay
    gg = grad * grad
    dm = (grad - m) * (1 - beta1)
    dv = (gg - v) * (1 - beta2)
    mhat = grad if c1 == 0 else m / c1
    vhat = gg if c2 == 0 else v / c2
    u = mhat / (vhat.sqrt() + eps)
    if weight_decay != 0 and decoupled:
        u = u + wf * weight_decay
    dw = u * (-lr)
    if out is not None:
        for o, r in zip(out, (dw, dm, dv)):
            o.copy_(r)
        dw, dm, dv = out
    dc1 = (1 - beta1) * (1 - c1)
    dc2 = (1 - beta2) * (1 - c2)
    return dw, dm, dv, dc1, dc2
