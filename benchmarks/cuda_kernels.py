"""fluxode's Triton kernels on a device: correctness records, then a bandwidth sweep.

Normally run through ``benchmarks/gpu_check.py`` (the one command); standalone:

    PYTHONPATH=. python benchmarks/cuda_kernels.py --out benchmarks/results/cuda_kernels.json

Correctness (``correctness``): every kernel, through fluxode's public kernel API with
backend="fused", against fluxode's reference (the core discretizer, torch's single-tensor
update) computed on the CPU from the same inputs. Every comparison is one record
{name, ok, detail, metrics}; criteria:

* float32 states (m, v, vmax, square_avg, grad_avg): bit-identical (the kernels follow the
  reference op by op; tests/test_kernels.py pins this under the interpreter);
* W: <= 2 float32 ulps (RMSprop with momentum: 4; its buffer 4) counted at the scale of the
  update, max(|W_old|, |W_ref|, |W_ref - W_old|), where the rounding errors are made: an ulp
  at max(|W_old|, |W_new|) alone inflates the error when W crosses zero (the old check's
  false "4.0 ulp" failures). The 2 ulps: torch's CPU sqrt is not correctly rounded (1 ulp)
  and the quotient's rounding propagates (1 ulp);
* the field's dW: <= 3 ulps at the operand scale lr·(|u| + λ|W|) (decay can cancel u);
  dm, dv bit-identical; NaN exactly where the reference has NaN;
* low precision (bfloat16/float16 W or states): the exact-match rate against the float32
  reference rounded to that dtype (round to nearest even) must be >= 99.9%, and no element
  more than 1 ulp of that dtype away. Truncation instead of rounding makes about half the
  elements differ, so it fails (the 2^-7 relative tolerance of the old check accepted it);
* inputs include a tail of tiny gradients (|g| ~ 1e-8, v ~ g², where eps dominates the
  denominator) so an eps in the wrong place fails the W criterion.

``bug_variant(name)`` swaps in a deliberately wrong helper ("bf16-truncate": truncating
bfloat16 stores; "eps-unscaled": denominator (sqrt(v) + eps)/sqrt(1-β₂ᵏ)); the self-test
(tests/test_device_check.py) requires each to FAIL these checks under TRITON_INTERPRET=1.

Sweep (``sweep``, CUDA only): N = 2^20 .. 2^30 under a time budget (sizes beyond 60% of free
memory are skipped): Triton AdamW (one flat tensor, and the group kernel over 200 tensors of
mixed sizes) vs torch AdamW(fused=True) on the same tensors, RMSprop, the Adam field and a
copy, timed with CUDA events (median of --reps). Bytes per fp32 parameter: AdamW 28,
RMSprop centered+momentum 36, Adam field 28, copy 8.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

BYTES = {"adamw": 28, "adamw-group200": 28, "rmsprop": 36, "adam-field": 28, "copy": 8}
MATCH_RATE = 0.999


# --- error measures ------------------------------------------------------------------------

def _spacing(x: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """The spacing of ``dtype`` at |x| (float32 result)."""
    a = x.abs().to(dtype)
    return (torch.nextafter(a, torch.tensor(float("inf"), dtype=dtype)).float() - a.float())


def ulps_at_update(new: torch.Tensor, ref: torch.Tensor, old: torch.Tensor) -> float:
    """max |new - ref| in float32 ulps at max(|old|, |ref|, |ref - old|)."""
    new, ref, old = new.float().cpu(), ref.float().cpu(), old.float().cpu()
    scale = torch.maximum(torch.maximum(old.abs(), ref.abs()), (ref - old).abs())
    both_nan = new.isnan() & ref.isnan()
    err = ((new - ref).abs() / _spacing(scale))[~both_nan]
    return float(err.max()) if err.numel() else 0.0


def ulps_at(new: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor) -> float:
    new, ref, scale = new.float().cpu(), ref.float().cpu(), scale.float().cpu()
    both_nan = new.isnan() & ref.isnan()
    err = ((new - ref).abs() / _spacing(torch.maximum(scale.abs(), ref.abs())))[~both_nan]
    return float(err.max()) if err.numel() else 0.0


def bits_differ(a: torch.Tensor, b: torch.Tensor) -> int:
    a, b = a.cpu(), b.cpu()
    return int(((a != b) & ~(a.isnan() & b.isnan())).sum())


def lowp_match(got: torch.Tensor, ref32: torch.Tensor) -> tuple[float, float]:
    """(exact-match rate, max ulps of got's dtype) of a low-precision result against the
    float32 reference rounded to that dtype (torch's CPU cast: round to nearest even)."""
    got = got.cpu()
    want = ref32.cpu().to(got.dtype)
    g, w = got.float(), want.float()
    same = (g == w) | (g.isnan() & w.isnan())
    err = ((g - w).abs() / _spacing(w, got.dtype))[~same]
    return float(same.float().mean()), (float(err.max()) if err.numel() else 0.0)


# --- inputs --------------------------------------------------------------------------------

def _inputs(n: int, seed: int, dev) -> dict:
    """A mid-training Adam/RMSprop state on ``dev`` (float32): W, g, m, v, vmax, b, with the
    last eighth of the entries at tiny gradient scale (|g| ~ 1e-8, v ~ g²) where eps matters."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda: torch.randn(n, generator=gen)  # noqa: E731
    w, g, m = r(), r(), 0.1 * r()
    v = 0.01 * r().square()
    tail = slice(n - n // 8, n)
    g[tail] *= 1e-8
    m[tail] *= 1e-8
    v[tail] = (1e-8 * r()[tail]).square()
    vmax = v * torch.rand(n, generator=gen) * 2
    b = 0.1 * r()
    return {k: x.to(dev) for k, x in dict(W=w, g=g, m=m, v=v, vmax=vmax, b=b).items()}


def _cpu(d: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in d.items()}


# --- deliberate bugs (the self-test) -------------------------------------------------------

@contextlib.contextmanager
def bug_variant(name: str | None):
    """Replace one helper of the Triton kernels with a wrong one (None: no change). Valid
    under TRITON_INTERPRET=1, where helpers are looked up at call time; on a GPU a kernel
    compiled before may be reused from Triton's cache, so run variants in a fresh process."""
    if name is None:
        yield
        return
    import triton
    import triton.language as tl

    from fluxode.kernels import triton_kernels as T

    @triton.jit
    def bf16_truncate(x):
        bits = x.to(tl.uint32, bitcast=True)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)

    @triton.jit
    def eps_unscaled(v, bc2_sqrt, eps):
        return tl.div_rn(tl.sqrt_rn(v) + eps, bc2_sqrt)

    attr, bad = {"bf16-truncate": ("_bf16_rne", bf16_truncate),
                 "eps-unscaled": ("_adam_denom", eps_unscaled)}[name]
    good = getattr(T, attr)
    setattr(T, attr, bad)
    try:
        yield
    finally:
        setattr(T, attr, good)


# --- correctness ---------------------------------------------------------------------------

class Recorder:
    """Collects records; ``emit`` is called after each (gpu_check writes its JSON there)."""

    def __init__(self, section: str, emit=None, verbose: bool = True, only=None):
        self.section, self.records, self.emit, self.verbose = section, [], emit, verbose
        self.only = only  # a predicate on record names (None: all)

    def run(self, name: str, fn) -> dict | None:
        if self.only is not None and not self.only(name):
            return None
        t0 = time.time()
        try:
            ok, detail, metrics = fn()
        except Exception as err:  # one failing check never stops the others
            ok, detail, metrics = False, f"{type(err).__name__}: {err}", {
                "traceback": traceback.format_exc()[-2000:]}
        rec = dict(section=self.section, name=name, ok=bool(ok), detail=detail,
                   metrics=metrics, seconds=round(time.time() - t0, 3))
        self.records.append(rec)
        if self.verbose:
            print(f"{'ok  ' if ok else 'FAIL'} {self.section}/{name}: {detail}", flush=True)
        if self.emit is not None:
            self.emit(rec)
        return rec


def _verdict(checks: list[tuple[str, float, float]]) -> tuple[bool, str, dict]:
    """checks: (what, measured, allowed) with measured <= allowed required."""
    bad = [f"{w} {m:g} > {a:g}" for w, m, a in checks if not (m <= a)]
    metrics = {w: m for w, m, _ in checks}
    return (not bad, "; ".join(bad) if bad else
            ", ".join(f"{w} {m:g}" for w, m, _ in checks), metrics)


def _adam_case(dev, n, seed, *, dec, wd, ams, maximize=False, betas=(0.9, 0.999), step=5):
    from fluxode.kernels import adam_step_
    x = _inputs(n, seed, dev)
    ref = _cpu(x)
    hp = dict(lr=1e-2, betas=betas, eps=1e-8, weight_decay=wd, decoupled=dec, amsgrad=ams,
              maximize=maximize)
    adam_step_(ref["W"], ref["g"], ref["m"], ref["v"], step=step, vmax=ref["vmax"],
               backend="reference", **hp)
    W0 = x["W"].cpu().clone()
    adam_step_(x["W"], x["g"], x["m"], x["v"], step=step, vmax=x["vmax"], backend="fused", **hp)
    checks = [("m bits differ", bits_differ(x["m"], ref["m"]), 0),
              ("v bits differ", bits_differ(x["v"], ref["v"]), 0),
              ("W ulp@update", ulps_at_update(x["W"], ref["W"], W0), 2)]
    if ams:
        checks.append(("vmax bits differ", bits_differ(x["vmax"], ref["vmax"]), 0))
    return _verdict(checks)


def _rms_case(dev, n, seed, *, centered, momentum, wd=0.01, maximize=False):
    from fluxode.kernels import rmsprop_step_
    x = _inputs(n, seed, dev)
    x["s"] = x["v"] + x["m"].square()  # square_avg >= grad_avg²
    ref = _cpu(x)
    hp = dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=wd, momentum=momentum,
              centered=centered, maximize=maximize)
    rmsprop_step_(ref["W"], ref["g"], ref["s"], grad_avg=ref["m"], momentum_buf=ref["b"],
                  backend="reference", **hp)
    W0, b0 = x["W"].cpu().clone(), x["b"].cpu().clone()
    rmsprop_step_(x["W"], x["g"], x["s"], grad_avg=x["m"], momentum_buf=x["b"],
                  backend="fused", **hp)
    checks = [("square_avg bits differ", bits_differ(x["s"], ref["s"]), 0)]
    if centered:
        checks.append(("grad_avg bits differ", bits_differ(x["m"], ref["m"]), 0))
    if momentum:
        checks.append(("buffer ulp", ulps_at(x["b"], ref["b"], momentum * b0), 4))
    checks.append(("W ulp@update", ulps_at_update(x["W"], ref["W"], W0), 4 if momentum else 2))
    return _verdict(checks)


