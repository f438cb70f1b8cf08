"""Triton kernels: one pass over flat buffers per Adam/AdamW/RMSprop step or field evaluation.

Each kernel reads every buffer once and writes each updated buffer once (Adam fp32:
read W, g, m, v and write W, m, v = 28 bytes/parameter). The arithmetic follows
torch.optim's CPU single-tensor kernels operation by operation, so the results agree
bit for bit where rounding allows: fused multiply-adds are written out with ``tl.fma``
exactly where torch's CPU kernels use them (``add(alpha=)``, ``lerp``, ``addcmul``),
every other multiply/add is kept separate (kernels are launched with
``enable_fp_fusion=False``), and divisions and square roots are the correctly rounded
``tl.div_rn`` / ``tl.sqrt_rn``. Every buffer may be float32, bfloat16 or float16 (W and the
states separately): it is loaded to float32, updated in float32, and stored with one
round-to-nearest-even (``_store``).

Multi-tensor steps (``adam_group_step_``, ``rmsprop_group_step_``) launch once per dtype
combination over a list of tensors through a cached pointer table (see below).

Kernels have no autotuning, so they also run on CPU tensors under ``TRITON_INTERPRET=1``
(set it before this module is imported). float64 goes through the reference or CPU path.
"""

from __future__ import annotations

from collections import OrderedDict

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


# --- rounding and shared arithmetic (jit helpers, inlined into every kernel) -------------------

KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
"""Buffer dtype → the constexpr code the kernels store with (compute is always float32)."""


@triton.jit
def _bf16_rne(x):
    """float32 → bfloat16, round to nearest even, by integer arithmetic on the bits (NaN stays
    a quiet NaN, overflow rounds to ±inf). Written out rather than ``x.to(tl.bfloat16,
    fp_downcast_rounding="rtne")`` because the interpreter (TRITON_INTERPRET=1) truncates that
    cast: this way the kernel checked on CPU is the kernel run on the GPU."""
    bits = x.to(tl.uint32, bitcast=True)
    r = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    r = tl.where(x != x, (bits >> 16) | 0x40, r)
    return r.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _store(ptr, x, mask, KIND: tl.constexpr, MASKED: tl.constexpr = True):
    """Store float32 ``x`` into a buffer of dtype code KIND (0 f32, 1 bf16, 2 f16), rounding
    to nearest even once (MASKED=False: a full block, no mask, so loads/stores vectorize)."""
    if KIND == 1:
        y = _bf16_rne(x)
    elif KIND == 2:
        y = x.to(tl.float16)  # round to nearest even (also interpreted)
    else:
        y = x
    if MASKED:
        tl.store(ptr, y, mask=mask)
    else:
        tl.store(ptr, y)


@triton.jit
def _load(ptr, mask, MASKED: tl.constexpr = True):
    """Load a buffer (any float dtype) as float32."""
    if MASKED:
        x = tl.load(ptr, mask=mask, other=0.0)
    else:
        x = tl.load(ptr)
    return x.to(tl.float32)


@triton.jit
def _adam_denom(v, bc2_sqrt, eps):
    """torch's denom = (sqrt(v) / sqrt(1-β₂ᵏ)) + eps."""
    return tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps


@triton.jit
def _adam_math(w, g, m, v, vmax, decay_mul, wd, lerp_coeff, b2, one_minus_b2, neg_step_size,
               bc2_sqrt, eps, HAS_WD: tl.constexpr, DECOUPLED: tl.constexpr,
               AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr, LERP_BIG: tl.constexpr):
    """One Adam/AdamW step on float32 values, torch's single-tensor op order."""
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
    vhat = v
    if AMSGRAD:
        vmax = tl.maximum(vmax, v, propagate_nan=tl.PropagateNan.ALL)
        vhat = vmax
    denom = _adam_denom(vhat, bc2_sqrt, eps)
    w = w + tl.div_rn(neg_step_size * m, denom)   # p.addcdiv_(m, denom, -lr/bc1)
    return w, m, v, vmax


