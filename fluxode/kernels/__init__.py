"""Fused Adam-family kernels over flat 1-D buffers.

Public entry points (all in place except the field)::

    adam_step_(W, g, m, v, *, step, lr, betas, eps, weight_decay, decoupled, amsgrad, vmax,
               maximize, backend)
    rmsprop_step_(W, g, square_avg, *, lr, alpha, eps, weight_decay, momentum, centered,
                  grad_avg, momentum_buf, maximize, backend)
    adam_field(W, m, v, c1, c2, g, *, lr, betas, eps, weight_decay, decoupled, maximize, out,
               backend) -> (dW, dm, dv, dc1, dc2)
    adam_group_step_(Ws, gs, ms, vs, *, steps, ..., vmaxs, backend)    (lists of tensors)
    rmsprop_group_step_(Ws, gs, square_avgs, *, ..., grad_avgs, momentum_bufs, backend)

The group steps update a list of tensors (any shapes, contiguous; each Adam tensor at its own
step count) with one launch per dtype combination: torch's fused multi-tensor op on CPU (Adam;
RMSprop: torch's multi-tensor ``_foreach`` ops), one Triton launch over a pointer table on
CUDA. Nothing is concatenated.

Dtypes: W float32, bfloat16, float16 or float64; the states of one W share one dtype, the
master dtype (float32; float64 for float64 W) or W's own dtype (torch.optim's layout for
low-precision parameters); g in W's dtype or the master dtype. Low-precision buffers are
computed in float32 and each stored buffer is rounded once, to nearest even (torch's
``fused=True`` semantics; its single-tensor code rounds after every op instead).

``backend``:
  "reference"  plain torch ops in torch.optim's single-tensor order (``reference.py``);
  "fused"      Triton on CUDA tensors, the CPU fast path (``cpu.py``) on CPU tensors;
  "auto"       same as "fused", falling back to "reference" where no fused kernel applies
               (float64 W on CUDA, or CUDA without Triton).

Accuracy against the reference (tests/test_kernels.py): see ``cpu.py`` and
``triton_kernels.py``; the Triton kernels are checked under ``TRITON_INTERPRET=1`` and by the
device check (``benchmarks/gpu_check.py``).

The equations are in ``fluxode.kernels.reference``. ``flatten`` packs a parameter list into
one flat buffer so that a whole model steps in one kernel launch.
"""

from __future__ import annotations

import contextlib
import os
from typing import Sequence

import torch

from . import cpu, reference
from .. import validation as check
from ._checks import as_scalar, check_buffers, check_group, check_step

__all__ = ["adam_step_", "rmsprop_step_", "adam_field", "adam_group_step_",
           "rmsprop_group_step_", "flatten", "triton_available", "flow_step_",
           "flow_field_into", "flat_state", "triton_on_cpu"]


