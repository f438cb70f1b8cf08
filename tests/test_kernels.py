"""Fused Adam-family kernels (fluxode.kernels) against torch.optim's single-tensor code.

Tolerances ("ulp" = spacing of float32 at max(|old|, |new|) of that element):
  reference backend: bit-identical to torch.optim (foreach=False) for every buffer.
  Triton (run under TRITON_INTERPRET=1 in a subprocess): m, v, vmax, square_avg, grad_avg
    bit-identical; W <= 2 ulp (RMSprop with momentum: buffer <= 4 ulp, W <= 4 ulp). torch's
    CPU sqrt is not correctly rounded (about 1 element in 5 is 1 ulp off on AVX512) while
    tl.sqrt_rn is; that ulp is what propagates.
  CPU fast path (torch's fused Adam op): m bit-identical, v <= 1 ulp, W <= 2 ulp.
  bfloat16 W: within 1 bfloat16 ulp of the float32-master reference rounded to bfloat16.
  Field: dm, dv bit-identical to the plain-torch reference; dW <= 3 ulp (Triton) counted at
    the operand scale lr*(|u| + wd|W|), since decoupled decay can cancel u; NaN exactly where
    the reference has NaN. CPU field: bit for bit reference.adam_field in float32 and float64
    (clocks as numbers or 0-d tensors); with 0-d clocks, dW is also NaN where the input the
    c = 0 choice does not use is non-finite (and dv where m is, at c = 0).
  Multi-tensor groups (one launch over a list, every tensor at its own step count): bit for
    bit the same backend's single-tensor kernel, and within the tolerances above of the
    reference. Low precision (bf16/fp16 W and/or states): every buffer within 1 ulp of its
    dtype of the float32 reference rounded to it, and >= 99.9% identical (``_bf_match``).
  FlowOptimizer(backend="fused") on CPU: bit for bit torch's fused=True (same fused op), in
    float32, float64, bfloat16 and float16 (state kept in the parameter dtype, as torch does);
    RMSprop bit for bit torch's single-tensor step.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

N = 5003              # not a multiple of any block size
TRITON_BLOCK = 4096   # two program instances per launch: masking + multi-program covered

ADAM_CASES = [f"adam-dec{int(d)}-wd{int(w > 0)}-ams{int(a)}-max{int(x)}-b1{b}"
              for d, w, a, x, b in itertools.product((0, 1), (0.0, 0.1), (0, 1), (0, 1), (0.9,))]
ADAM_CASES += ["adam-dec1-wd1-ams0-max0-b10.3", "adam-dec0-wd1-ams1-max0-b10.3"]
RMS_CASES = [f"rms-cen{int(c)}-mom{int(m > 0)}-wd{int(w > 0)}-max{x}"
             for c, m, w, x in itertools.product((0, 1), (0.0, 0.9), (0.0, 0.1), (0,))]
RMS_CASES += ["rms-cen1-mom1-wd1-max1"]
BF16_CASES = ["bf16-adam-dec1-wd1-ams0", "bf16-adam-dec0-wd1-ams1", "bf16-rms-cen1-mom1-wd1"]
FIELD_CASES = [f"field-dec{d}-wd{w}-c{c}-max{x}"
               for d, w, c, x in itertools.product((0, 1), (0, 1), (0, 1), (0,))]
FIELD_CASES += ["field-dec1-wd1-c1-max1"]
MULTI_CASES = ["multi-adamw", "multi-adam-ams", "multi-rms-cen1-mom1"]
GROUP_CASES = ["group-adam-dec1-wd1-ams0-max0", "group-adam-dec0-wd1-ams1-max1",
               "group-adam-dec1-wd0-ams1-max0-b10.3", "group-rms-cen0-mom0-wd0-max0",
               "group-rms-cen1-mom1-wd1-max0", "group-rms-cen0-mom1-wd1-max1",
               "group-rms-cen1-mom0-wd0-max1"]
# low precision: "lp<W dtype><state dtype>", b = bfloat16, h = float16, f = float32 (master)
LOWP_CASES = ["group-lpbb-adam-dec1-wd1-ams1-max0", "group-lpbf-adam-dec0-wd1-ams0-max0",
              "group-lphh-adam-dec1-wd1-ams0-max1", "group-lpbb-rms-cen1-mom1-wd1-max0",
              "group-lpbf-rms-cen0-mom1-wd0-max0"]
FIELD_NAN_CASES = ["fieldnan-c0", "fieldnan-c1"]
ALL_CASES = (ADAM_CASES + RMS_CASES + BF16_CASES + FIELD_CASES + MULTI_CASES + GROUP_CASES
             + LOWP_CASES + FIELD_NAN_CASES)
GROUP_SHAPES = [(3, 5), (7,), (2, 3, 4), (0,), (1000,), (N,)]
GROUP_STEPS = [1, 3, 7, 2, 12, 5]   # every tensor at its own step count
LP = {"b": torch.bfloat16, "h": torch.float16, "f": torch.float32}


def _flags(case: str) -> dict:
    out = {}
    for part in case.split("-")[1:]:
        for key in ("dec", "wd", "ams", "max", "cen", "mom", "c", "b1"):
            if part.startswith(key) and part[len(key):].replace(".", "").isdigit():
                out[key] = float(part[len(key):])
    return out


def ulp_err(a: torch.Tensor, b: torch.Tensor, old: torch.Tensor | None = None) -> float:
    """max |a-b| in units of the float32 spacing at max(|a|, |b|, |old|)."""
    a, b = a.float(), b.float()
    scale = torch.maximum(a.abs(), b.abs())
    if old is not None:
        scale = torch.maximum(scale, old.float().abs())
    ulp = torch.nextafter(scale, torch.tensor(float("inf"))) - scale
    return ((a - b).abs() / ulp).max().item()


def _bits_equal(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    bad = (a != b) & ~(a.isnan() & b.isnan())
    assert not bad.any(), f"{name}: {int(bad.sum())} of {a.numel()} elements differ in bits"


def _close(name: str, a, b, ulps: float, old=None) -> None:
    e = ulp_err(a, b, old)
    assert e <= ulps, f"{name}: {e:.2f} ulp apart (allowed {ulps})"


def _state(gen: torch.Generator, n: int, *, step: int = 5):
    """A mid-training Adam state: W, g, m, v, vmax (vmax >= some v, < others)."""
    r = lambda: torch.randn(n, generator=gen)  # noqa: E731
    w, g = r(), r()
    m = 0.1 * r()
    v = 0.01 * r().square()
    vmax = v * torch.rand(n, generator=gen) * 2
    return w, g, m, v, vmax


def _torch_adam(w, g, m, v, vmax, *, step, decoupled, **hp):
    """Run torch.optim.Adam/AdamW (foreach=False) one step from the given state."""
    p = torch.nn.Parameter(w.clone())
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    opt = cls([p], foreach=False, fused=False, **hp)
    p.grad = g.clone()
    opt.state[p] = {"step": torch.tensor(float(step - 1)), "exp_avg": m.clone(),
                    "exp_avg_sq": v.clone()}
    if hp.get("amsgrad"):
        opt.state[p]["max_exp_avg_sq"] = vmax.clone()
    opt.step()
    st = opt.state[p]
    return p.detach(), st["exp_avg"], st["exp_avg_sq"], st.get("max_exp_avg_sq")


def _torch_rms(w, g, s, a, b, **hp):
    p = torch.nn.Parameter(w.clone())
    opt = torch.optim.RMSprop([p], foreach=False, **hp)
    p.grad = g.clone()
    opt.state[p] = {"step": torch.tensor(3.0), "square_avg": s.clone()}
    if hp.get("centered"):
        opt.state[p]["grad_avg"] = a.clone()
    if hp.get("momentum", 0) > 0:
        opt.state[p]["momentum_buffer"] = b.clone()
    opt.step()
    st = opt.state[p]
    return p.detach(), st["square_avg"], st.get("grad_avg"), st.get("momentum_buffer")


def _impl(backend: str):
    """Callables (adam_step_, rmsprop_step_, adam_field) for a backend name."""
    import fluxode.kernels as K
    if backend == "triton":
        from fluxode.kernels import triton_kernels as T

        def adam(*a, betas, vmax=None, **kw):
            kw = dict(dict(eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False), **kw)
            T.adam_step_(*a, beta1=betas[0], beta2=betas[1], vmax=vmax, block=TRITON_BLOCK, **kw)

        def rms(*a, grad_avg=None, momentum_buf=None, **kw):
            kw = dict(dict(eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                           maximize=False), **kw)
            T.rmsprop_step_(*a, grad_avg=grad_avg, momentum_buf=momentum_buf,
                            block=TRITON_BLOCK, **kw)

        def field(*a, betas, out=None, **kw):
            kw = dict(dict(eps=1e-8, weight_decay=0.0, decoupled=True, maximize=False), **kw)
            return T.adam_field(*a, beta1=betas[0], beta2=betas[1], out=out,
                                block=TRITON_BLOCK, **kw)
        return adam, rms, field
    be = {"cpu": "fused"}.get(backend, backend)
    return (lambda *a, **kw: K.adam_step_(*a, backend=be, **kw),
            lambda *a, **kw: K.rmsprop_step_(*a, backend=be, **kw),
            lambda *a, **kw: K.adam_field(*a, backend=be, **kw))


TOL = {  # backend -> (W ulps, v ulps, momentum-buffer ulps, field dW ulps)
    "reference": (0, 0, 0, 0),
    "cpu": (2, 1, 0, 0),
    "triton": (2, 0, 4, 3),
}


def check_case(case: str, backend: str) -> None:
    """Run one named case on a backend; raise AssertionError on a mismatch."""
    if case.startswith("group-"):
        return check_group_case(case, backend)
    if case.startswith("fieldnan-"):
        return check_field_nan(case, backend)
    adam, rms, field = _impl(backend)
    tw, tv, tb, tf = TOL[backend]
    f = _flags(case)
    gen = torch.Generator().manual_seed(zlib.crc32(case.encode()))
    if case.startswith("adam-"):
        w, g, m, v, vmax = _state(gen, N)
        hp = dict(lr=1e-2, betas=(f["b1"], 0.999), eps=1e-8, weight_decay=0.1 * f["wd"],
                  amsgrad=bool(f["ams"]), maximize=bool(f["max"]))
        rw, rm, rv, rvmax = _torch_adam(w, g, m, v, vmax, step=7, decoupled=bool(f["dec"]), **hp)
        W, M, V, VM = w.clone(), m.clone(), v.clone(), vmax.clone()
        adam(W, g, M, V, step=7, decoupled=bool(f["dec"]), vmax=VM, **hp)
        _bits_equal("m", M, rm)
        _close("v", V, rv, tv)
        if hp["amsgrad"]:
            _close("vmax", VM, rvmax, tv)
        _close("W", W, rw, tw, old=w)
    elif case.startswith("rms-"):
        w, g, m, v, _ = _state(gen, N)
        s, a, b = v + m.square(), m, 0.1 * g
        hp = dict(lr=1e-2, alpha=0.99 if not f["max"] else 0.3, eps=1e-8,
                  weight_decay=0.1 * f["wd"], momentum=0.9 * f["mom"],
                  centered=bool(f["cen"]), maximize=bool(f["max"]))
        rw, rs, ra, rb = _torch_rms(w, g, s, a, b, **hp)
        W, S, A, B = w.clone(), s.clone(), a.clone(), b.clone()
        rms(W, g, S, grad_avg=A, momentum_buf=B, **hp)
        _bits_equal("square_avg", S, rs)
        if hp["centered"]:
            _bits_equal("grad_avg", A, ra)
        if hp["momentum"] > 0:
            _close("momentum_buf", B, rb, tb, old=0.9 * b)
        _close("W", W, rw, tw + (2 if tb and hp["momentum"] > 0 else 0), old=w)
    elif case.startswith("bf16-"):
        w, g, m, v, vmax = _state(gen, N)
        wb = w.bfloat16()
        W, M, V, VM, S = wb.clone(), m.clone(), v.clone(), vmax.clone(), v + m.square()
        W32, M32, V32, VM32, S32 = wb.float(), m.clone(), v.clone(), vmax.clone(), S.clone()
        if "-rms-" in case:
            hp = dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.1, momentum=0.9,
                      centered=True)
            Bb, B32 = g.clone(), g.clone()
            rms(W, g, S, grad_avg=M, momentum_buf=Bb, **hp)
            _impl("reference")[1](W32, g, S32, grad_avg=M32, momentum_buf=B32, **hp)
        else:
            hp = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1,
                      amsgrad=bool(f["ams"]), decoupled=bool(f["dec"]))
            adam(W, g, M, V, step=3, vmax=VM, **hp)
            _impl("reference")[0](W32, g, M32, V32, step=3, vmax=VM32, **hp)
        assert W.dtype == torch.bfloat16
        ref = W32.bfloat16().float()
        spacing = torch.nextafter(ref.abs().bfloat16(), torch.tensor(float("inf"),
                                  dtype=torch.bfloat16)).float() - ref.abs()
        err = ((W.float() - ref).abs() / spacing).max().item()
        assert err <= 1, f"bf16 W: {err:.2f} bf16-ulp from the fp32-master reference"
    elif case.startswith("field-"):
        w, g, m, v, _ = _state(gen, N)
        c1, c2 = (0.0, 0.0) if not f["c"] else (0.4, 0.02)
        hp = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1 * f["wd"],
                  decoupled=bool(f["dec"]), maximize=bool(f["max"]))
        out = tuple(torch.empty_like(m) for _ in range(3))
        dw, dm, dv, dc1, dc2 = field(w, m, v, c1, c2, g, out=out, **hp)
        assert dw is out[0]
        rdw, rdm, rdv, rdc1, rdc2, scale = _plain_field(w, m, v, c1, c2, g, **hp)
        _bits_equal("dm", dm, rdm)
        _bits_equal("dv", dv, rdv)
        _close("dW", dw, rdw, tf, old=scale)
        assert (dc1, dc2) == (rdc1, rdc2)
    elif case.startswith("multi-"):
        from fluxode.kernels import flatten
        shapes = [(3, 5), (7,), (2, 3, 4), (1000,)]
        ps = [torch.randn(s, generator=gen) for s in shapes]
        gs = [torch.randn(s, generator=gen) for s in shapes]
        params = [torch.nn.Parameter(p.clone()) for p in ps]
        if "rms" in case:
            hp = dict(lr=1e-2, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.01)
            opt = torch.optim.RMSprop(params, foreach=False, **hp)
        else:
            hp = dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=0.05, amsgrad="ams" in case)
            opt = (torch.optim.AdamW if "adamw" in case else torch.optim.Adam)(
                params, foreach=False, **hp)
        W, _ = flatten(ps)
        G, _ = flatten(gs)
        W0 = W.clone()
        bufs = [torch.zeros_like(W) for _ in range(3)]
        for k in range(1, 4):
            for p, gg in zip(params, gs):
                p.grad = gg * k
            opt.step()
            if "rms" in case:
                rms(W, G * k, bufs[0], grad_avg=bufs[1], momentum_buf=bufs[2], **hp)
            else:
                adam(W, G * k, bufs[0], bufs[1], step=k, vmax=bufs[2],
                     decoupled="adamw" in case, **hp)
        ref = torch.cat([p.detach().flatten() for p in params])
        _close("W (3 steps)", W, ref, 8 if tw else 0, old=W0)


def _group_impl(backend: str):
    """(adam_group_step_, rmsprop_group_step_, adam_step_, rmsprop_step_) taking the keyword
    API of ``fluxode.kernels`` (betas=, vmaxs=, ...) for a backend name."""
    import fluxode.kernels as K
    if backend == "triton":
        from fluxode.kernels import triton_kernels as T

        def adam_g(*a, betas, vmaxs=None, **kw):
            kw = dict(dict(eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False), **kw)
            T.adam_group_step_(*a, beta1=betas[0], beta2=betas[1], vmaxs=vmaxs,
                               block=TRITON_BLOCK, **kw)

        def rms_g(*a, grad_avgs=None, momentum_bufs=None, **kw):
            kw = dict(dict(eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                           maximize=False), **kw)
            T.rmsprop_group_step_(*a, grad_avgs=grad_avgs, momentum_bufs=momentum_bufs,
                                  block=TRITON_BLOCK, **kw)
        adam1, rms1, _ = _impl("triton")
        return adam_g, rms_g, adam1, rms1
    be = {"cpu": "fused"}.get(backend, backend)
    return (lambda *a, **kw: K.adam_group_step_(*a, backend=be, **kw),
            lambda *a, **kw: K.rmsprop_group_step_(*a, backend=be, **kw),
            lambda *a, **kw: K.adam_step_(*a, backend=be, **kw),
            lambda *a, **kw: K.rmsprop_step_(*a, backend=be, **kw))


def _bf_match(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    """Low-precision results against the float32 reference rounded to the same dtype: every
    element within 1 ulp of that dtype and at least 99.9% identical. A kernel whose float32
    result is within 2 float32 ulps of the reference (the tolerances above) can only round
    differently when the exact value lies within 2 float32 ulps of a rounding boundary: a
    fraction of about 2^-15 (bfloat16) or 2^-12 (float16) of the elements, one ulp off."""
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype}, expected {want.dtype}"
    g, w = got.float(), want.float()
    same = (g == w) | (g.isnan() & w.isnan())
    up = torch.nextafter(w.abs().to(want.dtype), torch.tensor(float("inf"), dtype=want.dtype))
    spacing = up.float() - w.abs()
    err = ((g - w).abs() / spacing)[~same]
    assert err.numel() == 0 or err.max() <= 1, f"{name}: {err.max():.2f} ulp ({want.dtype})"
    rate = float(same.float().mean())
    assert rate >= 0.999, f"{name}: only {rate:.4%} of elements identical ({want.dtype})"


def check_group_case(case: str, backend: str) -> None:
    """A multi-tensor group (mixed shapes, a zero-element tensor, one tensor spanning two
    Triton blocks, every tensor at its own step count): the backend's one-launch group step
    against (a) the reference, per tensor, within the backend's tolerances and (b) the same
    backend's single-tensor kernel, bit for bit (same arithmetic, only the launch differs)."""
    adam_g, rms_g, adam1, rms1 = _group_impl(backend)
    ref_g = _group_impl("reference")
    f = _flags(case)
    lp = next((p[2:] for p in case.split("-") if p.startswith("lp")), "")
    wdt, sdt = (LP[lp[0]], LP[lp[1]]) if lp else (torch.float32, torch.float32)
    gen = torch.Generator().manual_seed(zlib.crc32(case.encode()))
    T = len(GROUP_SHAPES)
    # W, g, then three state buffers per tensor (m/v/vmax or square_avg/grad_avg/buf)
    W, G, S = [], [], [[], [], []]
    for shape in GROUP_SHAPES:
        n = int(torch.Size(shape).numel())
        w, g, m, v, vmax = _state(gen, n)
        if "-rms-" in case:
            m, v, vmax = v + m.square(), m, 0.1 * g   # square_avg >= grad_avg², buffer
        W.append(w.view(shape).to(wdt))
        G.append(g.view(shape).to(wdt))
        for lst, x in zip(S, (m, v, vmax)):
            lst.append(x.view(shape).to(sdt))
    copy = lambda L: [x.clone() for x in L]  # noqa: E731
    runs = {}
    for label in ("group", "single", "reference"):
        w, s = copy(W), [copy(L) for L in S]
        if "-adam-" in case:
            hp = dict(lr=1e-2, betas=(f.get("b1", 0.9), 0.999), eps=1e-8,
                      weight_decay=0.1 * f["wd"], amsgrad=bool(f["ams"]),
                      maximize=bool(f["max"]), decoupled=bool(f["dec"]))
            if label == "single":
                for i in range(T):
                    flat = [x[i].view(-1) for x in (w, G, s[0], s[1], s[2])]
                    adam1(*flat[:4], step=GROUP_STEPS[i], vmax=flat[4], **hp)
            else:
                fn = adam_g if label == "group" else ref_g[0]
                fn(w, G, s[0], s[1], steps=GROUP_STEPS, vmaxs=s[2], **hp)
        else:
            hp = dict(lr=1e-2, alpha=0.99 if not f["max"] else 0.3, eps=1e-8,
                      weight_decay=0.1 * f["wd"], momentum=0.9 * f["mom"],
                      centered=bool(f["cen"]), maximize=bool(f["max"]))
            if label == "single":
                for i in range(T):
                    flat = [x[i].view(-1) for x in (w, G, s[0], s[1], s[2])]
                    rms1(*flat[:3], grad_avg=flat[3], momentum_buf=flat[4], **hp)
            else:
                fn = rms_g if label == "group" else ref_g[1]
                fn(w, G, s[0], grad_avgs=s[1], momentum_bufs=s[2], **hp)
        runs[label] = [w] + s
    names = (["W", "m", "v", "vmax"] if "-adam-" in case
             else ["W", "square_avg", "grad_avg", "momentum_buf"])
    for k, name in enumerate(names):
        for i in range(T):
            a, b = runs["group"][k][i], runs["single"][k][i]
            _bits_equal(f"{name}[{i}] group vs single-tensor {backend}", a, b)
    tw, tv, tb, _ = TOL[backend]
    for k, name in enumerate(names):
        for i in range(T):
            got, want = runs["group"][k][i], runs["reference"][k][i]
            if got.numel() == 0:
                continue
            if got.dtype in (torch.bfloat16, torch.float16):
                _bf_match(f"{name}[{i}]", got, want)
            elif name in ("m", "square_avg", "grad_avg"):
                _bits_equal(f"{name}[{i}]", got, want)
            elif name in ("v", "vmax"):
                _close(f"{name}[{i}]", got, want, tv)
            elif name == "momentum_buf":
                _close(f"{name}[{i}]", got, want, tb, old=0.9 * S[2][i].float())
            else:
                extra = 2 if tb and "-rms-" in case and hp["momentum"] > 0 else 0
                _close(f"W[{i}]", got, want, tw + extra, old=W[i].float())