def _field_case(dev, n, seed, *, c, dec, nan=False):
    from fluxode.kernels import adam_field
    x = _inputs(n, seed, dev)
    if nan:
        for k, step in (("v", 97), ("m", 101), ("g", 89)):
            x[k][3::step] = float("nan")
    ref = _cpu(x)
    hp = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, decoupled=dec)
    a = adam_field(x["W"], x["m"], x["v"], *c, x["g"], backend="fused", **hp)
    b = adam_field(ref["W"], ref["m"], ref["v"], *c, ref["g"], backend="reference", **hp)
    nan_mismatch = sum(int((p.cpu().isnan() != q.isnan()).sum()) for p, q in zip(a[:3], b[:3]))
    u = b[0] + (1e-3 * ref["W"] if dec else 0)  # the quotient term, decay taken out
    scale = u.abs() + 1e-3 * ref["W"].abs()      # operand scale lr·(|u| + λ|W|)
    return _verdict([("dm bits differ", bits_differ(a[1], b[1]), 0),
                     ("dv bits differ", bits_differ(a[2], b[2]), 0),
                     ("NaN placement differs", nan_mismatch, 0),
                     ("dW ulp@operands", ulps_at(a[0], b[0], scale), 3),
                     ("dc1, dc2 differ", float((a[3], a[4]) != (b[3], b[4])), 0)])


