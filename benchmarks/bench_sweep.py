"""Batched vs sequential hyperparameter sweeps (64 points, CPU, float64), measured in one run.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_sweep.py [--steps 200] [--rounds 3]

Peers: ``fluxode.sweep.sequential_*`` (one ``run_discrete`` / ``integrate`` per point, the
loop a user would write) against ``sweep_discrete`` / ``sweep_continuous`` (one batched
computation). Results are checked equal before timing is reported. The two peers of a case
run alternately for ``--rounds`` rounds (interleaved: the machine is shared and noisy); the
table prints the median wall times and the ratio sequential / batched of the medians.

Cases: lr × momentum (SGD), lr × eps and lr × betas (Adam: per-row bias-correction clocks),
an h sweep (8 step sizes × 8 lr, each row ⌊T/h⌋ steps of its own, so rows finish at different
steps and wait, frozen, for the last), and the continuous lr × momentum sweep (rk4).
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from fluxode import sweep as SW

LRS = [0.002 * 1.5 ** i for i in range(8)]
HS = [1.0 - 0.1 * i for i in range(8)]  # 1.0 … 0.3: ⌊T/h⌋ = T … 3.33·T steps


def cases(steps: int):
    sgd = ("sgd", "ravine", {"lr": LRS, "momentum": [0.1 * i for i in range(1, 9)]}, {})
    adam_eps = ("adam", "rosenbrock", {"lr": LRS, "eps": [10.0 ** -i for i in range(1, 9)]}, {})
    adam_betas = ("adam", "rosenbrock",
                  {"lr": LRS, "betas": [(0.5 + 0.05 * i, 0.999 - 0.001 * i) for i in range(8)]},
                  {})
    adam_h = ("adam", "rosenbrock", {"lr": LRS, "h": HS}, {})
    yield "discrete  sgd lr×momentum", "discrete", sgd, {"steps": steps}
    yield "discrete  adam lr×eps", "discrete", adam_eps, {"steps": steps}
    yield "discrete  adam lr×betas (per-row clocks)", "discrete", adam_betas, {"steps": steps}
    yield f"discrete  adam lr×h (T = {steps // 2})", "discrete", adam_h, {"T": steps // 2}
    yield "continuous sgd lr×momentum rk4", "continuous", sgd, \
        {"T": steps / 4, "method": "rk4", "step_size": 0.5}


def interleaved(fns, rounds: int) -> tuple[list[float], list]:
    """Median wall time of each function over ``rounds`` alternating rounds, and its output."""
    times, outs = [[] for _ in fns], [None] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            outs[i] = fn()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times], outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, float64, 64 points, {args.rounds} interleaved "
          "rounds, medians\n")
    print(f"{'sweep':44s} {'sequential s':>12s} {'batched s':>10s} {'ratio':>7s}  equal")
    for label, kind, (flow, prob, grid, fixed), kw in cases(args.steps):
        seq, bat = ((SW.sequential_discrete, SW.sweep_discrete) if kind == "discrete"
                    else (SW.sequential_continuous, SW.sweep_continuous))
        args_ = (flow, prob, grid)
        (t_seq, t_bat), (ref, res) = interleaved(
            [partial(seq, *args_, **kw, **fixed), partial(bat, *args_, **kw, **fixed)],
            args.rounds)
        same = "bitwise" if torch.equal(res.W, ref) else \
            f"max |Δ| {float((res.W - ref).abs().max()):.1e}"
        print(f"{label:44s} {t_seq:12.3f} {t_bat:10.3f} {t_seq / t_bat:6.1f}×  {same}")


if __name__ == "__main__":
    main()