def check_field_nan(case: str, backend: str) -> None:
    """The field at a state holding NaN (in v, m, g): NaN where the reference has NaN (the
    admissible projection max(v, floor) propagates NaN, as torch.maximum does), and the
    finite entries as in the ordinary field cases."""
    _, _, field = _impl(backend)
    gen = torch.Generator().manual_seed(zlib.crc32(case.encode()))
    w, g, m, v, _ = _state(gen, N)
    nan = float("nan")
    v[::97] = nan
    m[5::101] = nan
    g[7::89] = nan
    c1, c2 = (0.0, 0.0) if case.endswith("c0") else (0.4, 0.02)
    hp = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, decoupled=True,
              maximize=False)
    dw, dm, dv, _, _ = field(w, m, v, c1, c2, g, **hp)
    r = _plain_field(w, m, v, c1, c2, g, **hp)
    for name, a, b in (("dW", dw, r[0]), ("dm", dm, r[1]), ("dv", dv, r[2])):
        assert torch.equal(a.isnan(), b.isnan()), \
            f"{name}: NaN at {int((a.isnan() != b.isnan()).sum())} other places than the reference"
    assert dv.isnan().any() and dw.isnan().any()


def _plain_field(w, m, v, c1, c2, g, *, lr, betas, eps, weight_decay, decoupled, maximize):
    """The Adam flow's field written out by hand, in the documented op order, at the
    admissible state v ← max(v, (1-β₂)/(1-β₁)·m²/c₁) (``Adam.admissible``)."""
    b1, b2 = betas
    v = torch.maximum(v, (m * m) * ((1 - b2) / ((1 - b1) * c1))) if c1 else v.clamp(min=0)
    g = -g if maximize else g
    if weight_decay and not decoupled:
        g = g.add(w, alpha=weight_decay)
    dm = (g - m) * (1 - b1)
    dv = (g * g) * (1 - b2) - v * (1 - b2)
    if c1 == 0 or c2 == 0:
        u = g * (-lr) / (g.abs() + eps)
    else:
        u = m * (-(lr / c1)) / ((v.sqrt() / c2 ** 0.5) + eps)
    scale = u.abs()  # operand scale: ulps are counted here when decay cancels u
    if weight_decay and decoupled:
        scale = scale + lr * weight_decay * w.abs()
        u = u - w * (lr * weight_decay)
    return u, dm, dv, (1 - c1) * (1 - b1), (1 - c2) * (1 - b2), scale


