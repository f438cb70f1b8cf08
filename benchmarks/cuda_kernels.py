"""CUDA check + benchmark of fluxode's Triton kernels (no installs, no network).

    PYTHONPATH=. python benchmarks/cuda_kernels.py --out benchmarks/results/cuda.json

1. Correctness: Triton Adam/AdamW (every weight-decay x amsgrad combination, bf16 W),
   RMSprop variants and the Adam field against torch.optim single-tensor on the GPU
   (m, v bit-identical; W within 2 ulp at operand scale; bf16 W within 1 bf16 ulp).
2. Sweep N = 2^20 .. 2^30 (sizes that do not fit in 60% of free memory are skipped):
   fluxode Triton AdamW vs torch AdamW(fused=True) vs a copy kernel (Triton copy and
   dst.copy_(src)), timed with CUDA events. Bytes per fp32 parameter: AdamW 28, RMSprop
   (centered, momentum) 36, Adam field 28, copy 8.
Writes JSON records {kernel, impl, n, ms, gbps, ratio_vs_copy, ratio_vs_torch_fused}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

BYTES = {"adamw": 28, "rmsprop": 36, "adam-field": 28, "copy": 8}


def _ulp_err(a, b, old):
    a, b = a.float(), b.float()
    scale = torch.maximum(torch.maximum(a.abs(), b.abs()), old.float().abs())
    ulp = torch.nextafter(scale, torch.full_like(scale, float("inf"))) - scale
    return ((a - b).abs() / ulp).max().item()


def correctness(dev) -> list[str]:
    from fluxode.kernels import adam_field, adam_step_, reference, rmsprop_step_
    fails = []
    gen = torch.Generator(device=dev).manual_seed(0)
    n = (1 << 20) + 7
    r = lambda: torch.randn(n, device=dev, generator=gen)  # noqa: E731
    for dec in (False, True):
        for wd in (0.0, 0.1):
            for ams in (False, True):
                w, g, m, v = r(), r(), 0.1 * r(), 0.01 * r().square()
                vmax = v * 1.5
                p = torch.nn.Parameter(w.clone())
                p.grad = g.clone()
                opt = (torch.optim.AdamW if dec else torch.optim.Adam)(
                    [p], lr=1e-2, weight_decay=wd, amsgrad=ams, foreach=False)
                opt.state[p] = {"step": torch.tensor(4.0), "exp_avg": m.clone(),
                                "exp_avg_sq": v.clone()}
                if ams:
                    opt.state[p]["max_exp_avg_sq"] = vmax.clone()
                opt.step()
                W, M, V, VM = w.clone(), m.clone(), v.clone(), vmax.clone()
                adam_step_(W, g, M, V, step=5, lr=1e-2, weight_decay=wd, decoupled=dec,
                           amsgrad=ams, vmax=VM, backend="fused")
                st = opt.state[p]
                tag = f"adam dec={dec} wd={wd} ams={ams}"
                if not torch.equal(M, st["exp_avg"]):
                    fails.append(f"{tag}: m not bit-identical")
                if not torch.equal(V, st["exp_avg_sq"]):
                    fails.append(f"{tag}: v not bit-identical")
                e = _ulp_err(W, p.detach(), w)
                if e > 2:
                    fails.append(f"{tag}: W {e:.1f} ulp")
    # bf16 W against the fp32-master reference
    w, g = r(), r()
    Wb, W32 = w.bfloat16(), w.bfloat16().float()
    z = [torch.zeros(n, device=dev) for _ in range(4)]
    adam_step_(Wb, g, z[0], z[1], step=1, lr=1e-2, weight_decay=0.1, decoupled=True)
    reference.adam_step_(W32, g, z[2], z[3], step=1, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8,
                         weight_decay=0.1, decoupled=True, amsgrad=False, vmax=None,
                         maximize=False)
    ref = W32.bfloat16().float()
    if ((Wb.float() - ref).abs() > ref.abs() * 2**-7 + 1e-30).any():
        fails.append("bf16 adamw: W more than 1 bf16 ulp from the fp32-master reference")
    # RMSprop
    for cen in (False, True):
        for mom in (0.0, 0.9):
            w, g, s = r(), r(), r().square()
            a, b = 0.1 * r(), 0.1 * r()
            bufs = [x.clone() for x in (w, s, a, b)]
            reference.rmsprop_step_(bufs[0], g, bufs[1], lr=1e-2, alpha=0.99, eps=1e-8,
                                    weight_decay=0.01, momentum=mom, centered=cen,
                                    grad_avg=bufs[2], momentum_buf=bufs[3], maximize=False)
            W, S, A, B = w.clone(), s.clone(), a.clone(), b.clone()
            rmsprop_step_(W, g, S, lr=1e-2, alpha=0.99, weight_decay=0.01, momentum=mom,
                          centered=cen, grad_avg=A, momentum_buf=B, backend="fused")
            if not torch.equal(S, bufs[1]):
                fails.append(f"rmsprop cen={cen} mom={mom}: square_avg not bit-identical")
            e = _ulp_err(W, bufs[0], w)
            if e > 4:
                fails.append(f"rmsprop cen={cen} mom={mom}: W {e:.1f} ulp")
    # field
    w, g, m, v = r(), r(), 0.1 * r(), r().square()
    for c in ((0.0, 0.0), (0.4, 0.02)):
        a = adam_field(w, m, v, *c, g, lr=1e-2, weight_decay=0.1, backend="fused")
        b = adam_field(w, m, v, *c, g, lr=1e-2, weight_decay=0.1, backend="reference")
        if not (torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])):
            fails.append(f"field c={c}: dm/dv not bit-identical")
        e = _ulp_err(a[0], b[0], 1e-2 * (0.1 * w.abs() + 1.0))
        if e > 3:
            fails.append(f"field c={c}: dW {e:.1f} ulp")
    return fails


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


def sweep(dev, max_log2: int, reps: int, budget_s: float) -> list[dict]:
    from fluxode.kernels import adam_field, adam_step_, rmsprop_step_
    from fluxode.kernels.triton_kernels import copy_
    recs, t0 = [], time.time()
    for log2 in range(20, max_log2 + 1):
        n = 1 << log2
        free, _ = torch.cuda.mem_get_info()
        if 9 * 4 * n > 0.6 * free:  # largest live set: 4 ours + 4 torch + 1 spare fp32 bufs
            print(f"skip 2^{log2}: needs {9 * 4 * n / 2**30:.1f} GiB, {free / 2**30:.1f} free")
            break
        if time.time() - t0 > budget_s:
            print(f"stop before 2^{log2}: time budget {budget_s:.0f} s spent")
            break
        res = {}
        w, g, m, v = (torch.randn(n, device=dev), torch.randn(n, device=dev),
                      torch.zeros(n, device=dev), torch.zeros(n, device=dev))
        res["copy", "triton"] = _time(lambda: copy_(m, w), reps)
        res["copy", "torch"] = _time(lambda: m.copy_(w), reps)
        k = [0]

        def ours():
            k[0] += 1
            adam_step_(w, g, m, v, step=k[0], lr=1e-3, weight_decay=1e-2, decoupled=True,
                       backend="fused")
        res["adamw", "fluxode-triton"] = _time(ours, reps)
        out = (torch.empty_like(w), torch.empty_like(w), torch.empty_like(w))
        res["adam-field", "fluxode-triton"] = _time(
            lambda: adam_field(w, m, v, 0.3, 0.01, g, lr=1e-3, weight_decay=1e-2, out=out,
                               backend="fused"), reps)
        del out
        a = torch.zeros(n, device=dev)
        res["rmsprop", "fluxode-triton"] = _time(
            lambda: rmsprop_step_(w, g, v, lr=1e-3, momentum=0.9, centered=True, grad_avg=a,
                                  momentum_buf=m, backend="fused"), reps)
        del a
        p = torch.nn.Parameter(torch.randn(n, device=dev))
        p.grad = torch.randn(n, device=dev)
        opt = torch.optim.AdamW([p], lr=1e-3, weight_decay=1e-2, fused=True)
        res["adamw", "torch-fused"] = _time(opt.step, reps)
        del p, opt, w, g, m, v
        torch.cuda.empty_cache()
        copy_ms = res["copy", "torch"]
        for (kern, impl), ms in res.items():
            gbps = BYTES[kern] * n / (ms * 1e-3) / 1e9
            rec = dict(kernel=kern, impl=impl, n=n, ms=ms, gbps=gbps,
                       ratio_vs_copy=gbps / (BYTES["copy"] * n / (copy_ms * 1e-3) / 1e9))
            if kern == "adamw":
                rec["ratio_vs_torch_fused"] = res["adamw", "torch-fused"] / ms
            recs.append(rec)
            print(f"2^{log2:<3} {kern:<11} {impl:<15} {ms:9.3f} ms {gbps:8.1f} GB/s "
                  f"x copy {rec['ratio_vs_copy']:.3f}"
                  + (f" x torch fused {rec['ratio_vs_torch_fused']:.3f}"
                     if "ratio_vs_torch_fused" in rec else ""), flush=True)
    return recs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Triton kernel check and benchmark (CUDA).")
    ap.add_argument("--out", default="benchmarks/results/cuda.json")
    ap.add_argument("--max-log2", type=int, default=30)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=180.0, help="time budget for the sweep")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("cuda_kernels.py: no CUDA device visible to torch "
              f"(torch {torch.__version__}); this script needs a CUDA GPU. Nothing run.",
              file=sys.stderr)
        return 2
    try:
        import triton
    except Exception as err:
        print(f"cuda_kernels.py: triton is not importable ({err}); it needs triton.",
              file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    t0 = time.time()
    fails = correctness(dev)
    print(f"correctness: {'OK' if not fails else 'FAILED'} ({time.time() - t0:.1f} s)")
    for f in fails:
        print("  " + f)
    recs = sweep(dev, a.max_log2, a.reps, a.budget_s)
    out = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
               triton=triton.__version__, correctness_failures=fails, records=recs,
               bytes_per_param=BYTES)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out} ({time.time() - t0:.1f} s total)")
    return 1 if fails else 0


if __name__ == "__main__":
    raise SystemExit(main())