@triton.jit
def _rmsprop_math(w, g, s, a, b, wd, alpha, one_minus_alpha, lerp_coeff, eps, mom, neg_lr,
                  HAS_WD: tl.constexpr, CENTERED: tl.constexpr, MOMENTUM: tl.constexpr,
                  MAXIMIZE: tl.constexpr, LERP_BIG: tl.constexpr):
    """One RMSprop step on float32 values, torch's single-tensor op order."""
    if MAXIMIZE:
        g = -g
    if HAS_WD:
        g = tl.fma(w, wd, g)
    s = s * alpha
    s = tl.fma(one_minus_alpha * g, g, s)
    if CENTERED:
        d = g - a
        if LERP_BIG:
            a = tl.fma(lerp_coeff, d, g)
        else:
            a = tl.fma(lerp_coeff, d, a)
        avg = tl.sqrt_rn(tl.fma(-a, a, s))
    else:
        avg = tl.sqrt_rn(s)
    avg = avg + eps
    if MOMENTUM:
        b = b * mom + tl.div_rn(g, avg)
        w = tl.fma(b, neg_lr, w)
    else:
        w = w + tl.div_rn(neg_lr * g, avg)
    return w, s, a, b


@triton.jit
def _adam_apply(W, G, M, V, VMAX, offs, mask, decay_mul, wd, lerp_coeff, b2, one_minus_b2,
                neg_step_size, bc2_sqrt, eps, W_KIND: tl.constexpr, S_KIND: tl.constexpr,
                HAS_WD: tl.constexpr, DECOUPLED: tl.constexpr, AMSGRAD: tl.constexpr,
                MAXIMIZE: tl.constexpr, LERP_BIG: tl.constexpr, MASKED: tl.constexpr):
    """Load, step and store one block of an Adam tensor."""
    w = _load(W + offs, mask, MASKED)
    g = _load(G + offs, mask, MASKED)
    m = _load(M + offs, mask, MASKED)
    v = _load(V + offs, mask, MASKED)
    vmax = v
    if AMSGRAD:
        vmax = _load(VMAX + offs, mask, MASKED)
    w, m, v, vmax = _adam_math(w, g, m, v, vmax, decay_mul, wd, lerp_coeff, b2, one_minus_b2,
                               neg_step_size, bc2_sqrt, eps, HAS_WD, DECOUPLED, AMSGRAD,
                               MAXIMIZE, LERP_BIG)
    _store(M + offs, m, mask, S_KIND, MASKED)
    _store(V + offs, v, mask, S_KIND, MASKED)
    if AMSGRAD:
        _store(VMAX + offs, vmax, mask, S_KIND, MASKED)
    _store(W + offs, w, mask, W_KIND, MASKED)


@triton.jit
def _rmsprop_apply(W, G, S, A, B, offs, mask, wd, alpha, one_minus_alpha, lerp_coeff, eps, mom,
                   neg_lr, W_KIND: tl.constexpr, S_KIND: tl.constexpr, HAS_WD: tl.constexpr,
                   CENTERED: tl.constexpr, MOMENTUM: tl.constexpr, MAXIMIZE: tl.constexpr,
                   LERP_BIG: tl.constexpr, MASKED: tl.constexpr):
    """Load, step and store one block of an RMSprop tensor."""
    w = _load(W + offs, mask, MASKED)
    g = _load(G + offs, mask, MASKED)
    s = _load(S + offs, mask, MASKED)
    a = s
    b = s
    if CENTERED:
        a = _load(A + offs, mask, MASKED)
    if MOMENTUM:
        b = _load(B + offs, mask, MASKED)
    w, s, a, b = _rmsprop_math(w, g, s, a, b, wd, alpha, one_minus_alpha, lerp_coeff, eps, mom,
                               neg_lr, HAS_WD, CENTERED, MOMENTUM, MAXIMIZE, LERP_BIG)
    _store(S + offs, s, mask, S_KIND, MASKED)
    if CENTERED:
        _store(A + offs, a, mask, S_KIND, MASKED)
    if MOMENTUM:
        _store(B + offs, b, mask, S_KIND, MASKED)
    _store(W + offs, w, mask, W_KIND, MASKED)


# --- single-tensor kernels (flat buffers) -----------------------------------------------------

