"""Triton kernels: one pass over flat buffers per Adam/AdamW/RMSprop step or field evaluation.

Each kernel reads every buffer once and writes each updated buffer once (Adam fp32:
read W, g, m, v and write W, m, v = 28 bytes/parameter). The arithmetic follows
torch.optim's CPU single-tensor kernels operation by operation, so the results agree
bit for bit where rounding allows: fused multiply-adds are written out with ``tl.fma``
exactly where torch's CPU kernels use them (``add(alpha=)``, ``lerp``, ``addcmul``),
every other multiply/add is kept separate (kernels are launched with
``enable_fp_fusion=False``), and divisions and square roots are the correctly rounded
``tl.div_rn`` / ``tl.sqrt_rn``. bfloat16 W is loaded to float32, updated, and stored with
round-to-nearest-even.

Kernels have no autotuning, so they also run on CPU tensors under ``TRITON_INTERPRET=1``
(set it before this module is imported). Only float32 states are supported here
(W float32 or bfloat16); float64 goes through the reference or CPU path.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

DEFAULT_BLOCK = 2048
DEFAULT_WARPS = 8


def _f32(x: float) -> float:
    """Round a Python double to the float32 value torch would use for a scalar operand."""
    return float(np.float32(x))


def _lerp_coeff(weight: float) -> tuple[float, bool]:
    """torch's lerp(start, end, w) = fma(w, end-start, start) if |w| < 0.5
    else fma(w-1, end-start, end); returns (coefficient, use_end_as_base)."""
    w = np.float32(weight)
    if abs(w) < np.float32(0.5):
        return float(w), False
    return float(w - np.float32(1.0)), True


@triton.jit
def _adam_kernel(W, G, M, V, VMAX, n, decay_mul, wd, lerp_coeff, b2, one_minus_b2,
                 neg_step_size, bc2_sqrt, eps,
                 W_BF16: tl.constexpr, HAS_WD: tl.constexpr, DECOUPLED: tl.constexpr,
                 AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr, LERP_BIG: tl.constexpr,
                 BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0)
    m = tl.load(M + offs, mask=mask, other=0.0)
    v = tl.load(V + offs, mask=mask, other=0.0)
    if MAXIMIZE:
        g = -g
    if HAS_WD:
        if DECOUPLED:
            w = w * decay_mul                      # p.mul_(1 - lr*wd)
        else:
            g = tl.fma(w, wd, g)                   # grad.add(p, alpha=wd)
    d = g - m                                      # m.lerp_(g, 1-b1)
    if LERP_BIG:
        m = tl.fma(lerp_coeff, d, g)
    else:
        m = tl.fma(lerp_coeff, d, m)
    v = v * b2                                     # v.mul_(b2).addcmul_(g, g, 1-b2)
    v = tl.fma(one_minus_b2 * g, g, v)
    tl.store(M + offs, m, mask=mask)
    tl.store(V + offs, v, mask=mask)
    if AMSGRAD:
        vmax = tl.load(VMAX + offs, mask=mask, other=0.0)
        vmax = tl.maximum(vmax, v, propagate_nan=tl.PropagateNan.ALL)
        tl.store(VMAX + offs, vmax, mask=mask)
        v = vmax
    denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
    w = w + tl.div_rn(neg_step_size * m, denom)   # p.addcdiv_(m, denom, -lr/bc1)
    if W_BF16:
        tl.store(W + offs, w.to(tl.bfloat16, fp_downcast_rounding="rtne"), mask=mask)
    else:
        tl.store(W + offs, w, mask=mask)


@triton.jit
def _rmsprop_kernel(W, G, S, A, B, n, wd, alpha, one_minus_alpha, lerp_coeff, eps, mom, neg_lr,
                    W_BF16: tl.constexpr, HAS_WD: tl.constexpr, CENTERED: tl.constexpr,
                    MOMENTUM: tl.constexpr, MAXIMIZE: tl.constexpr, LERP_BIG: tl.constexpr,
                    BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0)
    s = tl.load(S + offs, mask=mask, other=0.0)
    if MAXIMIZE:
        g = -g
    if HAS_WD:
        g = tl.fma(w, wd, g)
    s = s * alpha
    s = tl.fma(one_minus_alpha * g, g, s)
    tl.store(S + offs, s, mask=mask)
    if CENTERED:
        a = tl.load(A + offs, mask=mask, other=0.0)
        d = g - a
        if LERP_BIG:
            a = tl.fma(lerp_coeff, d, g)
        else:
            a = tl.fma(lerp_coeff, d, a)
        tl.store(A + offs, a, mask=mask)
        avg = tl.sqrt_rn(tl.fma(-a, a, s))
    else:
        avg = tl.sqrt_rn(s)
    avg = avg + eps
    if MOMENTUM:
        b = tl.load(B + offs, mask=mask, other=0.0)
        b = b * mom + tl.div_rn(g, avg)
        tl.store(B + offs, b, mask=mask)
        w = tl.fma(b, neg_lr, w)
    else:
        w = w + tl.div_rn(neg_lr * g, avg)
    if W_BF16:
        tl.store(W + offs, w.to(tl.bfloat16, fp_downcast_rounding="rtne"), mask=mask)
    else:
        tl.store(W + offs, w, mask=mask)


@triton.jit
def _adam_field_kernel(W, M, V, G, DW, DM, DV, n, wd, one_minus_b1, one_minus_b2, floor_coef,
                       coef, sqrt_c2, eps, lam_lr, HAS_WD: tl.constexpr,
                       DECOUPLED: tl.constexpr, MAXIMIZE: tl.constexpr, C_ZERO: tl.constexpr,
                       HAS_FLOOR: tl.constexpr, BLOCK: tl.constexpr):
    """The Adam flow's field in the core's op order (``fluxode.flows.adam``), at the
    admissible state v ← max(v, floor)."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    m = tl.load(M + offs, mask=mask, other=0.0)
    v = tl.load(V + offs, mask=mask, other=0.0)
    g = tl.load(G + offs, mask=mask, other=0.0)
    if HAS_FLOOR:
        v = tl.maximum(v, (m * m) * floor_coef)
    else:
        v = tl.maximum(v, 0.0)
    if MAXIMIZE:
        g = -g
    if HAS_WD:
        if not DECOUPLED:
            g = tl.fma(w, wd, g)
    tl.store(DM + offs, (g - m) * one_minus_b1, mask=mask)
    tl.store(DV + offs, (g * g) * one_minus_b2 - v * one_minus_b2, mask=mask)
    if C_ZERO:
        dw = tl.div_rn(g * coef, tl.abs(g) + eps)
    else:
        dw = tl.div_rn(m * coef, tl.div_rn(tl.sqrt_rn(v), sqrt_c2) + eps)
    if HAS_WD:
        if DECOUPLED:
            dw = dw - w * lam_lr
    tl.store(DW + offs, dw, mask=mask)


