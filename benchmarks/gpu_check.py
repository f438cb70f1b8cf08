"""The one prepared device check (no installs, no network):

    PYTHONPATH=. python benchmarks/gpu_check.py --out benchmarks/results

and, with the same kernels run by Triton's interpreter on the CPU (small sizes, no GPU):

    TRITON_INTERPRET=1 PYTHONPATH=. python benchmarks/gpu_check.py --device cpu --small \\
        --out /tmp/gpu_check

Sections, in this order, every check in its own try/except (a failure is a record, never the
end of the run), and ``<out>/gpu_check.json`` rewritten after every record:

1. paths users run, through the public front-ends with backend="fused" (each also checks,
   by counting calls, that the Triton kernel really ran rather than a fallback):
   * FlowOptimizer on a 200-tensor model (mixed sizes; 2^22 parameters, --small 2^12) with
     per-tensor step counts (some tensors lack a gradient on some steps): one launch per
     step, and the result against torch.optim.AdamW(foreach=False) on the same device;
   * ``integrate`` of AdamW on mlp-digits with the fused field (rk4) against the reference
     field;
   * ODE training of an MLP (FlowOptimizer(method="rk4", backend="fused")) against the
     reference backend, the loss going down.
2. kernels: ``benchmarks/cuda_kernels.correctness`` (criteria in that file: ulps at the
   update's scale, bf16/fp16 by exact-match rate >= 99.9% against the float32 result
   rounded to nearest even, a probe of the platform's own bf16 cast).
3. sweep (GPU only): ``benchmarks/cuda_kernels.sweep`` with what remains of the time
   budget (--budget-s, default 270 s for the whole run, so it ends within 5 minutes on one
   H200 including start-up and Triton compiles).

Exit status: 0 every record ok, 1 some record failed, 2 no device.
``--variant bf16-truncate|eps-unscaled`` runs with a deliberately wrong kernel helper (the
self-test, tests/test_device_check.py: it must fail).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import cuda_kernels  # noqa: E402
from benchmarks.bench_multi_tensor import mixed_sizes  # noqa: E402


class JsonLog:
    """Records written to ``path`` after each one (atomically: a crash keeps every record so
    far)."""

    def __init__(self, path: Path, header: dict):
        self.path, self.header, self.records = path, header, []
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write()

    def emit(self, rec: dict) -> None:
        self.records.append(rec)
        self._write()

    def _write(self) -> None:
        failed = [r["name"] for r in self.records if not r.get("ok", True)]
        doc = dict(self.header, records=self.records, failed=failed,
                   written=time.strftime("%Y-%m-%d %H:%M:%S"))
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=str))
        tmp.replace(self.path)


@contextlib.contextmanager
def counting(module, name: str):
    """Count calls of module.name (a spy that still calls it)."""
    real, calls = getattr(module, name), []

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)
    setattr(module, name, spy)
    try:
        yield calls
    finally:
        setattr(module, name, real)


def _spacing(x: torch.Tensor) -> torch.Tensor:
    return cuda_kernels._spacing(x)


# --- 1. paths users run --------------------------------------------------------------------

def check_flow_optimizer(dev, total: int, steps: int = 5):
    """FlowOptimizer(backend="fused") on 200 tensors vs torch AdamW(foreach=False).

    Bound: each step's W is within 2 ulps of torch's at the update's scale (the kernel
    criterion) and m, v differ from torch's by at most an ulp per step (torch's CUDA kernels
    may contract multiply-adds where fluxode's reference does not; on the CPU they are
    identical), so after K steps W is within 3K ulps at the path's scale
    max(|W_0|, |W_K|, sum_k |ΔW_k|)."""
    from fluxode.kernels import triton_kernels as T
    from fluxode.optim import FlowOptimizer
    sizes = mixed_sizes(total)
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(n, generator=gen) for n in sizes]
    a = [torch.nn.Parameter(t.clone().to(dev)) for t in base]
    b = [torch.nn.Parameter(t.clone().to(dev)) for t in base]
    ta = torch.optim.AdamW(a, lr=1e-3, weight_decay=1e-2, foreach=False)
    fb = FlowOptimizer(b, "adamw", lr=1e-3, weight_decay=1e-2, backend="fused")
    moved = [torch.zeros(n) for n in sizes]
    with counting(T, "adam_group_step_") as launches:
        for k in range(steps):
            before = [p.detach().cpu().clone() for p in a]
            for i, (p, q) in enumerate(zip(a, b)):
                if k > 0 and i % (k + 1) == 1:  # tensor i skips step k: per-tensor step counts
                    p.grad = q.grad = None
                    continue
                g = torch.randn(sizes[i], generator=gen).to(dev)
                p.grad, q.grad = g.clone(), g.clone()
            ta.step()
            fb.step()
            for u, p, w in zip(moved, a, before):
                u += (p.detach().cpu() - w).abs()
    worst = 0.0
    for p, q, w0, u in zip(a, b, base, moved):
        pc, qc = p.detach().cpu(), q.detach().cpu()
        scale = torch.maximum(torch.maximum(w0.abs(), pc.abs()), u)
        worst = max(worst, float(((qc - pc).abs() / _spacing(scale)).max()))
    step_counts = sorted({float(fb.state[q]["step"]) for q in b})
    return cuda_kernels._verdict([
        ("Triton group launches per step beyond 1", len(launches) - steps, 0),
        ("W ulp vs torch AdamW", worst, 3 * steps),
        ("distinct step counts missing", max(0, 2 - len(step_counts)), 0)])


def check_integrate(dev):
    """integrate("adamw", mlp-digits, rk4, backend="fused") vs the reference field. Bound:
    each of the NFE field evaluations is within 3 ulps (relative ~2e-7) of the reference,
    so the solution differs by ~NFE·2e-7 relative along the path; 1e-4·|W| + 1e-5 allows
    ten times that at NFE = 40."""
    from fluxode.integrate import integrate
    from fluxode.kernels import triton_kernels as T
    from fluxode.problems import make_problem
    prob = make_problem("mlp-digits", dtype=torch.float32, device=dev)
    ref = integrate("adamw", prob, T=5.0, method="rk4", step_size=0.5, backend="reference")
    with counting(T, "adam_field") as calls:
        got = integrate("adamw", prob, T=5.0, method="rk4", step_size=0.5, backend="fused")
    a, b = got.W.float().cpu(), ref.W.float().cpu()
    excess = float(((a - b).abs() - (1e-4 * b.abs() + 1e-5)).max())
    ok, detail, metrics = cuda_kernels._verdict([
        ("Triton field calls missing", max(0, 1 - len(calls)), 0),
        ("excess over 1e-4|W|+1e-5", max(0.0, excess), 0)])
    metrics.update(triton_field_calls=len(calls), nfe=getattr(got, "stats", {}).get("nfe"))
    return ok, detail, metrics


def check_ode_training(dev, steps: int = 5):
    """Five rk4 steps of FlowOptimizer(method="rk4", backend="fused") on an MLP against the
    reference backend on the same data (bound as for integrate: 4 field evaluations per
    step); the loss must go down."""
    from fluxode.kernels import triton_kernels as T
    from fluxode.optim import FlowOptimizer
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(),
                                torch.nn.Linear(128, 10)).to(dev) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    x, y = torch.randn(256, 64, device=dev), torch.randn(256, 10, device=dev)
    losses = []
    with counting(T, "adam_field") as calls:
        for net, backend in zip(nets, ("reference", "fused")):
            opt = FlowOptimizer(net.parameters(), "adamw", method="rk4", lr=1e-3,
                                backend=backend)

            def closure(net=net, opt=opt):
                opt.zero_grad()
                loss = ((net(x) - y) ** 2).mean()
                loss.backward()
                return loss
            first = float(opt.step(closure).detach())
            for _ in range(steps - 1):
                opt.step(closure)
            losses.append((first, float(closure().detach())))
    excess = max(float(((p.detach() - q.detach()).abs() - (1e-4 * p.detach().abs() + 1e-5))
                       .max()) for p, q in zip(nets[0].parameters(), nets[1].parameters()))
    ok, detail, metrics = cuda_kernels._verdict([
        ("Triton field calls missing", max(0, 1 - len(calls)), 0),
        ("loss not decreasing (fused)", float(losses[1][1] >= losses[1][0]), 0),
        ("excess over 1e-4|W|+1e-5", max(0.0, excess), 0)])
    metrics.update(losses=losses, triton_field_calls=len(calls))
    return ok, detail, metrics


# --- main ----------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu: the Triton kernels run in the interpreter (TRITON_INTERPRET=1)")
    ap.add_argument("--small", action="store_true", help="interpreter-sized problems")
    ap.add_argument("--budget-s", type=float, default=270.0, help="time budget, whole run")
    ap.add_argument("--variant", default=None, choices=("bf16-truncate", "eps-unscaled"),
                    help="a deliberately wrong kernel helper (the self-test: must fail)")
    ap.add_argument("--sections", default="paths,kernels,sweep")
    a = ap.parse_args(argv)
    t0 = time.time()
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    if a.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch; run this on a CUDA machine, or "
              "with TRITON_INTERPRET=1 --device cpu --small on the CPU", file=sys.stderr)
        return 2
    if a.device == "cpu" and not interp:
        print("gpu_check: --device cpu needs TRITON_INTERPRET=1 (Triton's interpreter)",
              file=sys.stderr)
        return 2
    import triton

    import fluxode.kernels as K
    dev = torch.device(a.device)
    header = dict(device=(torch.cuda.get_device_name() if a.device == "cuda"
                          else f"CPU, Triton interpreter ({platform.processor() or 'cpu'})"),
                  torch=torch.__version__, triton=triton.__version__, interpreted=interp,
                  small=a.small, variant=a.variant, argv=sys.argv[1:])
    log = JsonLog(Path(a.out) / "gpu_check.json", header)
    sections = a.sections.split(",")
    n_kernel = 4099 if a.small else (1 << 20) + 7
    ctx = K.triton_on_cpu() if a.device == "cpu" else contextlib.nullcontext()
    def section(name, fn):
        """A section in its own try/except: an error outside its records is a record too."""
        try:
            fn()
        except Exception as err:
            import traceback
            log.emit(dict(section=name, name=f"{name} (section)", ok=False,
                          detail=f"{type(err).__name__}: {err}",
                          metrics={"traceback": traceback.format_exc()[-2000:]}))
            print(f"FAIL {name}: {type(err).__name__}: {err}", flush=True)

    def paths():
        rec = cuda_kernels.Recorder("paths", log.emit)
        rec.run("FlowOptimizer fused, 200 tensors",
                lambda: check_flow_optimizer(dev, 1 << (12 if a.small else 22),
                                             3 if a.small else 5))
        rec.run("integrate adamw mlp-digits rk4, fused field", lambda: check_integrate(dev))
        rec.run("ODE training of an MLP (rk4), fused field",
                lambda: check_ode_training(dev, 2 if a.small else 5))

    def sweep():
        left = a.budget_s - (time.time() - t0) - 20  # the last size may overrun a little
        if left > 5:
            cuda_kernels.sweep(dev, budget_s=left, emit=log.emit)
        else:
            log.emit(dict(section="sweep", name="skipped", ok=True,
                          detail=f"no time left in the {a.budget_s:.0f} s budget"))

    with ctx, cuda_kernels.bug_variant(a.variant):
        if "paths" in sections:
            section("paths", paths)
        if "kernels" in sections:
            section("kernels", lambda: cuda_kernels.correctness(dev, n_kernel, emit=log.emit))
        if "sweep" in sections and a.device == "cuda" and not a.small:
            section("sweep", sweep)
    failed = [r["name"] for r in log.records if not r.get("ok", True)]
    print(f"\ngpu_check: {len(log.records)} records, {len(failed)} failed, "
          f"{time.time() - t0:.1f} s; JSON: {log.path}")
    for name in failed:
        print(f"  FAILED {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