# --------------------------------------------------------------------------- CPU backends

@pytest.mark.parametrize("case", ALL_CASES)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_cpu_backends(case, backend):
    check_case(case, backend)


# ------------------------------------------------------- Triton under TRITON_INTERPRET=1

def _triton_child() -> None:
    """Entry point of the subprocess: run every case on the Triton kernels, print JSON."""
    results = {}
    for case in ALL_CASES:
        try:
            check_case(case, "triton")
            results[case] = ""
        except Exception as err:  # reported per case by the parent
            results[case] = f"{type(err).__name__}: {err}"
    print("RESULTS " + json.dumps(results))


@pytest.fixture(scope="module")
def triton_results():
    try:
        import triton  # noqa: F401
    except Exception as err:
        pytest.skip(f"triton not importable ({err}); install it with pip install triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, __file__, "--triton-child"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, f"triton child failed:\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULTS "):])


@pytest.mark.parametrize("case", ALL_CASES)
def test_triton_interpreted(case, triton_results):
    assert triton_results[case] == "", triton_results[case]


# ------------------------------------------------------------------ API and validation

def test_auto_backend_and_validation():
    import fluxode.kernels as K
    w, g, m, v, vmax = _state(torch.Generator().manual_seed(0), 64)
    K.adam_step_(w, g, m, v, step=1)  # auto on CPU
    with pytest.raises(ValueError, match="betas"):
        K.adam_step_(w, g, m, v, step=1, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="step"):
        K.adam_step_(w, g, m, v, step=0)
    with pytest.raises(ValueError, match="same shape"):
        K.adam_step_(w, g[:10], m, v, step=1)
    with pytest.raises(ValueError, match="dtype"):
        K.adam_step_(w, g.double(), m, v, step=1)
    with pytest.raises(ValueError, match="vmax"):
        K.adam_step_(w, g, m, v, step=1, amsgrad=True)
    with pytest.raises(ValueError, match="backend"):
        K.adam_step_(w, g, m, v, step=1, backend="cuda")
    with pytest.raises(ValueError, match="1-D"):
        K.adam_step_(w.view(8, 8), g, m, v, step=1)
    with pytest.raises(ValueError, match="alpha"):
        K.rmsprop_step_(w, g, v, alpha=1.5)
    with pytest.raises(ValueError, match="momentum_buf"):
        K.rmsprop_step_(w, g, v, momentum=0.9)
    with pytest.raises(ValueError, match="c1"):
        K.adam_field(w, m, v, 1.5, 0.0, g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("clocks", ["numbers", "state-dtype", "float64"])
def test_cpu_field_is_the_reference_bit_for_bit(dtype, clocks):
    """The CPU field (whole-buffer ops into ``out``) equals reference.adam_field bit for bit
    on finite inputs, for clocks given as numbers and as 0-d tensors (state dtype or float64,
    kept on the device: the c = 0 limit is chosen by lerp with weight [c = 0]), at c = 0,
    c₂ = 0 < c₁ and c > 0, AdamW and Adam (coupled decay), maximize, β₁ > β₂ (no floor), with a
    state where the moment floor binds."""
    import fluxode.kernels as K
    gen = torch.Generator().manual_seed(3)
    r = lambda: torch.randn(1003, generator=gen, dtype=dtype)  # noqa: E731
    w, g, m = r(), r(), 0.1 * r()
    v = 0.01 * r().square()
    v[::7] = 0.0  # below the floor (1-β₂)/(1-β₁)·m²/c₁ where m ≠ 0
    for (c1, c2), dec, mx, betas in itertools.product(
            ((0.0, 0.0), (0.4, 0.0), (0.4, 0.02), (1.0, 1.0)), (True, False), (False, True),
            ((0.9, 0.999), (0.99, 0.9))):
        cs = (c1, c2) if clocks == "numbers" else tuple(
            torch.tensor(c, dtype=dtype if clocks == "state-dtype" else torch.float64)
            for c in (c1, c2))
        hp = dict(lr=1e-2, betas=betas, eps=1e-8, weight_decay=0.1, decoupled=dec,
                  maximize=mx)
        out = tuple(torch.full_like(m, float("nan")) for _ in range(3))
        got = K.adam_field(w, m, v, *cs, g, out=out, backend="fused", **hp)
        want = K.adam_field(w, m, v, *cs, g, backend="reference", **hp)
        assert all(a is b for a, b in zip(got, out))
        for name, a, b in zip(("dW", "dm", "dv"), got, want):
            assert torch.equal(a, b), f"{name} at c = {(c1, c2)}, {hp}: " \
                                      f"{int((a != b).sum())} elements differ"
        for a, b in zip(got[3:], want[3:]):
            assert type(a) is type(b) and float(a) == float(b)


@pytest.mark.parametrize("c", [0.0, 0.4])
def test_cpu_field_on_device_clocks_nan(c):
    """Device clocks: NaN wherever the reference has NaN, dm exactly the reference's; dW
    also NaN where an input the c = 0 choice does not use is non-finite (g at c > 0, m or v
    at c = 0: lerp's 0·(b - a)), and at c = 0 dv too where m is (the floor factor is 0 there:
    0·m²); nowhere else."""
    import fluxode.kernels as K
    gen = torch.Generator().manual_seed(4)
    w, g, m, v, _ = _state(gen, 2003)
    v[::97], m[5::101], g[7::89] = float("nan"), float("nan"), float("inf")
    cs = (torch.tensor(c), torch.tensor(c / 2))
    hp = dict(lr=1e-2, eps=1e-8, weight_decay=0.1)
    dw, dm, dv, _, _ = K.adam_field(w, m, v, *cs, g, backend="fused", **hp)
    rw, rm, rv, _, _ = K.adam_field(w, m, v, *cs, g, backend="reference", **hp)
    _bits_equal("dm", dm, rm)
    unused = ~g.isfinite() if c else ~(m.isfinite() & v.isfinite())
    for name, a, b, extra in (("dW", dw, rw, unused),
                              ("dv", dv, rv, ~m.isfinite() & (c == 0))):
        assert torch.equal(a.isnan(), b.isnan() | extra), f"{name}: NaN elsewhere"
        _bits_equal(name, a[~extra], b[~extra])


def test_field_limit_at_tau0_and_euler_step_matches_adamw():
    """At c1 = c2 = 0 the field uses m/c1 -> g, v/c2 -> g^2; one Euler step of size 1 from
    (m, v, c) = 0 is AdamW's first step (torch: -lr*g/(|g|+eps) after decay)."""
    import fluxode.kernels as K
    gen = torch.Generator().manual_seed(1)
    w, g = torch.randn(257, generator=gen, dtype=torch.float64), torch.randn(
        257, generator=gen, dtype=torch.float64)
    z = torch.zeros_like(w)
    dw, dm, dv, dc1, dc2 = K.adam_field(w, z, z, 0.0, 0.0, g, lr=1e-2, weight_decay=0.1)
    torch.testing.assert_close(dw, -1e-2 * (g / (g.abs() + 1e-8) + 0.1 * w))
    torch.testing.assert_close(dm, 0.1 * g)
    assert abs(dc1 - 0.1) < 1e-15 and abs(dc2 - 0.001) < 1e-15
    # Partitioned Euler: auxiliaries first, then W with the new (m, v, c1, c2).
    m1, v1 = dm, dv
    dw1 = K.adam_field(w, m1, v1, dc1, dc2, g, lr=1e-2, weight_decay=0.1)[0]
    # AdamW's W update uses the decay of the *old* W: same field with the same w.
    p = torch.nn.Parameter(w.clone())
    opt = torch.optim.AdamW([p], lr=1e-2, weight_decay=0.1, foreach=False)
    p.grad = g.clone()
    opt.step()
    torch.testing.assert_close(w + dw1, p.detach(), rtol=1e-12, atol=1e-12)


def test_reference_matches_core_discretizer():
    """fluxode.kernels.reference == fluxode.discretize (partitioned Euler, h = 1)."""
    from fluxode.discretize import run_discrete  # a broken core must fail here, not skip
    from fluxode.flows import make_flow
    import fluxode.kernels as K
    gen = torch.Generator().manual_seed(3)
    A = torch.rand(300, generator=gen, dtype=torch.float64) + 0.1
    grad = lambda W: A * W - 1.0  # noqa: E731  (quadratic)
    W0 = torch.randn(300, generator=gen, dtype=torch.float64)
    steps = 25
    for name, hp in [("adamw", dict(lr=1e-2, weight_decay=0.1)),
                     ("adam", dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
                     ("rmsprop", dict(lr=1e-3, momentum=0.9, centered=True))]:
        flow = make_flow(name, **hp)
        _, Ws = run_discrete(flow, grad, W0, steps)
        W = W0.clone()
        bufs = [torch.zeros_like(W) for _ in range(3)]
        for k in range(1, steps + 1):
            g = grad(W)
            if name == "rmsprop":
                K.rmsprop_step_(W, g, bufs[0], grad_avg=bufs[1], momentum_buf=bufs[2],
                                backend="reference", **hp)
            else:
                K.adam_step_(W, g, bufs[0], bufs[1], step=k, vmax=bufs[2],
                             decoupled=name == "adamw", backend="reference", **hp)
        torch.testing.assert_close(W, Ws[-1], rtol=1e-12, atol=1e-14, msg=name)


def test_bench_function_quick():
    from fluxode.kernels.bench import run_cpu_bench
    recs = run_cpu_bench(max_log2=16, repeats=2, min_log2=16)
    impls = {r["impl"] for r in recs}
    assert {"fluxode", "torch-fused", "torch-foreach", "torch-single"} <= impls
    for r in recs:
        assert {"impl", "n", "seconds", "gbps", "ratio_vs_torch_fused"} <= set(r)
        assert r["seconds"] > 0


if __name__ == "__main__" and "--triton-child" in sys.argv:
    _triton_child()


# ------------------------------------------------------- the backend switch where steps run

@pytest.mark.parametrize("flow,hp,twin", [
    ("adamw", {}, "AdamW"), ("adam", {"amsgrad": True, "weight_decay": 0.1}, "Adam"),
    ("rmsprop", {"centered": True, "momentum": 0.9}, "RMSprop")])
def test_flow_optimizer_fused_backend_tracks_torch(flow, hp, twin, monkeypatch):
    """FlowOptimizer(backend="fused") runs the kernels (a spy counts the kernel launches; the
    reference backend launches none); it stays within float32 rounding of torch's
    single-tensor step (the reference backend is bitwise, tested in test_verify)."""
    import fluxode.kernels as K
    from fluxode.optim import FlowOptimizer
    calls = []
    for kname in ("adam_step_", "rmsprop_step_", "adam_group_step_", "rmsprop_group_step_"):
        real = getattr(K, kname)
        monkeypatch.setattr(K, kname, lambda *a, _real=real, _n=kname, **k: (
            calls.append(_n), _real(*a, **k))[1])
    p = torch.nn.Parameter(torch.ones(5))
    p.grad = torch.ones(5)
    FlowOptimizer([p], flow, lr=1e-2, backend="reference", **hp).step()
    assert calls == []  # the spy sees only kernel launches
    torch.manual_seed(0)
    a, b = torch.nn.Linear(50, 20), torch.nn.Linear(50, 20)
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(64, 50), torch.randn(64, 20)
    oa = getattr(torch.optim, twin)(a.parameters(), lr=1e-2, foreach=False, **hp)
    ob = FlowOptimizer(b.parameters(), flow, lr=1e-2, backend="fused", **hp)
    for _ in range(30):
        for net, opt in ((a, oa), (b, ob)):
            opt.zero_grad()
            ((net(x) - y) ** 2).mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
    kernel = "rmsprop" if flow == "rmsprop" else "adam"
    assert len(calls) >= 30 and set(calls) <= {f"{kernel}_step_", f"{kernel}_group_step_"}


def test_fused_backend_refuses_flows_without_a_kernel():
    from fluxode.optim import FlowOptimizer
    p = [torch.nn.Parameter(torch.zeros(3))]
    p[0].grad = torch.ones(3)
    with pytest.raises(ValueError, match="no fused step for flow 'sgd'"):
        FlowOptimizer(p, "sgd", backend="fused").step()
    with pytest.raises(ValueError, match="backend must be one of"):
        FlowOptimizer(p, "adam", backend="triton")
    FlowOptimizer(p, "sgd", backend="auto").step()  # auto falls back to the reference


def test_integrators_use_the_fused_field():
    """integrate(backend="fused") equals the reference field on CPU (the CPU fused field is the
    core field), and the kernel is really called."""
    import fluxode.kernels as K
    from fluxode.integrate import integrate
    from fluxode.problems import make_problem
    calls = []
    real = K.adam_field

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)
    prob = make_problem("rosenbrock", dtype=torch.float64)
    ref = integrate("adamw", prob, T=20.0, method="rk4", step_size=0.5, backend="reference")
    K.adam_field = spy
    try:
        fused = integrate("adamw", prob, T=20.0, method="rk4", step_size=0.5, backend="fused")
    finally:
        K.adam_field = real
    assert calls and torch.equal(ref.W, fused.W)


def test_ode_optimizer_fused_field_is_the_reference_field(dtype=torch.float32):
    """FlowOptimizer rk4 with backend="auto" (the CPU field, clocks on the device)
    follows backend="reference" bit for bit in float32 (the clocks' rates computed in their
    own dtype, as vector_field does; float64: test_integrators_use_the_fused_field), and
    calls the kernel."""
    import fluxode.kernels as K
    from fluxode.optim import FlowOptimizer
    calls, real = [], K.cpu.adam_field

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)
    for method in ("rk4",):
        final = {}
        for backend in ("reference", "auto"):
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(),
                                        torch.nn.Linear(5, 2)).to(dtype)
            x, y = torch.randn(16, 6, dtype=dtype), torch.randint(0, 2, (16,))
            opt = FlowOptimizer(model.parameters(), "adamw", method, lr=1e-2, backend=backend)

            def closure():
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss
            K.cpu.adam_field = spy
            try:
                for _ in range(2):
                    opt.step(closure)
            finally:
                K.cpu.adam_field = real
            final[backend] = [p.detach().clone() for p in model.parameters()]
        assert all(torch.equal(a, b) for a, b in zip(final["reference"], final["auto"]))
    assert calls
    w = [torch.nn.Parameter(torch.zeros(2))]  # the default: the fused field for ODE methods only
    assert FlowOptimizer(w, "adamw", "rk4").backend == "auto"
    assert FlowOptimizer(w, "adamw").backend == "reference"
    assert FlowOptimizer(w, "adamw", foreach=True).backend == "auto"


