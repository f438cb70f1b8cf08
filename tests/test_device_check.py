"""The device check (benchmarks/gpu_check.py, benchmarks/cuda_kernels.py) judged on the CPU.

* Its kernel section, with the Triton kernels run by Triton's interpreter (TRITON_INTERPRET=1,
  small sizes), passes with fluxode's kernels and FAILS with each deliberately wrong variant:
  truncating bfloat16 stores (caught by the exact-match rate against the float32 result
  rounded to nearest even) and an eps outside the bias correction (caught by the W criterion
  on the tiny-gradient tail of the inputs). Under the interpreter the platform's own bf16
  cast truncates; the probe record must say so.
* Its ulp measure counts at the scale of the update (no false failures where W crosses 0).
* The whole check (every section but the GPU-only sweep) passes interpreted (slow).
* Every Triton kernel compiles for an H200 (sm_90) without a GPU, and the group kernel's
  full blocks load in 16-byte vectors (slow).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("triton")

VARIANTS = (None, "bf16-truncate", "eps-unscaled")
# the records each wrong variant runs: those it must fail, and float32 controls it must pass
ONLY = {"bf16-truncate": ("adam W", "rmsprop W", "adam dec=1 wd=0.1 ams=1"),
        "eps-unscaled": ("adam dec", "adam group", "rmsprop centered=1 momentum=0.9")}


def _child() -> None:
    """Subprocess entry (TRITON_INTERPRET=1): the kernel section per variant, as JSON."""
    import fluxode.kernels as K
    from benchmarks.cuda_kernels import bug_variant, correctness
    out = {}
    for v in VARIANTS:
        only = None if v is None else (lambda name, p=ONLY[v]: name.startswith(p))
        with K.triton_on_cpu(), bug_variant(v):
            recs = correctness(torch.device("cpu"), n=1031, verbose=False, only=only)
        out[str(v)] = {r["name"]: [r["ok"], r["detail"]] for r in recs}
    print("RESULTS " + json.dumps(out))


def _run(args, timeout=900):
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def variant_results():
    proc = _run([__file__, "--child"])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULTS "):])


def test_kernel_check_passes_with_fluxodes_kernels(variant_results):
    res = variant_results["None"]
    bad = {k: v[1] for k, v in res.items() if not v[0]}
    assert not bad, bad
    assert len(res) >= 25
    assert "truncate (expected truncate" in res["bf16 cast probe"][1]


def test_truncating_bf16_rounding_fails_the_check(variant_results):
    res = variant_results["bf16-truncate"]
    failed = {k for k, v in res.items() if not v[0]}
    lowp_bf16 = {k for k in res if "bfloat16" in k}
    assert lowp_bf16 and lowp_bf16 <= failed, (lowp_bf16 - failed)
    assert all("match rate" in res[k][1] for k in lowp_bf16)
    assert res["adam dec=1 wd=0.1 ams=1"][0], "float32 kernels do not round to bfloat16"


def test_wrong_eps_placement_fails_the_check(variant_results):
    res = variant_results["eps-unscaled"]
    failed = {k for k, v in res.items() if not v[0]}
    adam_steps = {k for k in res if k.startswith("adam dec")}
    assert adam_steps and adam_steps <= failed
    assert "adam group (8 tensors, own step counts)" in failed
    assert all("W ulp@update" in res[k][1] for k in adam_steps)
    assert res["rmsprop centered=1 momentum=0.9"][0], "RMSprop has no bias correction"


def test_ulps_are_counted_at_the_update_scale():
    """A weight crossing zero: old = 1e-3, new ≈ -1e-3. An error of 2 ulps of the update
    (|Δ| = 2e-3) is 2 ulps at the update's scale, but 4 at max(|old|, |new|)."""
    from benchmarks.cuda_kernels import ulps_at_update
    old = torch.tensor([1e-3])
    ref = torch.tensor([-0.9990234e-3])
    spacing_update = float(torch.nextafter(torch.tensor(2e-3), torch.tensor(1.0)) - 2e-3)
    new = ref + 2 * spacing_update
    assert ulps_at_update(new, ref, old) <= 2.0
    spacing_w = float(torch.nextafter(old, torch.tensor(1.0)) - old)
    assert float((new - ref).abs() / spacing_w) >= 3.9


def test_lowp_match_tells_rounding_from_truncation():
    from benchmarks.cuda_kernels import lowp_match
    x = torch.randn(10000, generator=torch.Generator().manual_seed(0))
    rne = x.to(torch.bfloat16)
    trunc = (x.view(torch.int32) >> 16 << 16).view(torch.float32).to(torch.bfloat16)
    assert lowp_match(rne, x) == (1.0, 0.0)
    rate, ulp = lowp_match(trunc, x)
    assert 0.3 < rate < 0.7 and ulp == 1.0


@pytest.mark.slow
def test_whole_device_check_passes_interpreted(tmp_path):
    """gpu_check.py --device cpu --small under TRITON_INTERPRET=1: every record ok, the JSON
    complete, the paths section first."""
    proc = _run(["benchmarks/gpu_check.py", "--device", "cpu", "--small", "--out",
                 str(tmp_path)])
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert doc["failed"] == [] and doc["interpreted"]
    sections = [r["section"] for r in doc["records"]]
    assert sections[:3] == ["paths"] * 3 and "kernels" in sections