def triton_available() -> bool:
    """True when Triton imports (needed for the CUDA kernels)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


_TRITON_ON_CPU = False


@contextlib.contextmanager
def triton_on_cpu():
    """Within this block the fused backends send CPU tensors to the Triton kernels, which
    then run in Triton's interpreter (``TRITON_INTERPRET=1``, required): the device check and
    the tests run the very kernels a GPU runs, through the paths users call."""
    global _TRITON_ON_CPU
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("triton_on_cpu() needs TRITON_INTERPRET=1 (set before triton is "
                           "imported): Triton runs CPU tensors only in its interpreter")
    old, _TRITON_ON_CPU = _TRITON_ON_CPU, True
    try:
        yield
    finally:
        _TRITON_ON_CPU = old


def _impl(w: torch.Tensor, backend: str):
    """Module implementing the chosen backend for buffers like ``w``."""
    check.backend(backend)
    if backend == "reference":
        return reference
    if w.device.type == "cpu" and not (_TRITON_ON_CPU and w.dtype != torch.float64):
        return cpu
    if w.device.type in ("cuda", "cpu") and w.dtype != torch.float64 and triton_available():
        from . import triton_kernels
        return triton_kernels
    if backend == "fused":
        raise ValueError(f"backend='fused' needs CPU tensors, or CUDA float32/bfloat16/float16 "
                         f"tensors with Triton installed; got {w.device} {w.dtype}")
    return reference


def _adam_hyperparameters(lr, betas, eps, weight_decay):
    """(lr, (β₁, β₂), eps, weight_decay), checked: betas in [0, 1), the others ≥ 0."""
    b = check.betas(tuple(betas))  # checked first, as before
    return (check.at_least("lr", lr, 0.0), b, check.at_least("eps", eps, 0.0),
            check.at_least("weight_decay", weight_decay, 0.0))


def adam_step_(W: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, *,
               step: int, lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999),
               eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = False,
               amsgrad: bool = False, vmax: torch.Tensor | None = None, maximize: bool = False,
               backend: str = "auto") -> None:
    """One Adam (``decoupled=False``) or AdamW (``decoupled=True``) step, in place.

    ``step`` is k >= 1, the step count *including* this step (torch's ``state['step']``
    after its increment). AdamW: W <- W(1 - lr wd); Adam: g <- g + wd W; then
    m <- lerp(m, g, 1-b1), v <- b2 v + (1-b2) g^2, [vmax <- max(vmax, v)],
    W <- W - lr/(1-b1^k) * m / (sqrt(v)/sqrt(1-b2^k) + eps).
    """
    step = check_step(step)
    lr, (b1, b2), eps, wd = _adam_hyperparameters(lr, betas, eps, weight_decay)
    if amsgrad and vmax is None:
        raise ValueError("vmax must be given (a float32 buffer like v, zeros at step 1) "
                         "when amsgrad=True")
    check_buffers(W, [("g", g), ("m", m), ("v", v), ("vmax", vmax if amsgrad else None)])
    _impl(W, backend).adam_step_(W, g, m, v, step=step, lr=lr, beta1=b1, beta2=b2, eps=eps,
                                 weight_decay=wd, decoupled=bool(decoupled),
                                 amsgrad=bool(amsgrad), vmax=vmax, maximize=bool(maximize))


def rmsprop_step_(W: torch.Tensor, g: torch.Tensor, square_avg: torch.Tensor, *,
                  lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                  weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                  grad_avg: torch.Tensor | None = None, momentum_buf: torch.Tensor | None = None,
                  maximize: bool = False, backend: str = "auto") -> None:
    """One RMSprop step, in place (torch.optim semantics; state buffers start at zero).

    g <- g + wd W; s <- alpha s + (1-alpha) g^2; centered: a <- lerp(a, g, 1-alpha),
    d = sqrt(s - a^2) + eps, else d = sqrt(s) + eps; momentum mu > 0: b <- mu b + g/d,
    W <- W - lr b; else W <- W - lr g/d.
    """
    alpha = check.unit_interval("alpha", alpha)
    lr, eps = check.at_least("lr", lr, 0.0), check.at_least("eps", eps, 0.0)
    wd = check.at_least("weight_decay", weight_decay, 0.0)
    momentum = check.at_least("momentum", momentum, 0.0)
    if centered and grad_avg is None:
        raise ValueError("grad_avg must be given (a float32 buffer like square_avg) when "
                         "centered=True")
    if momentum > 0 and momentum_buf is None:
        raise ValueError("momentum_buf must be given (a float32 buffer like square_avg) when "
                         "momentum > 0")
    check_buffers(W, [("g", g), ("square_avg", square_avg),
                      ("grad_avg", grad_avg if centered else None),
                      ("momentum_buf", momentum_buf if momentum > 0 else None)])
    _impl(W, backend).rmsprop_step_(W, g, square_avg, lr=lr, alpha=alpha, eps=eps,
                                    weight_decay=wd, momentum=momentum, centered=bool(centered),
                                    grad_avg=grad_avg, momentum_buf=momentum_buf,
                                    maximize=bool(maximize))


def adam_field(W: torch.Tensor, m: torch.Tensor, v: torch.Tensor, c1, c2, g: torch.Tensor, *,
               lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
               weight_decay: float = 0.0, decoupled: bool = True, maximize: bool = False,
               out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
               backend: str = "auto"):
    """Adam/AdamW step-clock vector field: one pass on CUDA (Triton); on CPU whole-buffer
    torch ops written into ``out`` (no N-sized temporary for AdamW; ``cpu.adam_field``).

    Returns (dW, dm, dv, dc1, dc2)::

        dm = (1-b1)(g - m)     dv = (1-b2)(g^2 - v)
        dc1 = (1-b1)(1 - c1)   dc2 = (1-b2)(1 - c2)
        dW = -lr [ (m/c1) / (sqrt(v/c2) + eps) + wd W ]   (decoupled; Adam: g <- g + wd W)

    with m/c1 -> g and v/c2 -> g^2 at c1 = c2 = 0 (tau = 0). ``c1``, ``c2`` are scalars:
    floats (checked to lie in [0, 1]; dc1, dc2 come back as floats) or one-element tensors,
    kept on the device (no host read; dc1, dc2 come back as 0-d tensors; the Triton kernel
    loads them itself). dW, dm, dv are in the state dtype
    (float32, or float64 for float64 W); pass ``out`` to reuse buffers.
    """
    lr, (b1, b2), eps, wd = _adam_hyperparameters(lr, betas, eps, weight_decay)
    impl = _impl(W, backend)
    c1, c2 = as_scalar("c1", c1, True), as_scalar("c2", c2, True)
    check_buffers(W, [("m", m), ("v", v), ("g", g)])
    if out is not None:
        if len(out) != 3:
            raise ValueError("out must be a triple (dW, dm, dv) of buffers like m")
        check_buffers(W, [("out[0]", out[0]), ("out[1]", out[1]), ("out[2]", out[2])])
    return impl.adam_field(W, m, v, c1, c2, g, lr=lr, beta1=b1, beta2=b2, eps=eps,
                           weight_decay=wd, decoupled=bool(decoupled), maximize=bool(maximize),
                           out=out)


def _group_parts(Ws, parts, backend: str):
    """[(module, indices or None)]: one kernel launch per dtype combination of the group, each
    on the backend that takes it (float64 W on CUDA goes to the reference under 'auto')."""
    out = []
    for _, idx in parts:
        out.append((_impl(Ws[0] if idx is None else Ws[idx[0]], backend), idx))
    return out


def adam_group_step_(Ws: Sequence[torch.Tensor], gs: Sequence[torch.Tensor],
                     ms: Sequence[torch.Tensor], vs: Sequence[torch.Tensor], *,
                     steps: Sequence[int], lr: float = 1e-3,
                     betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
                     weight_decay: float = 0.0, decoupled: bool = False,
                     amsgrad: bool = False, vmaxs: Sequence[torch.Tensor] | None = None,
                     maximize: bool = False, backend: str = "auto", _parts=None) -> None:
    """``adam_step_`` on every tensor of a list at once, tensor i at its own step count
    ``steps[i]`` (k >= 1, including this step); one launch (CPU: one fused op call) per dtype
    combination, in place. (``_parts``: what ``group_fits`` returned for exactly these
    lists, to skip validating them twice.)"""
    lr, (b1, b2), eps, wd = _adam_hyperparameters(lr, betas, eps, weight_decay)
    if amsgrad and vmaxs is None:
        raise ValueError("vmaxs must be given (buffers like vs, zeros at step 1) when "
                         "amsgrad=True")
    parts = _parts or check_group(Ws, [("g", gs), ("m", ms), ("v", vs),
                                       ("vmax", vmaxs if amsgrad else None)])
    n = len(Ws)
    if not isinstance(steps, (list, tuple)) or len(steps) != n:
        raise ValueError(f"steps must be a list of {n} step counts (one per tensor)")
    if set(map(type, steps)) != {int} or min(steps) < 1:
        steps = [check_step(k) for k in steps]
    for impl, idx in _group_parts(Ws, parts, backend):
        impl.adam_group_step_(subset(Ws, idx), subset(gs, idx), subset(ms, idx), subset(vs, idx),
                              steps=subset(steps, idx), lr=lr, beta1=b1, beta2=b2, eps=eps,
                              weight_decay=wd, decoupled=bool(decoupled), amsgrad=bool(amsgrad),
                              vmaxs=subset(vmaxs, idx) if amsgrad else None,
                              maximize=bool(maximize))


def rmsprop_group_step_(Ws: Sequence[torch.Tensor], gs: Sequence[torch.Tensor],
                        square_avgs: Sequence[torch.Tensor], *, lr: float = 1e-2,
                        alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                        momentum: float = 0.0, centered: bool = False,
                        grad_avgs: Sequence[torch.Tensor] | None = None,
                        momentum_bufs: Sequence[torch.Tensor] | None = None,
                        maximize: bool = False, backend: str = "auto", _parts=None) -> None:
    """``rmsprop_step_`` on every tensor of a list at once, one launch per dtype combination,
    in place (``_parts``: as for ``adam_group_step_``)."""
    alpha = check.unit_interval("alpha", alpha)
    lr, eps = check.at_least("lr", lr, 0.0), check.at_least("eps", eps, 0.0)
    wd = check.at_least("weight_decay", weight_decay, 0.0)
    momentum = check.at_least("momentum", momentum, 0.0)
    if centered and grad_avgs is None:
        raise ValueError("grad_avgs must be given (buffers like square_avgs) when centered=True")
    if momentum > 0 and momentum_bufs is None:
        raise ValueError("momentum_bufs must be given (buffers like square_avgs) when "
                         "momentum > 0")
    parts = _parts or check_group(Ws, [("g", gs), ("square_avg", square_avgs),
                                       ("grad_avg", grad_avgs if centered else None),
                                       ("momentum_buf", momentum_bufs if momentum > 0 else None)])
    for impl, idx in _group_parts(Ws, parts, backend):
        impl.rmsprop_group_step_(subset(Ws, idx), subset(gs, idx), subset(square_avgs, idx), lr=lr,
                                 alpha=alpha, eps=eps, weight_decay=wd, momentum=momentum,
                                 centered=bool(centered),
                                 grad_avgs=subset(grad_avgs, idx) if centered else None,
                                 momentum_bufs=subset(momentum_bufs, idx) if momentum > 0 else None,
                                 maximize=bool(maximize))


def flatten(tensors: Sequence[torch.Tensor], dtype: torch.dtype | None = None
            ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Copy ``tensors`` into one flat buffer; return (flat, views shaped like the inputs).

    The views alias ``flat``, so a kernel stepping ``flat`` updates every view.
    """
    if len(tensors) == 0:
        raise ValueError("tensors must be a non-empty sequence")
    dev = tensors[0].device
    dtype = dtype or tensors[0].dtype
    flat = torch.empty(sum(t.numel() for t in tensors), dtype=dtype, device=dev)
    views, off = [], 0
    for t in tensors:
        if t.device != dev:
            raise ValueError(f"tensors must share one device; got {t.device} and {dev}")
        view = flat[off:off + t.numel()].view(t.shape)
        view.copy_(t)
        views.append(view)
        off += t.numel()
    return flat, views