# ------------------------------------------------- flows carry their own fused kernels

def test_flow_step_and_field_call_the_flows_own_kernel():
    """fluxode.kernels.flow_step_/flow_field_into ask the flow (no name dispatch): a user flow
    with a fused step is used; the reference backend never calls it."""
    import fluxode.kernels as K
    from fluxode.flows import SGD

    class Counted(SGD):
        name = "counted-sgd"

        def __init__(self, **hp):
            super().__init__(**hp)
            self.calls = []

        def fused_step_(self, tau, S, g, h=1.0, backend="auto"):
            self.calls.append(("step", tau, backend))
            S["W"].sub_(g, alpha=self.eta(tau))
            return True

        def fused_field_into(self, tau, S, g, out, backend="auto"):
            self.calls.append(("field", tau, backend))
            torch.mul(g, -self.eta(tau), out=out["W"])
            return True

    flow = Counted(lr=0.5)
    S, g = {"W": torch.ones(3)}, torch.full((3,), 2.0)
    assert K.flow_step_(flow, 0.0, S, g, backend="fused")
    assert torch.equal(S["W"], torch.zeros(3))
    out = {"W": torch.empty(3)}
    assert K.flow_field_into(flow, 1.0, S, g, out, backend="auto")
    assert torch.equal(out["W"], torch.full((3,), -1.0))
    assert not K.flow_step_(flow, 0.0, S, g, backend="reference")
    assert not K.flow_field_into(flow, 0.0, S, g, out, backend="reference")
    assert flow.calls == [("step", 0.0, "fused"), ("field", 1.0, "auto")]


