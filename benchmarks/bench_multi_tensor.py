"""CPU: FlowOptimizer(backend="fused") against torch AdamW(fused=True), same run, interleaved.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_multi_tensor.py [--rounds 15]
        [--steps 5] [--json F]

Two models, float32, AdamW (lr 1e-3, weight decay 1e-2):
  * "200 tensors": 200 parameter tensors of mixed sizes (log-uniform 2^6..2^16, the last one
    adjusted), 2^22 parameters in all;
  * "one 2^24 tensor".
Each round times ``--steps`` steps of each of, in an order that alternates between rounds:

  torch AdamW(fused=True)        ``opt.step()``
  fluxode FlowOptimizer(fused)   ``opt.step()`` (FlowOptimizer's bookkeeping + the flow hook)
  fluxode flow hook              ``AdamW.fused_group_step_`` on prepared state dicts (the hook
                                 FlowOptimizer calls: validation, the kernel, the clocks)
  fluxode kernel only            ``fluxode.kernels.adam_group_step_`` (validation + kernel)

and reports the median per-step time of each and the ratio torch_time / time (> 1: faster
than torch; the issue's target for FlowOptimizer is >= 0.9). Gradients are fixed random
tensors (no backward pass is timed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from fluxode.io import write_json  # noqa: E402

HP = dict(lr=1e-3, weight_decay=1e-2)


def mixed_sizes(total: int = 1 << 22, count: int = 200, seed: int = 0) -> list[int]:
    """``count`` sizes, log-uniform in [2^6, 2^16], scaled so they sum to ``total``."""
    gen = torch.Generator().manual_seed(seed)
    raw = torch.exp2(6 + 10 * torch.rand(count, generator=gen, dtype=torch.float64))
    sizes = [max(1, int(x)) for x in raw * (total / float(raw.sum()))]
    sizes[-1] += total - sum(sizes)
    assert sum(sizes) == total and min(sizes) > 0
    return sizes


def _params(sizes: list[int], seed: int = 1) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    ps = []
    for n in sizes:
        p = torch.nn.Parameter(torch.randn(n, generator=gen))
        p.grad = torch.randn(n, generator=gen)
        ps.append(p)
    return ps


def _runners(sizes: list[int]) -> dict:
    from fluxode.kernels import adam_group_step_
    from fluxode.optim import FlowOptimizer

    a, b, c = _params(sizes), _params(sizes), _params(sizes)
    torch_opt = torch.optim.AdamW(a, fused=True, **HP)
    flux_opt = FlowOptimizer(b, "adamw", backend="fused", **HP)
    W, G = [p.detach() for p in c], [p.grad for p in c]
    M, V = [torch.zeros_like(w) for w in W], [torch.zeros_like(w) for w in W]
    k = [0]

    def kernel_only():
        k[0] += 1
        adam_group_step_(W, G, M, V, steps=[k[0]] * len(W), decoupled=True, backend="fused",
                         **HP)
    d = _params(sizes)
    flow = flux_opt.flow_for(flux_opt.param_groups[0])
    # clocks as Python numbers, as FlowOptimizer keeps them
    states = [{"W": p.detach(), "m": torch.zeros_like(p), "v": torch.zeros_like(p),
               "c1": 0.0, "c2": 0.0} for p in d]
    grads = [p.grad for p in d]
    j = [0]

    def hook():
        flow.fused_group_step_([float(j[0])] * len(states), states, grads, 1.0, "fused")
        j[0] += 1
    return {"torch AdamW(fused=True)": torch_opt.step, "fluxode FlowOptimizer(fused)":
            flux_opt.step, "fluxode flow hook": hook, "fluxode kernel only": kernel_only}, \
        (a, b, c, d)


def bench(sizes: list[int], rounds: int, steps: int) -> dict:
    fns, keep = _runners(sizes)
    names = list(fns)
    for fn in fns.values():  # warm-up: state allocation, first touch of every page
        fn()
        fn()
    times = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            t = time.perf_counter()
            for _ in range(steps):
                fns[n]()
            times[n].append((time.perf_counter() - t) / steps)
    med = {n: statistics.median(ts) for n, ts in times.items()}
    ref = med["torch AdamW(fused=True)"]
    # the two optimizers must agree (same update up to the fused op's rounding, same steps)
    a, b = keep[:2]
    err = max(float((p - q).detach().abs().max()) for p, q in zip(a, b))
    return dict(tensors=len(sizes), params=sum(sizes), rounds=rounds, steps=steps,
                median_ms={n: 1e3 * t for n, t in med.items()},
                ratio_vs_torch={n: ref / t for n, t in med.items()},
                max_abs_diff_torch_vs_fluxode=err)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    out = {}
    for label, sizes in (("200 tensors, 2^22 params", mixed_sizes()),
                         ("one 2^24 tensor", [1 << 24])):
        rec = bench(sizes, a.rounds, a.steps)
        out[label] = rec
        print(f"\n{label}  (median of {a.rounds} rounds x {a.steps} steps)")
        for n, ms in rec["median_ms"].items():
            print(f"  {n:<30} {ms:9.3f} ms/step   x torch {rec['ratio_vs_torch'][n]:.3f}")
        print(f"  max |W_torch - W_fluxode| = {rec['max_abs_diff_torch_vs_fluxode']:.3g}")
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")
    if a.json:
        write_json(a.json, out)  # atomic, parents created
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