def _group_shapes(n: int) -> list[tuple]:
    """Mixed shapes: a zero-element tensor, small ones, and one spanning several blocks."""
    return [(3, 5), (7,), (0,), (2, 3, 4), (257,), (1,), (max(n // 4, 1), 2), (n,)]


def _group_case(dev, n, seed, *, kind):
    import fluxode.kernels as K
    shapes = _group_shapes(n)
    steps = [1 + (3 * i) % 7 for i in range(len(shapes))]  # every tensor at its own step
    xs = [_inputs(int(torch.Size(s).numel()), seed + i, dev) for i, s in enumerate(shapes)]
    for x, s in zip(xs, shapes):
        for k in x:
            x[k] = x[k].view(s)
        x["s"] = x["v"] + x["m"].square()
    refs, singles = [_cpu(x) for x in xs], [{k: v.clone() for k, v in x.items()} for x in xs]
    W0 = [x["W"].cpu().clone() for x in xs]
    L = lambda xs, k: [x[k] for x in xs]  # noqa: E731
    if kind == "adam":
        hp = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, decoupled=True,
                  amsgrad=True)
        K.adam_group_step_(L(xs, "W"), L(xs, "g"), L(xs, "m"), L(xs, "v"), steps=steps,
                           vmaxs=L(xs, "vmax"), backend="fused", **hp)
        K.adam_group_step_(L(refs, "W"), L(refs, "g"), L(refs, "m"), L(refs, "v"),
                           steps=steps, vmaxs=L(refs, "vmax"), backend="reference", **hp)
        for x, k in zip(singles, steps):
            f = {n_: t.view(-1) for n_, t in x.items()}
            K.adam_step_(f["W"], f["g"], f["m"], f["v"], step=k, vmax=f["vmax"],
                         backend="fused", **hp)
        names, wtol = ("W", "m", "v", "vmax"), 2
    else:
        hp = dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.01, momentum=0.9,
                  centered=True)
        K.rmsprop_group_step_(L(xs, "W"), L(xs, "g"), L(xs, "s"), grad_avgs=L(xs, "m"),
                              momentum_bufs=L(xs, "b"), backend="fused", **hp)
        K.rmsprop_group_step_(L(refs, "W"), L(refs, "g"), L(refs, "s"),
                              grad_avgs=L(refs, "m"), momentum_bufs=L(refs, "b"),
                              backend="reference", **hp)
        for x in singles:
            f = {n_: t.view(-1) for n_, t in x.items()}
            K.rmsprop_step_(f["W"], f["g"], f["s"], grad_avg=f["m"], momentum_buf=f["b"],
                            backend="fused", **hp)
        names, wtol = ("W", "s", "m", "b"), 4
    checks = [("group vs single-tensor bits differ",
               sum(bits_differ(x[k], s[k]) for x, s in zip(xs, singles) for k in names), 0),
              ("W ulp@update", max(ulps_at_update(x["W"], r["W"], w0)
                                   for x, r, w0 in zip(xs, refs, W0)), wtol)]
    exact = [k for k in names if k in ("m", "v", "vmax", "s")]
    checks.append(("states bits differ",
                   sum(bits_differ(x[k], r[k]) for x, r in zip(xs, refs) for k in exact), 0))
    return _verdict(checks)


def _lowp_case(dev, n, seed, *, kind, wdt, sdt):
    """Low-precision W (and states): each low-precision buffer against the float32
    reference (computed on float32 copies of the same inputs) rounded to its dtype."""
    import fluxode.kernels as K
    x = _inputs(n, seed, dev)
    x["s"] = x["v"] + x["m"].square()
    lo = {k: (t.to(wdt) if k == "W" or k == "g" else t.to(sdt)) for k, t in x.items()}
    ref = {k: t.cpu().float().clone() for k, t in lo.items()}  # same (rounded) inputs, f32
    if kind == "adam":
        hp = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, decoupled=True,
                  amsgrad=True)
        K.adam_step_(lo["W"], lo["g"], lo["m"], lo["v"], step=5, vmax=lo["vmax"],
                     backend="fused", **hp)
        K.adam_step_(ref["W"], ref["g"], ref["m"], ref["v"], step=5, vmax=ref["vmax"],
                     backend="reference", **hp)
        names = ("W", "m", "v", "vmax")
    else:
        hp = dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.01, momentum=0.9,
                  centered=True)
        K.rmsprop_step_(lo["W"], lo["g"], lo["s"], grad_avg=lo["m"], momentum_buf=lo["b"],
                        backend="fused", **hp)
        K.rmsprop_step_(ref["W"], ref["g"], ref["s"], grad_avg=ref["m"], momentum_buf=ref["b"],
                        backend="reference", **hp)
        names = ("W", "s", "m", "b")
    checks = []
    for k in names:
        if lo[k].dtype == torch.float32:  # float32 master states: as in the float32 cases
            if k == "b":
                checks.append(("b ulp", ulps_at(lo[k], ref[k], 0.9 * x["b"]), 4))
            else:
                checks.append((f"{k} bits differ", bits_differ(lo[k], ref[k]), 0))
            continue
        rate, ulp = lowp_match(lo[k], ref[k])
        checks += [(f"{k} match rate shortfall", max(0.0, MATCH_RATE - rate), 0),
                   (f"{k} max ulp({lo[k].dtype})", ulp, 1)]
    ok, detail, metrics = _verdict(checks)
    metrics.update({f"{k} match rate": lowp_match(lo[k], ref[k])[0] for k in names
                    if lo[k].dtype != torch.float32})
    return ok, detail + " | " + ", ".join(f"{k}: {v:.5f}" for k, v in metrics.items()
                                          if "match rate" in k and "shortfall" not in k), metrics