@pytest.mark.slow
def test_self_test_variant_fails_the_whole_check(tmp_path):
    proc = _run(["benchmarks/gpu_check.py", "--device", "cpu", "--small", "--sections",
                 "kernels", "--variant", "bf16-truncate", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert proc.returncode == 1 and doc["failed"]


def _sweep_child() -> None:
    """Subprocess entry (TRITON_INTERPRET=1): the GPU-only sweep's code at 2^12 on the CPU,
    CUDA events and memory queries stubbed (timings meaningless, the code path exercised)."""
    import benchmarks.cuda_kernels as C
    import fluxode.kernels as K
    torch.cuda.mem_get_info = lambda: (1 << 34, 1 << 34)
    C._time = lambda fn, reps: (fn(), fn(), 1.0)[2]
    with K.triton_on_cpu():
        recs = C.sweep(torch.device("cpu"), max_log2=12, min_log2=12, reps=1, verbose=False)
    print("RESULTS " + json.dumps(sorted((r["kernel"], r["impl"]) for r in recs)))


@pytest.mark.slow
def test_sweep_code_runs_interpreted():
    proc = _run([__file__, "--sweep-child"])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    kinds = {tuple(x) for x in json.loads(lines[-1][len("RESULTS "):])}
    assert {("adamw-group200", "fluxode-triton"), ("adamw-group200", "torch-fused"),
            ("adamw", "fluxode-triton"), ("rmsprop", "fluxode-triton"),
            ("adam-field", "fluxode-triton"), ("copy", "triton")} <= kinds


def _signature(fn, args, kwargs):
    """Triton signature/constexprs of a recorded launch (tensors → typed pointers)."""
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
             torch.float64: "fp64", torch.int64: "i64", torch.int32: "i32"}
    sig, const = {}, {}
    params = fn.params
    for p, v in zip(params, list(args) + [kwargs.get(p.name) for p in params[len(args):]]):
        if p.is_constexpr:
            sig[p.name], const[p.name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[p.name] = "*" + names[v.dtype]
        elif isinstance(v, bool):
            sig[p.name] = "i1"
        elif isinstance(v, int):
            sig[p.name] = "i64" if abs(v) >= 2**31 else "i32"
        else:
            sig[p.name] = "fp32"
    return sig, const


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu():
    """Record the launches the host functions make (CPU tensors, nothing runs), compile each
    for an H200 (CUDA sm_90) with Triton's compiler, and check the PTX: every kernel
    compiles (the first real device run will not spend its minutes on a type error), fp
    fusion is off as requested, and the group kernel's full blocks use 16-byte vector loads
    when the pointers are aligned."""
    import triton
    from triton.backends.compiler import GPUTarget

    import fluxode.kernels.triton_kernels as T
    launches = []

    class Rec:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            return lambda *a, **kw: launches.append((self.fn, a, kw))
    names = ["_adam_kernel", "_rmsprop_kernel", "_adam_field_kernel", "_adam_group_kernel",
             "_rmsprop_group_kernel"]
    real = {n: getattr(T, n) for n in names}
    for n in names:
        setattr(T, n, Rec(real[n]))
    try:
        f32 = lambda *s: torch.zeros(*s)  # noqa: E731
        for wdt, sdt in ((torch.float32,) * 2, (torch.bfloat16, torch.float32),
                         (torch.bfloat16,) * 2, (torch.float16,) * 2):
            w, g, m = f32(64).to(wdt), f32(64).to(wdt), f32(64).to(sdt)
            T.adam_step_(w, g, m, m.clone(), step=3, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                         weight_decay=0.1, decoupled=True, amsgrad=True, vmax=m.clone(),
                         maximize=False)
            T.rmsprop_step_(w, g, m, lr=1e-3, alpha=0.99, eps=1e-8, weight_decay=0.1,
                            momentum=0.9, centered=True, grad_avg=m.clone(),
                            momentum_buf=m.clone(), maximize=True)
            ws = [f32(64).to(wdt), f32(4096).to(wdt)]
            L = lambda dt: [torch.zeros_like(x, dtype=dt) for x in ws]  # noqa: E731
            T.adam_group_step_(ws, L(wdt), L(sdt), L(sdt), steps=[1, 2], lr=1e-3, beta1=0.9,
                               beta2=0.999, eps=1e-8, weight_decay=0.1, decoupled=False,
                               amsgrad=True, vmaxs=L(sdt), maximize=False)
            T.rmsprop_group_step_(ws, L(wdt), L(sdt), lr=1e-3, alpha=0.99, eps=1e-8,
                                  weight_decay=0.0, momentum=0.9, centered=True,
                                  grad_avgs=L(sdt), momentum_bufs=L(sdt), maximize=False)
        for c in ((0.0, 0.0), (0.4, 0.02)):
            T.adam_field(f32(64), f32(64), f32(64), *c, f32(64), lr=1e-3, beta1=0.9,
                         beta2=0.999, eps=1e-8, weight_decay=0.1, decoupled=True,
                         maximize=False, out=None)
    finally:
        for n in names:
            setattr(T, n, real[n])
    assert len(launches) == 4 * 4 + 2
    target = GPUTarget("cuda", 90, 32)
    for fn, args, kw in launches:
        opts = {k: kw.pop(k) for k in ("num_warps", "enable_fp_fusion") if k in kw}
        assert opts.get("enable_fp_fusion") is False
        sig, const = _signature(fn, args, kw)
        src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=const)
        k = triton.compile(src, target=target, options=opts)
        ptx = k.asm["ptx"]
        assert ".target sm_90" in ptx
        if fn is real["_adam_group_kernel"] and const.get("ALIGNED") and sig["W0"] == "*fp32":
            assert "ld.global.v4" in ptx, "full blocks of the group kernel do not vectorize"


if __name__ == "__main__" and "--child" in sys.argv:
    _child()
if __name__ == "__main__" and "--sweep-child" in sys.argv:
    _sweep_child()
