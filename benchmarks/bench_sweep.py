"""Batched vs sequential hyperparameter sweeps (64 points, CPU, float64), measured in one run.

    python benchmarks/bench_sweep.py [--steps 200] [--repeat 3]

Peers: ``fluxode.sweep.sequential_*`` (one ``run_discrete`` / ``integrate`` per point, the
loop a user would write) against ``sweep_discrete`` / ``sweep_continuous`` (one batched
computation). Results are checked equal before timing is reported. Prints best-of-N wall
times and the ratio sequential / batched.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from fluxode import sweep as SW

LRS = [0.002 * 1.5 ** i for i in range(8)]


def cases(steps: int):
    sgd = ("sgd", "ravine", {"lr": LRS, "momentum": [0.1 * i for i in range(1, 9)]}, {})
    adam_eps = ("adam", "rosenbrock", {"lr": LRS, "eps": [10.0 ** -i for i in range(1, 9)]}, {})
    adam_betas = ("adam", "rosenbrock",
                  {"lr": LRS, "betas": [(0.5 + 0.05 * i, 0.999) for i in range(8)]}, {})
    yield "discrete  sgd lr×momentum (1 batch)", "discrete", sgd, {"steps": steps}
    yield "discrete  adam lr×eps (1 batch)", "discrete", adam_eps, {"steps": steps}
    yield "discrete  adam lr×betas (8 clock groups)", "discrete", adam_betas, {"steps": steps}
    yield "continuous sgd lr×momentum rk4 (1 batch)", "continuous", sgd, \
        {"T": steps / 4, "method": "rk4", "step_size": 0.5}


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, float64, 64 points\n")
    print(f"{'sweep':44s} {'sequential s':>12s} {'batched s':>10s} {'ratio':>7s}  equal")
    for label, kind, (flow, prob, grid, fixed), kw in cases(args.steps):
        seq, bat = ((SW.sequential_discrete, SW.sweep_discrete) if kind == "discrete"
                    else (SW.sequential_continuous, SW.sweep_continuous))
        args_ = (flow, prob, grid)
        t_seq, ref = best(partial(seq, *args_, **kw, **fixed), args.repeat)
        t_bat, res = best(partial(bat, *args_, **kw, **fixed), args.repeat)
        same = "bitwise" if torch.equal(res.W, ref) else \
            f"max |Δ| {float((res.W - ref).abs().max()):.1e}"
        print(f"{label:44s} {t_seq:12.3f} {t_bat:10.3f} {t_seq / t_bat:6.1f}×  {same}")


if __name__ == "__main__":
    main()
