"""CPU benchmark of the fused AdamW step against torch.optim (single-tensor, foreach, fused).

Prints step time and achieved GB/s per implementation and size, with the ratio to torch's
``fused=True`` measured in the same run (28 bytes moved per fp32 parameter).
"""

from __future__ import annotations

import json


def add_arguments(p):
    p.add_argument("--max-log2", type=int, default=24, help="largest N = 2**max_log2 (≤ 27)")
    p.add_argument("--min-log2", type=int, default=16)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.add_argument("--solve", action="store_true",
                   help="instead: the solve path (integrate dopri5 vs torchode per "
                        "evaluation at N = 1e3, 1e5, 1e6; benchmarks/bench_solve.py adds naive "
                        "torchdiffeq) and the ODE "
                        "optimizer (rk4/dopri5 step vs its gradient evaluations, extra memory); "
                        "--repeats interleaved rounds (3 is plenty)")


def run(args) -> int:
    if args.solve:
        from ..engine.bench import main

        main(["--rounds", str(args.repeats)])
        return 0
    from ..kernels.bench import format_table, run_cpu_bench

    if not 10 <= args.min_log2 <= args.max_log2 <= 27:
        raise ValueError("need 10 ≤ --min-log2 ≤ --max-log2 ≤ 27, got "
                         f"{args.min_log2}, {args.max_log2}")
    records = run_cpu_bench(max_log2=args.max_log2, min_log2=args.min_log2,
                            repeats=args.repeats)
    print(json.dumps(records, indent=1) if args.json else format_table(records))
    return 0
