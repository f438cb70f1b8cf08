"""What ``fluxode verify`` costs, and how much of it is torch's own side.

    PYTHONPATH=. python benchmarks/bench_verify.py [--steps 100] [--dtype float64] [--flow NAME ...]

For every verify case (``fluxode.verify.cases``) this measures, single-threaded and in CPU
seconds (``time.process_time``, so the machine's other load counts little):

* *torch alone*: what the reference side of a case must do whatever fluxode does — the verify
  net's forward and backward, ``clip_grad_norm_`` where the case clips, the reference
  optimizer's ``step()`` (torch's single-tensor implementation, or the reference package's)
  and its LR scheduler — on the same net, data, options and schedule as ``run_case``;
* *the whole case*: ``fluxode.verify.run_case`` (both sides, the comparison).

Both run ``--steps`` steps per case; the totals are scaled to verify's default 1000 steps
(per-step costs are flat along a run) and divided by the available cores: the *wall-clock
floor* of a parallel ``fluxode verify`` on this machine, were fluxode's side free and the
workers perfectly balanced. Issue 14 asks for 20 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict

import torch
from torch import nn

from fluxode import threads
from fluxode import verify as V


def torch_alone(case: V.Case, dtype: torch.dtype, steps: int) -> float:
    """CPU seconds of the reference side of ``case`` alone (``verify.reference_side``, the
    setup ``run_case`` uses)."""
    net, opt, sched, _, loss = V.reference_side(case, dtype)
    params = list(net.parameters())
    t = time.process_time()
    for _ in range(steps):
        for p in params:
            p.grad = None
        loss(net).backward()
        if case.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(params, case.max_grad_norm)
        opt.step()
        if sched is not None:
            sched.step()
    return time.process_time() - t


def whole_case(case: V.Case, dtype: torch.dtype, steps: int) -> float:
    t = time.process_time()
    V.run_case(case, dtype, steps)
    return time.process_time() - t


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100, help="steps per case (scaled to 1000)")
    ap.add_argument("--dtype", choices=sorted(V.DTYPES), default="float64")
    ap.add_argument("--flow", action="append", help="only these flows (repeatable)")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error(f"--steps must be an integer in [1, inf), got {args.steps}")
    dtype, scale = V.DTYPES[args.dtype], 1000 / args.steps
    todo = [c for c in V.cases() if not args.flow or c.flow in args.flow]
    mine, theirs = defaultdict(float), defaultdict(float)
    with threads.for_size(V.NET_SIZE):
        for case in todo:
            theirs[case.flow] += scale * torch_alone(case, dtype, args.steps)
            mine[case.flow] += scale * whole_case(case, dtype, args.steps)
    cores = V.available_cores()
    print(f"{len(todo)} cases, {args.dtype}, measured at {args.steps} steps, scaled to 1000 "
          f"(CPU seconds, one thread; torch {torch.__version__})")
    print(f"{'flow':<20} {'cases':>5} {'torch alone':>12} {'whole case':>11} {'torch share':>12}")
    counts = Counter(c.flow for c in todo)
    for flow in counts:
        print(f"{flow:<20} {counts[flow]:>5} {theirs[flow]:>11.1f}s {mine[flow]:>10.1f}s "
              f"{theirs[flow] / mine[flow]:>11.0%}")
    t_torch, t_all = sum(theirs.values()), sum(mine.values())
    print(f"{'all':<20} {len(todo):>5} {t_torch:>11.1f}s {t_all:>10.1f}s {t_torch / t_all:>11.0%}")
    print(f"on {cores} core(s): torch's own side alone needs ≥ {t_torch / cores:.0f} s of wall "
          f"clock, the whole verify ≥ {t_all / cores:.0f} s (perfect balance, no start-up); "
          f"issue 14's target: 20 s")
    return {"cases": len(todo), "torch_alone_cpu_s": t_torch, "whole_cpu_s": t_all,
            "cores": cores}


if __name__ == "__main__":
    main()