# --- flows → kernels: each flow runs its own fused kernel (``Flow.fused_step_``) -------------

def flat_state(S: dict, g: torch.Tensor, backend: str, clocks=()):
    """(flat 1-D views of the states but the scalar ``clocks``, flat g) for a fused kernel, or
    None when a tensor is not contiguous or the dtypes do not fit the kernels
    (backend='fused' then raises)."""
    if not all(t.is_contiguous() for t in (g, *S.values())):
        if backend == "fused":
            raise ValueError("backend='fused' needs contiguous parameters, gradients and states")
        return None
    F = {n: t.view(-1) for n, t in S.items() if n not in clocks}
    if not fits(F["W"], g, [t for n, t in F.items() if n != "W"], backend):
        return None
    return F, g.view(-1)


def fits(W: torch.Tensor, g: torch.Tensor, states: Sequence[torch.Tensor],
         backend: str = "auto") -> bool:
    """Whether the fused kernels take W with gradient g and these states (dtypes, shapes,
    contiguity; see the module docstring). backend='fused' raises the ValueError instead of
    returning False."""
    try:
        check_buffers(W, [("g", g)] + [(f"state {i}", t) for i, t in enumerate(states)],
                      flat=False)
    except ValueError:
        if backend == "fused":
            raise
        return False
    return True