@triton.jit
def _adam_kernel(W, G, M, V, VMAX, n, decay_mul, wd, lerp_coeff, b2, one_minus_b2,
                 neg_step_size, bc2_sqrt, eps,
                 W_KIND: tl.constexpr, S_KIND: tl.constexpr, HAS_WD: tl.constexpr,
                 DECOUPLED: tl.constexpr, AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr,
                 LERP_BIG: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    _adam_apply(W, G, M, V, VMAX, offs, offs < n, decay_mul, wd, lerp_coeff, b2, one_minus_b2,
                neg_step_size, bc2_sqrt, eps, W_KIND, S_KIND, HAS_WD, DECOUPLED, AMSGRAD,
                MAXIMIZE, LERP_BIG, True)


@triton.jit
def _rmsprop_kernel(W, G, S, A, B, n, wd, alpha, one_minus_alpha, lerp_coeff, eps, mom, neg_lr,
                    W_KIND: tl.constexpr, S_KIND: tl.constexpr, HAS_WD: tl.constexpr,
                    CENTERED: tl.constexpr, MOMENTUM: tl.constexpr, MAXIMIZE: tl.constexpr,
                    LERP_BIG: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    _rmsprop_apply(W, G, S, A, B, offs, offs < n, wd, alpha, one_minus_alpha, lerp_coeff, eps,
                   mom, neg_lr, W_KIND, S_KIND, HAS_WD, CENTERED, MOMENTUM, MAXIMIZE, LERP_BIG,
                   True)


@triton.jit
def _adam_field_kernel(W, M, V, G, DW, DM, DV, C1, C2, K, n, wd, one_minus_b1, one_minus_b2,
                       eps, lam_lr, HAS_WD: tl.constexpr, DECOUPLED: tl.constexpr,
                       MAXIMIZE: tl.constexpr, FLOOR_BETAS: tl.constexpr, O_KIND: tl.constexpr,
                       BLOCK: tl.constexpr):
    """The Adam flow's field in the core's op order (``fluxode.flows.adam``), at the
    admissible state v ← max(v, floor) (NaN propagates, as torch.maximum/clamp do).

    The clocks c₁, c₂ are read from the device (C1, C2: 0-d tensors) and the coefficients
    computed from them in float64, as the host computes them, then rounded to float32 once
    (K: float64 [lr, 1-β₁, 1-β₂]): -(lr/c₁), √c₂ and the floor (1-β₂)/((1-β₁)c₁) (when
    β₁ ≤ β₂, c₁ > 0); at c₁ = 0 or c₂ = 0 (τ = 0) the limits m/c₁ → g, √(v/c₂) → |g|. No
    host read of the clocks, no recompilation as they change."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    c1 = tl.load(C1).to(tl.float64)
    c2 = tl.load(C2).to(tl.float64)
    lr = tl.load(K)
    zero = (c1 == 0.0) | (c2 == 0.0)
    c1s = tl.where(zero, 1.0, c1)
    coef = tl.where(zero, -lr, -(lr / c1s)).to(tl.float32)
    sqrt_c2 = tl.where(zero, 1.0, tl.sqrt(tl.where(zero, 1.0, c2))).to(tl.float32)
    floor_on = c1 > 0.0
    if not FLOOR_BETAS:  # β₁ > β₂: no floor
        floor_on = floor_on & (c1 < 0.0)
    floor_coef = (tl.load(K + 2) / (tl.load(K + 1) * tl.where(floor_on, c1, 1.0))).to(tl.float32)
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    m = tl.load(M + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(V + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.maximum(v, tl.where(floor_on, (m * m) * floor_coef, 0.0),
                   propagate_nan=tl.PropagateNan.ALL)
    if MAXIMIZE:
        g = -g
    if HAS_WD:
        if not DECOUPLED:
            g = tl.fma(w, wd, g)
    _store(DM + offs, (g - m) * one_minus_b1, mask, O_KIND)
    _store(DV + offs, (g * g) * one_minus_b2 - v * one_minus_b2, mask, O_KIND)
    dw = tl.where(zero, tl.div_rn(g * coef, tl.abs(g) + eps),
                  tl.div_rn(m * coef, _adam_denom(v, sqrt_c2, eps)))
    if HAS_WD:
        if DECOUPLED:
            dw = dw - w * lam_lr
    _store(DW + offs, dw, mask, O_KIND)


# --- multi-tensor kernels: one launch over a list of tensors ----------------------------------
# The launch reads a pointer table PTR (int64 [K, T]: row k holds buffer k of each of the T
# tensors), their sizes, and a block table (tensor index, start offset) with one entry per
# program, so every program steps BLOCK elements of one tensor. The tables depend only on the
# tensors' addresses and sizes and are cached; nothing is concatenated. Per-tensor step counts
# (Adam's bias corrections) come as a float32 table SC [T, 2] when they differ.

@triton.jit
def _row(PTR, k, T, tid, WITNESS, ALIGNED: tl.constexpr):
    """Pointer to buffer k of tensor tid, typed like WITNESS (a pointer of the group's dtype);
    ALIGNED: every pointer of the table is 16-byte aligned (the host checked), so full blocks
    load and store in 16-byte vectors."""
    p = tl.load(PTR + k * T + tid).to(WITNESS.dtype)
    if ALIGNED:
        p = tl.multiple_of(p, 16)
    return p


@triton.jit
def _block(BT, BO, SIZES, BLOCK: tl.constexpr):
    """(tensor index, element offsets, mask, whether the block is full) of this program."""
    pid = tl.program_id(0)
    tid = tl.load(BT + pid)
    start = tl.multiple_of(tl.load(BO + pid), BLOCK)
    n = tl.load(SIZES + tid)
    offs = start + tl.arange(0, BLOCK)
    return tid, offs, offs < n, start + BLOCK <= n


@triton.jit
def _adam_group_kernel(PTR, SIZES, BT, BO, SC, T, W0, G0, S0, decay_mul, wd, lerp_coeff, b2,
                       one_minus_b2, neg_step_size, bc2_sqrt, eps,
                       W_KIND: tl.constexpr, S_KIND: tl.constexpr, HAS_WD: tl.constexpr,
                       DECOUPLED: tl.constexpr, AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr,
                       LERP_BIG: tl.constexpr, PER_TENSOR: tl.constexpr,
                       ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    tid, offs, mask, full = _block(BT, BO, SIZES, BLOCK)
    W, G = _row(PTR, 0, T, tid, W0, ALIGNED), _row(PTR, 1, T, tid, G0, ALIGNED)
    M, V = _row(PTR, 2, T, tid, S0, ALIGNED), _row(PTR, 3, T, tid, S0, ALIGNED)
    VMAX = V
    if AMSGRAD:
        VMAX = _row(PTR, 4, T, tid, S0, ALIGNED)
    if PER_TENSOR:
        neg_step_size = tl.load(SC + 2 * tid)
        bc2_sqrt = tl.load(SC + 2 * tid + 1)
    if full:
        _adam_apply(W, G, M, V, VMAX, offs, mask, decay_mul, wd, lerp_coeff, b2, one_minus_b2,
                    neg_step_size, bc2_sqrt, eps, W_KIND, S_KIND, HAS_WD, DECOUPLED, AMSGRAD,
                    MAXIMIZE, LERP_BIG, False)
    else:
        _adam_apply(W, G, M, V, VMAX, offs, mask, decay_mul, wd, lerp_coeff, b2, one_minus_b2,
                    neg_step_size, bc2_sqrt, eps, W_KIND, S_KIND, HAS_WD, DECOUPLED, AMSGRAD,
                    MAXIMIZE, LERP_BIG, True)


@triton.jit
def _rmsprop_group_kernel(PTR, SIZES, BT, BO, T, W0, G0, S0, wd, alpha, one_minus_alpha,
                          lerp_coeff, eps, mom, neg_lr,
                          W_KIND: tl.constexpr, S_KIND: tl.constexpr, HAS_WD: tl.constexpr,
                          CENTERED: tl.constexpr, MOMENTUM: tl.constexpr,
                          MAXIMIZE: tl.constexpr, LERP_BIG: tl.constexpr,
                          ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    tid, offs, mask, full = _block(BT, BO, SIZES, BLOCK)
    W, G = _row(PTR, 0, T, tid, W0, ALIGNED), _row(PTR, 1, T, tid, G0, ALIGNED)
    S = _row(PTR, 2, T, tid, S0, ALIGNED)
    A, B = S, S
    if CENTERED:
        A = _row(PTR, 3, T, tid, S0, ALIGNED)
    if MOMENTUM:
        B = _row(PTR, 4, T, tid, S0, ALIGNED)
    if full:
        _rmsprop_apply(W, G, S, A, B, offs, mask, wd, alpha, one_minus_alpha, lerp_coeff, eps,
                       mom, neg_lr, W_KIND, S_KIND, HAS_WD, CENTERED, MOMENTUM, MAXIMIZE,
                       LERP_BIG, False)
    else:
        _rmsprop_apply(W, G, S, A, B, offs, mask, wd, alpha, one_minus_alpha, lerp_coeff, eps,
                       mom, neg_lr, W_KIND, S_KIND, HAS_WD, CENTERED, MOMENTUM, MAXIMIZE,
                       LERP_BIG, True)


# --- host side --------------------------------------------------------------------------------

def _grid(n: int, block: int):
    return (triton.cdiv(n, block),)


def _kind(t: torch.Tensor, what: str) -> int:
    if t.dtype not in KIND:
        raise ValueError(f"{what}.dtype {t.dtype} is not supported by the Triton kernels "
                         "(allowed: float32, bfloat16, float16); use backend='reference'")
    return KIND[t.dtype]


def _adam_scalars(step, lr, beta1, beta2) -> tuple[float, float]:
    """(-(lr/bc1), sqrt(bc2)) as float32 values, torch's bias corrections at step k."""
    bc1 = 1 - beta1**step
    bc2 = 1 - beta2**step
    return _f32(-(lr / bc1)), _f32(bc2**0.5)


def adam_step_(w, g, m, v, *, step, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad,
               vmax, maximize, block: int = DEFAULT_BLOCK, num_warps: int = DEFAULT_WARPS):
    """Triton Adam/AdamW step (see ``fluxode.kernels.reference.adam_step_`` for the math)."""
    wk, sk = _kind(w, "W"), _kind(m, "m")
    _kind(g, "g")
    n = w.numel()
    if n == 0:
        return
    nss, bc2s = _adam_scalars(step, lr, beta1, beta2)
    coeff, big = _lerp_coeff(1 - beta1)
    _adam_kernel[_grid(n, block)](
        w, g, m, v, vmax if amsgrad else v, n,
        _f32(1 - lr * weight_decay), _f32(weight_decay), coeff, _f32(beta2), _f32(1 - beta2),
        nss, bc2s, _f32(eps),
        W_KIND=wk, S_KIND=sk, HAS_WD=weight_decay != 0, DECOUPLED=bool(decoupled),
        AMSGRAD=bool(amsgrad), MAXIMIZE=bool(maximize), LERP_BIG=big, BLOCK=block,
        num_warps=num_warps, enable_fp_fusion=False)


def rmsprop_step_(w, g, square_avg, *, lr, alpha, eps, weight_decay, momentum, centered,
                  grad_avg, momentum_buf, maximize, block: int = DEFAULT_BLOCK,
                  num_warps: int = DEFAULT_WARPS):
    """Triton RMSprop step (see ``fluxode.kernels.reference.rmsprop_step_`` for the math)."""
    wk, sk = _kind(w, "W"), _kind(square_avg, "square_avg")
    _kind(g, "g")
    n = w.numel()
    if n == 0:
        return
    coeff, big = _lerp_coeff(1 - alpha)
    _rmsprop_kernel[_grid(n, block)](
        w, g, square_avg, grad_avg if centered else square_avg,
        momentum_buf if momentum > 0 else square_avg, n,
        _f32(weight_decay), _f32(alpha), _f32(1 - alpha), coeff, _f32(eps), _f32(momentum),
        _f32(-lr),
        W_KIND=wk, S_KIND=sk, HAS_WD=weight_decay != 0, CENTERED=bool(centered),
        MOMENTUM=momentum > 0, MAXIMIZE=bool(maximize), LERP_BIG=big, BLOCK=block,
        num_warps=num_warps, enable_fp_fusion=False)


def adam_field(w, m, v, c1, c2, g, *, lr, beta1, beta2, eps, weight_decay, decoupled, maximize,
               out, block: int = DEFAULT_BLOCK, num_warps: int = DEFAULT_WARPS):
    """Triton Adam/AdamW field, the core flow's field (``fluxode.discretize.vector_field``)
    in one pass."""
    for t, name in ((w, "W"), (m, "m"), (v, "v"), (g, "g")):
        _kind(t, name)
    dw, dm, dv = out if out is not None else (torch.empty_like(m), torch.empty_like(m),
                                              torch.empty_like(m))
    ok = _kind(dw, "out[0]")
    if dm.dtype != dw.dtype or dv.dtype != dw.dtype:
        raise ValueError("the field's out buffers must share one dtype")
    n = w.numel()
    C1, C2 = (c if isinstance(c, torch.Tensor) else torch.tensor(c, dtype=torch.float64,
                                                                 device=w.device)
              for c in (c1, c2))
    if n:
        _adam_field_kernel[_grid(n, block)](
            w, m, v, g, dw, dm, dv, C1, C2, _constants(w.device, lr, beta1, beta2), n,
            _f32(weight_decay), _f32(1 - beta1), _f32(1 - beta2), _f32(eps),
            _f32(lr * weight_decay),
            HAS_WD=weight_decay != 0, DECOUPLED=bool(decoupled), MAXIMIZE=bool(maximize),
            FLOOR_BETAS=not beta1 > beta2, O_KIND=ok, BLOCK=block, num_warps=num_warps,
            enable_fp_fusion=False)
    return dw, dm, dv, (1 - c1) * (1 - beta1), (1 - c2) * (1 - beta2)


_CONSTANTS: OrderedDict = OrderedDict()


def _constants(device, lr: float, beta1: float, beta2: float) -> torch.Tensor:
    """float64 [lr, 1-β₁, 1-β₂] on the device (cached: copied there once per value)."""
    key = (str(device), lr, beta1, beta2)
    t = _CONSTANTS.get(key)
    if t is None:
        t = _CONSTANTS[key] = torch.tensor([lr, 1 - beta1, 1 - beta2], dtype=torch.float64,
                                           device=device)
        if len(_CONSTANTS) > TABLE_CACHE_SIZE:
            _CONSTANTS.popitem(last=False)
    return t


_TABLE_CACHE: OrderedDict = OrderedDict()
TABLE_CACHE_SIZE = 16


def _tables(rows: list, block: int):
    """(PTR int64 [K, T], SIZES int64 [T], BT int32 [P], BO int64 [P], aligned) on the
    tensors' device for the buffer lists ``rows`` (K lists of T tensors; rows[0] is W),
    cached by addresses and sizes (so a cached table is exactly right whenever its key
    matches); ``aligned``: every address is a multiple of 16 bytes."""
    sizes = tuple(t.numel() for t in rows[0])
    ptrs = tuple(tuple(t.data_ptr() for t in r) for r in rows)
    dev = rows[0][0].device
    key = (dev, block, sizes, ptrs)
    hit = _TABLE_CACHE.get(key)
    if hit is not None:
        _TABLE_CACHE.move_to_end(key)
        return hit
    bt, bo = [], []
    for i, n in enumerate(sizes):
        starts = range(0, n, block)
        bt.extend([i] * len(starts))
        bo.extend(starts)
    tabs = (torch.tensor(ptrs, dtype=torch.int64).to(dev),
            torch.tensor(sizes, dtype=torch.int64).to(dev),
            torch.tensor(bt, dtype=torch.int32).to(dev),
            torch.tensor(bo, dtype=torch.int64).to(dev),
            all(p % 16 == 0 for r in ptrs for p in r))
    _TABLE_CACHE[key] = tabs
    while len(_TABLE_CACHE) > TABLE_CACHE_SIZE:
        _TABLE_CACHE.popitem(last=False)
    return tabs


def _to_device(values: list[float], dev: torch.device) -> torch.Tensor:
    """A small float32 table on ``dev`` without a host sync (pinned, asynchronous copy)."""
    t = torch.tensor(values, dtype=torch.float32)
    if dev.type == "cuda":
        return t.pin_memory().to(dev, non_blocking=True)
    return t


def adam_group_step_(ws, gs, ms, vs, *, steps, lr, beta1, beta2, eps, weight_decay, decoupled,
                     amsgrad, vmaxs, maximize, block: int = DEFAULT_BLOCK,
                     num_warps: int = DEFAULT_WARPS):
    """Adam/AdamW over a list of tensors of one dtype combination, each at its own step count:
    ONE launch (pointer table + block table, no concatenation)."""
    keep = [i for i, w in enumerate(ws) if w.numel()]
    if not keep:
        return
    if len(keep) < len(ws):
        ws, gs, ms, vs, steps = ([L[i] for i in keep] for L in (ws, gs, ms, vs, steps))
        vmaxs = [vmaxs[i] for i in keep] if amsgrad else None
    wk, sk = _kind(ws[0], "W"), _kind(ms[0], "m")
    _kind(gs[0], "g")
    coeff, big = _lerp_coeff(1 - beta1)
    rows = [ws, gs, ms, vs] + ([vmaxs] if amsgrad else [])
    PTR, SIZES, BT, BO, aligned = _tables(rows, block)
    per_tensor = any(k != steps[0] for k in steps)
    nss, bc2s = _adam_scalars(steps[0], lr, beta1, beta2)
    sc = SIZES  # not read unless PER_TENSOR
    if per_tensor:
        sc = _to_device([x for k in steps for x in _adam_scalars(k, lr, beta1, beta2)],
                        ws[0].device)
    _adam_group_kernel[(BT.numel(),)](
        PTR, SIZES, BT, BO, sc, len(ws), ws[0], gs[0], ms[0],
        _f32(1 - lr * weight_decay), _f32(weight_decay), coeff, _f32(beta2),
        _f32(1 - beta2), nss, bc2s, _f32(eps),
        W_KIND=wk, S_KIND=sk, HAS_WD=weight_decay != 0, DECOUPLED=bool(decoupled),
        AMSGRAD=bool(amsgrad), MAXIMIZE=bool(maximize), LERP_BIG=big,
        PER_TENSOR=per_tensor, ALIGNED=aligned, BLOCK=block, num_warps=num_warps,
        enable_fp_fusion=False)


def rmsprop_group_step_(ws, gs, ss, *, lr, alpha, eps, weight_decay, momentum, centered,
                        grad_avgs, momentum_bufs, maximize, block: int = DEFAULT_BLOCK,
                        num_warps: int = DEFAULT_WARPS):
    """RMSprop over a list of tensors of one dtype combination: ONE launch."""
    keep = [i for i, w in enumerate(ws) if w.numel()]
    if not keep:
        return
    pick = (lambda L: L if len(keep) == len(ws) else [L[i] for i in keep])  # noqa: E731
    wk, sk = _kind(ws[0], "W"), _kind(ss[0], "square_avg")
    _kind(gs[0], "g")
    coeff, big = _lerp_coeff(1 - alpha)
    rows = [pick(ws), pick(gs), pick(ss)]
    rows.append(pick(grad_avgs) if centered else rows[2])
    rows.append(pick(momentum_bufs) if momentum > 0 else rows[2])
    PTR, SIZES, BT, BO, aligned = _tables(rows, block)
    _rmsprop_group_kernel[(BT.numel(),)](
        PTR, SIZES, BT, BO, len(rows[0]), rows[0][0], rows[1][0], rows[2][0],
        _f32(weight_decay), _f32(alpha), _f32(1 - alpha), coeff, _f32(eps), _f32(momentum),
        _f32(-lr),
        W_KIND=wk, S_KIND=sk, HAS_WD=weight_decay != 0, CENTERED=bool(centered),
        MOMENTUM=momentum > 0, MAXIMIZE=bool(maximize), LERP_BIG=big, ALIGNED=aligned,
        BLOCK=block, num_warps=num_warps, enable_fp_fusion=False)


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