def cast_probe(dev) -> tuple[bool, str, dict]:
    """How the platform's own fp32→bf16 cast ``x.to(tl.bfloat16, fp_downcast_rounding="rtne")``
    rounds: 'rne' or 'truncate'. Triton's interpreter truncates (expected there, and detected);
    a GPU must round to nearest even. fluxode's kernels do not rely on it: they round with
    integer arithmetic (``triton_kernels._bf16_rne``), checked by the match rates."""
    import triton
    import triton.language as tl

    @triton.jit
    def cast(X, Y, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        x = tl.load(X + offs, mask=offs < n)
        tl.store(Y + offs, x.to(tl.bfloat16, fp_downcast_rounding="rtne"), mask=offs < n)
    # 1 + k·2^-9 for k = 1..7: between bf16 neighbours, above and below their midpoints
    x = torch.tensor([1 + k * 2.0**-9 for k in range(1, 8)] + [-1 - 3 * 2.0**-9],
                     dtype=torch.float32)
    y = torch.empty(x.numel(), dtype=torch.bfloat16)
    xd, yd = x.to(dev), y.to(dev)
    cast[(1,)](xd, yd, x.numel(), BLOCK=8)
    got = yd.cpu()
    rne, trunc = x.to(torch.bfloat16), (x.view(torch.int32) >> 16 << 16).view(torch.float32)
    mode = ("rne" if torch.equal(got, rne) else
            "truncate" if torch.equal(got.float(), trunc) else "other")
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    expected = "truncate" if interp else "rne"
    where = "interpreter (TRITON_INTERPRET=1)" if interp else "device"
    return mode == expected, (f"native bf16 cast on the {where}: {mode} (expected {expected}; "
                              "fluxode's kernels round by integer arithmetic)"), {"mode": mode}


def correctness(dev, n: int = (1 << 20) + 7, emit=None, verbose: bool = True,
                only=None) -> list[dict]:
    """Every correctness record on ``dev`` (small n for the interpreter; ``only``: a
    predicate choosing records by name)."""
    rec = Recorder("kernels", emit, verbose, only)
    rec.run("bf16 cast probe", lambda: cast_probe(dev))
    seed = 0
    for dec in (False, True):
        for wd in (0.0, 0.1):
            for ams in (False, True):
                seed += 1
                rec.run(f"adam dec={int(dec)} wd={wd} ams={int(ams)}",
                        lambda s=seed, d=dec, w=wd, a=ams: _adam_case(dev, n, s, dec=d, wd=w,
                                                                      ams=a))
    rec.run("adam maximize betas=(0.3,0.9) step=1",
            lambda: _adam_case(dev, n, 50, dec=False, wd=0.1, ams=False, maximize=True,
                               betas=(0.3, 0.9), step=1))
    for cen in (False, True):
        for mom in (0.0, 0.9):
            rec.run(f"rmsprop centered={int(cen)} momentum={mom}",
                    lambda c=cen, m=mom: _rms_case(dev, n, 60 + int(c) + 2 * int(bool(m)),
                                                   centered=c, momentum=m))
    for c in ((0.0, 0.0), (0.4, 0.02)):
        for dec in (False, True):
            rec.run(f"adam field c={c} dec={int(dec)}",
                    lambda c=c, d=dec: _field_case(dev, n, 70, c=c, dec=d))
    rec.run("adam field NaN propagation",
            lambda: _field_case(dev, n, 71, c=(0.4, 0.02), dec=True, nan=True))
    for kind in ("adam", "rmsprop"):
        rec.run(f"{kind} group (8 tensors, own step counts)",
                lambda k=kind: _group_case(dev, n, 80, kind=k))
    for kind, wdt, sdt in (("adam", torch.bfloat16, torch.float32),
                           ("adam", torch.bfloat16, torch.bfloat16),
                           ("adam", torch.float16, torch.float16),
                           ("rmsprop", torch.bfloat16, torch.bfloat16)):
        rec.run(f"{kind} W {str(wdt)[6:]} states {str(sdt)[6:]}",
                lambda k=kind, a=wdt, b=sdt: _lowp_case(dev, n, 90, kind=k, wdt=a, sdt=b))
    return rec.records


# --- sweep ---------------------------------------------------------------------------------

def _time(fn, reps: int) -> float:
    """Median milliseconds of fn() over reps CUDA-event-timed runs (after one warm-up)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    return times[len(times) // 2]


def sweep(dev, max_log2: int = 30, reps: int = 10, budget_s: float = 120.0, emit=None,
          verbose: bool = True, min_log2: int = 20) -> list[dict]:
    """Bandwidth records (one per kernel, impl and size), each emitted as it is measured."""
    from benchmarks.bench_multi_tensor import mixed_sizes
    from fluxode.kernels import adam_field, adam_group_step_, adam_step_, rmsprop_step_
    from fluxode.kernels.triton_kernels import copy_
    recs, t0 = [], time.time()

    def record(kern, impl, n, ms, ref_ms=None, copy_ms=None):
        gbps = BYTES[kern] * n / (ms * 1e-3) / 1e9
        r = dict(section="sweep", name=f"{kern} {impl} 2^{n.bit_length() - 1}", ok=True,
                 kernel=kern, impl=impl, n=n, ms=ms, gbps=gbps)
        if copy_ms:
            r["ratio_vs_copy"] = gbps / (BYTES["copy"] * n / (copy_ms * 1e-3) / 1e9)
        if ref_ms:
            r["ratio_vs_torch_fused"] = ref_ms / ms
        recs.append(r)
        if verbose:
            print(f"2^{n.bit_length() - 1:<3} {kern:<15} {impl:<15} {ms:9.3f} ms "
                  f"{gbps:8.1f} GB/s" + (f"  x copy {r['ratio_vs_copy']:.3f}"
                                         if "ratio_vs_copy" in r else "")
                  + (f"  x torch fused {r['ratio_vs_torch_fused']:.3f}" if ref_ms else ""),
                  flush=True)
        if emit is not None:
            emit(r)

    for log2 in range(min_log2, max_log2 + 1):
        n = 1 << log2
        free, _ = torch.cuda.mem_get_info()
        if 12 * 4 * n > 0.6 * free:  # largest live set: 4 flat + 4 group + 4 torch buffers
            print(f"skip 2^{log2}: needs {12 * 4 * n / 2**30:.1f} GiB, "
                  f"{free / 2**30:.1f} free")
            break
        if time.time() - t0 > budget_s:
            print(f"stop before 2^{log2}: time budget {budget_s:.0f} s spent")
            break
        w, g, m, v = (torch.randn(n, device=dev), torch.randn(n, device=dev),
                      torch.zeros(n, device=dev), torch.zeros(n, device=dev))
        copy_ms = _time(lambda: m.copy_(w), reps)
        record("copy", "torch", n, copy_ms, copy_ms=copy_ms)
        record("copy", "triton", n, _time(lambda: copy_(m, w), reps), copy_ms=copy_ms)
        p = torch.nn.Parameter(torch.randn(n, device=dev))
        p.grad = torch.randn(n, device=dev)
        opt = torch.optim.AdamW([p], lr=1e-3, weight_decay=1e-2, fused=True)
        ref_ms = _time(opt.step, reps)
        del p, opt
        k = [0]

        def ours():
            k[0] += 1
            adam_step_(w, g, m, v, step=k[0], lr=1e-3, weight_decay=1e-2, decoupled=True,
                       backend="fused")
        record("adamw", "torch-fused", n, ref_ms, ref_ms, copy_ms)
        record("adamw", "fluxode-triton", n, _time(ours, reps), ref_ms, copy_ms)
        # the group kernel over 200 tensors of mixed sizes (what a model costs), each
        # allocated on its own as a model's parameters are (so 16-byte aligned)
        sizes = mixed_sizes(n)
        ws, gs = [torch.randn(k, device=dev) for k in sizes], [torch.randn(k, device=dev)
                                                                for k in sizes]
        ms_, vs = [torch.zeros(k, device=dev) for k in sizes], [torch.zeros(k, device=dev)
                                                                 for k in sizes]
        ps = [torch.nn.Parameter(t.clone()) for t in ws]
        for p_, g_ in zip(ps, gs):
            p_.grad = g_.clone()
        opt = torch.optim.AdamW(ps, lr=1e-3, weight_decay=1e-2, fused=True)
        gref = _time(opt.step, reps)
        del ps, opt
        record("adamw-group200", "torch-fused", n, gref, gref, copy_ms)
        record("adamw-group200", "fluxode-triton", n, _time(
            lambda: adam_group_step_(ws, gs, ms_, vs, steps=[3] * len(ws), lr=1e-3,
                                     weight_decay=1e-2, decoupled=True, backend="fused"),
            reps), gref, copy_ms)
        del ws, gs, ms_, vs
        out = (torch.empty_like(w), torch.empty_like(w), torch.empty_like(w))
        record("adam-field", "fluxode-triton", n, _time(
            lambda: adam_field(w, m, v, 0.3, 0.01, g, lr=1e-3, weight_decay=1e-2, out=out,
                               backend="fused"), reps), copy_ms=copy_ms)
        del out
        a = torch.zeros(n, device=dev)
        record("rmsprop", "fluxode-triton", n, _time(
            lambda: rmsprop_step_(w, g, v, lr=1e-3, momentum=0.9, centered=True, grad_avg=a,
                                  momentum_buf=m, backend="fused"), reps), copy_ms=copy_ms)
        del a, w, g, m, v
        torch.cuda.empty_cache()
    return recs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Triton kernel check and benchmark (CUDA).")
    ap.add_argument("--out", default="benchmarks/results/cuda_kernels.json")
    ap.add_argument("--max-log2", type=int, default=30)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=120.0, help="time budget for the sweep")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("cuda_kernels.py: no CUDA device visible to torch; use benchmarks/gpu_check.py "
              "(it also runs interpreted on CPU). Nothing run.", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = []

    def emit(r):
        records.append(r)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(device=torch.cuda.get_device_name(),
                                       records=records), indent=1))
        tmp.replace(out)
    correctness(torch.device("cuda"), emit=emit)
    sweep(torch.device("cuda"), a.max_log2, a.reps, a.budget_s, emit=emit)
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