def test_flows_without_a_fused_kernel_refuse_backend_fused_by_name():
    import fluxode.kernels as K
    from fluxode.flows import make_flow
    S, g = {"W": torch.zeros(3)}, torch.ones(3)
    with pytest.raises(ValueError, match="no fused step for flow 'adagrad'"):
        K.flow_step_(make_flow("adagrad"), 0.0, S, g, backend="fused")
    assert not K.flow_step_(make_flow("adagrad"), 0.0, S, g, backend="auto")
    with pytest.raises(ValueError, match="no fused field for flow 'rmsprop'"):
        K.flow_field_into(make_flow("rmsprop"), 0.0, S, g, {}, backend="fused")
    with pytest.raises(ValueError, match="no fused field for flow 'adam' with amsgrad"):
        K.flow_field_into(make_flow("adam", amsgrad=True), 0.0, S, g, {}, backend="fused")
    adam = make_flow("adam")
    S = adam.init(torch.zeros(3))
    assert not K.flow_step_(adam, 0.0, S, g, h=0.5, backend="fused")  # h ≠ 1: no kernel


# ------------------------------------------- multi-tensor steps through FlowOptimizer

def _model_params(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(30, 20), (20,), (5, 4, 3), (1,), (257,), (16, 16)]
    return [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in shapes]