def _grid(n: int, block: int):
    return (triton.cdiv(n, block),)


def _check_f32(w: torch.Tensor) -> None:
    if w.dtype == torch.float64:
        raise ValueError("W.dtype float64 is not supported by the Triton kernels "
                         "(allowed: float32, bfloat16); use backend='reference'")


def adam_step_(w, g, m, v, *, step, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad,
               vmax, maximize, block: int = DEFAULT_BLOCK, num_warps: int = DEFAULT_WARPS):
    """Triton Adam/AdamW step (see ``fluxode.kernels.reference.adam_step_`` for the math)."""
    _check_f32(w)
    n = w.numel()
    if n == 0:
        return
    bc1 = 1 - beta1**step
    bc2 = 1 - beta2**step
    coeff, big = _lerp_coeff(1 - beta1)
    _adam_kernel[_grid(n, block)](
        w, g, m, v, vmax if amsgrad else v, n,
        _f32(1 - lr * weight_decay), _f32(weight_decay), coeff, _f32(beta2), _f32(1 - beta2),
        _f32(-(lr / bc1)), _f32(bc2**0.5), _f32(eps),
        W_BF16=w.dtype == torch.bfloat16, HAS_WD=weight_decay != 0, DECOUPLED=bool(decoupled),
        AMSGRAD=bool(amsgrad), MAXIMIZE=bool(maximize), LERP_BIG=big, BLOCK=block,
        num_warps=num_warps, enable_fp_fusion=False)


def rmsprop_step_(w, g, square_avg, *, lr, alpha, eps, weight_decay, momentum, centered,
                  grad_avg, momentum_buf, maximize, block: int = DEFAULT_BLOCK,
                  num_warps: int = DEFAULT_WARPS):
    """Triton RMSprop step (see ``fluxode.kernels.reference.rmsprop_step_`` for the math)."""
    _check_f32(w)
    n = w.numel()
    if n == 0:
        return
    coeff, big = _lerp_coeff(1 - alpha)
    _rmsprop_kernel[_grid(n, block)](
        w, g, square_avg, grad_avg if centered else square_avg,
        momentum_buf if momentum > 0 else square_avg, n,
        _f32(weight_decay), _f32(alpha), _f32(1 - alpha), coeff, _f32(eps), _f32(momentum),
        _f32(-lr),
        W_BF16=w.dtype == torch.bfloat16, HAS_WD=weight_decay != 0, CENTERED=bool(centered),
        MOMENTUM=momentum > 0, MAXIMIZE=bool(maximize), LERP_BIG=big, BLOCK=block,
        num_warps=num_warps, enable_fp_fusion=False)


def adam_field(w, m, v, c1, c2, g, *, lr, beta1, beta2, eps, weight_decay, decoupled, maximize,
               out, block: int = DEFAULT_BLOCK, num_warps: int = DEFAULT_WARPS):
    """Triton Adam/AdamW field, the core flow's field (``fluxode.discretize.vector_field``)
    in one pass."""
    _check_f32(w)
    dw, dm, dv = out if out is not None else (torch.empty_like(m), torch.empty_like(m),
                                              torch.empty_like(m))
    n = w.numel()
    zero = c1 == 0 or c2 == 0
    floor = not (beta1 > beta2 or c1 <= 0)
    if n:
        _adam_field_kernel[_grid(n, block)](
            w, m, v, g, dw, dm, dv, n, _f32(weight_decay), _f32(1 - beta1), _f32(1 - beta2),
            _f32((1 - beta2) / ((1 - beta1) * c1)) if floor else 0.0,
            _f32(-lr) if zero else _f32(-(lr / c1)), 1.0 if zero else _f32(c2 ** 0.5),
            _f32(eps), _f32(lr * weight_decay),
            HAS_WD=weight_decay != 0, DECOUPLED=bool(decoupled), MAXIMIZE=bool(maximize),
            C_ZERO=zero, HAS_FLOOR=floor, BLOCK=block, num_warps=num_warps,
            enable_fp_fusion=False)
    return dw, dm, dv, (1 - c1) * (1 - beta1), (1 - c2) * (1 - beta2)


@triton.jit
def _copy_kernel(SRC, DST, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(DST + offs, tl.load(SRC + offs, mask=mask), mask=mask)


def copy_(dst: torch.Tensor, src: torch.Tensor, block: int = DEFAULT_BLOCK,
          num_warps: int = DEFAULT_WARPS) -> None:
    """Plain copy kernel (the bandwidth yardstick for the benchmarks)."""
    n = src.numel()
    _copy_kernel[_grid(n, block)](src, dst, n, BLOCK=block, num_warps=num_warps)