def group_fits(Ws, gs, state_lists, backend: str = "auto"):
    """``fits`` for a multi-tensor group (lists of tensors; state_lists: one list per state
    variable): the group's parts (truthy, see ``_checks.check_group``) or None."""
    try:
        return check_group(Ws, [("g", gs)] + [(f"state {i}", L)
                                              for i, L in enumerate(state_lists)])
    except ValueError:
        if backend == "fused":
            raise
        return None


def by_value(values: Sequence) -> list[tuple]:
    """[(value, indices)] of a list, indices None when every entry is the same (the common
    case: a group steps at one lr)."""
    first = values[0]
    if values.count(first) == len(values):
        return [(first, None)]
    out: dict = {}
    for i, x in enumerate(values):
        out.setdefault(x, []).append(i)
    return list(out.items())


def set_scalars_(states: Sequence[dict], name: str, value: float) -> None:
    """S[name] ← value in every state dict: 0-d tensors in place, in one multi-tensor copy;
    a plain number is replaced."""
    ts = []
    for S in states:
        if isinstance(S[name], torch.Tensor):
            ts.append(S[name])
        else:
            S[name] = value
    if not ts:
        return
    src = torch.tensor(value, dtype=ts[0].dtype, device=ts[0].device)
    if all(t.dtype == src.dtype and t.device == src.device for t in ts):
        torch._foreach_copy_(ts, [src] * len(ts))
    else:
        for t in ts:
            t.fill_(value)


def subset(lst, idx):
    """lst[idx] for an index list from ``by_value`` (None: the whole list)."""
    return lst if lst is None or idx is None else [lst[i] for i in idx]


def flow_step_(flow, tau: float, S: dict, g: torch.Tensor, h: float = 1.0,
               backend: str = "auto") -> bool:
    """The discrete step of ``flow`` at τ through its fused kernel (``flow.fused_step_``), in
    place on S. Returns False when none applies (backend "reference", h ≠ 1, a flow without
    one): the caller then runs the core discretizer. backend='fused' with a flow that has no
    fused step raises a ValueError."""
    if check.backend(backend) == "reference":
        return False
    return bool(flow.fused_step_(tau, S, g, h=h, backend=backend))


def flow_field_into(flow, tau: float, S: dict, g: torch.Tensor, out: dict,
                    backend: str = "auto") -> bool:
    """out ← the continuous field of ``flow`` through its fused kernel
    (``flow.fused_field_into``); False when none applies (then the caller evaluates
    ``fluxode.discretize.vector_field``)."""
    if check.backend(backend) == "reference":
        return False
    return bool(flow.fused_field_into(tau, S, g, out, backend=backend))