def _run_pair(make_torch, make_flux, dtype, steps=6, skip=True, seed=0):
    """Step a torch optimizer and a FlowOptimizer on identical parameters with identical
    gradients; on some steps some parameters get no gradient (torch skips them, so their
    step counts drift apart: per-tensor step counts in one group)."""
    a, b = _model_params(dtype, seed), _model_params(dtype, seed)
    ta, fb = make_torch(a), make_flux(b)
    gen = torch.Generator().manual_seed(seed + 1)
    for k in range(steps):
        for i, (p, q) in enumerate(zip(a, b)):
            if skip and k > 0 and i % (k + 1) == 1:  # tensor i skips steps k with k+1 | i-1
                p.grad = q.grad = None
            else:
                g = torch.randn(p.shape, generator=gen).to(dtype)
                p.grad, q.grad = g.clone(), g.clone()
        ta.step()
        fb.step()
    return a, b, ta, fb


@pytest.mark.parametrize("twin,hp", [
    ("AdamW", dict(lr=1e-2, weight_decay=0.05)),
    ("Adam", dict(lr=1e-2, weight_decay=0.05, amsgrad=True)),
    ("Adam", dict(lr=1e-2, betas=(0.5, 0.9), maximize=True, decoupled_weight_decay=True,
                  weight_decay=0.1)),
    ("AdamW", dict(lr=1e-2, amsgrad=True, maximize=True))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_flow_optimizer_group_step_is_torch_fused_bit_for_bit(twin, hp, dtype):
    """FlowOptimizer(backend="fused") on CPU steps each param group with ONE call of the fused
    op torch's AdamW(fused=True) calls, each tensor at its own step count: bit for bit
    torch's fused=True, every parameter and every state tensor, in float32, float64 and
    in low precision. There fluxode keeps the state in the parameter's dtype as torch does
    (a state dict moves between them unchanged) and, like torch's fused op, computes each
    step in float32 and rounds each stored buffer once."""
    import fluxode.kernels as K
    from fluxode.optim import FlowOptimizer
    calls = []
    real = K.adam_group_step_

    def spy(*a, **kw):
        calls.append(len(a[0]))
        return real(*a, **kw)
    K.adam_group_step_ = spy
    try:
        a, b, ta, fb = _run_pair(
            lambda ps: getattr(torch.optim, twin)(ps, fused=True, **hp),
            lambda ps: FlowOptimizer(ps, twin.lower(), backend="fused", **hp), dtype)
    finally:
        K.adam_group_step_ = real
    assert len(calls) == 6, "one multi-tensor call per step (one group, one dtype)"
    for p, q in zip(a, b):
        assert torch.equal(p, q)
        sp, sq = ta.state[p], fb.state[q]
        assert float(sp["step"]) == float(sq["step"])
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if key in sp:
                assert sq[key].dtype == sp[key].dtype == dtype
                assert torch.equal(sp[key], sq[key]), key
    steps = {float(fb.state[q]["step"]) for q in b}
    assert len(steps) > 1, "the test must exercise different step counts in one group"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_auto_backend_takes_low_precision_parameters(dtype):
    """backend="auto" (and torch's fused=True/foreach=True flags) on bfloat16/float16
    parameters takes the fused path (no "g.dtype must be float32" error) with the state in
    the parameter dtype, like torch's, and tracks a float32 run. (The exact low-precision
    semantics are pinned bit for bit above and against the reference in the group cases;
    this is a sanity bound: per step, rounding m, v, b and W to `dtype` perturbs the update by
    a relative 2^-7 at most (bfloat16 unit roundoff 2^-8, twice), so over the run
    |W_low - W_32| <= 2^-6 * sum_k |update_k| + 3 * 2^-8 |W| (W rounded once per step).)"""
    from fluxode.optim import FlowOptimizer
    for flow, hp in (("adamw", dict(lr=1e-2)), ("adam", dict(lr=1e-2, amsgrad=True)),
                     ("rmsprop", dict(lr=1e-3, momentum=0.9))):
        flags = [dict(backend="auto"), dict(foreach=True)] + (
            [dict(fused=True)] if flow != "rmsprop" else [])  # torch's RMSprop has no fused
        for kw in flags:
            lo, hi = _model_params(dtype), _model_params(torch.float32)
            for q, p in zip(lo, hi):
                p.data.copy_(q.data.float())
            opts = [FlowOptimizer(lo, flow, **kw, **hp), FlowOptimizer(hi, flow, **kw, **hp)]
            moved = [torch.zeros_like(p) for p in hi]
            gen = torch.Generator().manual_seed(3)
            for _ in range(3):
                for q, p in zip(lo, hi):
                    g = torch.randn(p.shape, generator=gen)
                    q.grad, p.grad = g.to(dtype), g.to(dtype).float()
                before = [p.detach().clone() for p in hi]
                for o in opts:
                    o.step()
                for u, p, b in zip(moved, hi, before):
                    u += (p.detach() - b).abs()
            for q, p, u in zip(lo, hi, moved):
                state = [t for t in opts[0].state[q].values()
                         if isinstance(t, torch.Tensor) and t.dim()]
                assert state and all(t.dtype == dtype for t in state)
                bound = 2.0**-6 * u + 3 * 2.0**-8 * p.detach().abs()
                assert ((q.float() - p).abs() <= bound).all(), (flow, kw)


@pytest.mark.parametrize("hp", [dict(), dict(centered=True, momentum=0.9, weight_decay=0.1),
                                dict(momentum=0.5, maximize=True)])
def test_flow_optimizer_rmsprop_group_is_torch_bit_for_bit(hp):
    """RMSprop's group step (torch's multi-tensor ops in the single-tensor op order) is bit
    for bit torch's single-tensor RMSprop, float32, with per-tensor step drift."""
    from fluxode.optim import FlowOptimizer
    import fluxode.kernels as K
    calls = []
    real = K.rmsprop_group_step_

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)
    K.rmsprop_group_step_ = spy
    try:
        a, b, ta, fb = _run_pair(
            lambda ps: torch.optim.RMSprop(ps, lr=1e-2, foreach=False, **hp),
            lambda ps: FlowOptimizer(ps, "rmsprop", lr=1e-2, backend="fused", **hp),
            torch.float32)
    finally:
        K.rmsprop_group_step_ = real
    assert len(calls) == 6
    for p, q in zip(a, b):
        assert torch.equal(p, q)
        for key, t in ta.state[p].items():
            if key != "step" and isinstance(t, torch.Tensor):
                assert torch.equal(t, fb.state[q][key]), key


def test_group_step_validation():
    import fluxode.kernels as K
    w = [torch.zeros(3), torch.zeros(2, 2)]
    z = lambda: [torch.zeros_like(x) for x in w]  # noqa: E731
    with pytest.raises(ValueError, match="steps must be a list of 2"):
        K.adam_group_step_(w, z(), z(), z(), steps=[1])
    with pytest.raises(ValueError, match="step must be an integer >= 1"):
        K.adam_group_step_(w, z(), z(), z(), steps=[1, 0])
    with pytest.raises(ValueError, match=r"m\[1\] must have the same shape"):
        K.adam_group_step_(w, z(), [torch.zeros(3), torch.zeros(4)], z(), steps=[1, 1])
    with pytest.raises(ValueError, match=r"v\[0\].dtype must be torch.float32"):
        K.adam_group_step_(w, z(), z(), [torch.zeros(3, dtype=torch.float64),
                                          torch.zeros(2, 2)], steps=[1, 1])
    with pytest.raises(ValueError, match="vmaxs must be given"):
        K.adam_group_step_(w, z(), z(), z(), steps=[1, 1], amsgrad=True)
    with pytest.raises(ValueError, match="must be a list of 2 tensors"):
        K.rmsprop_group_step_(w, z(), z()[:1])
    with pytest.raises(ValueError, match="non-empty list"):
        K.rmsprop_group_step_([], [], [])
    with pytest.raises(ValueError, match="grad_avgs must be given"):
        K.rmsprop_group_step_(w, z(), z(), centered=True)
    # auto falls back (False) where backend="fused" names the problem
    from fluxode.flows import make_flow
    states = [{"W": x, "m": torch.zeros_like(x, dtype=torch.float64), "v": torch.zeros_like(x),
               "c1": torch.tensor(0.0, dtype=torch.float64),
               "c2": torch.tensor(0.0, dtype=torch.float64)} for x in w]
    assert not make_flow("adam").fused_group_step_([0.0, 0.0], states, z(), 1.0, "auto")
    with pytest.raises(ValueError, match="dtype"):
        make_flow("adam").fused_group_step_([0.0, 0.0], states, z(), 1.0, "fused")
    assert not make_flow("adam").fused_group_step_([0.0, 0.0], states, z(), 0.5, "fused")
