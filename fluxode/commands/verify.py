"""Compare the discretizer with the installed torch.optim for every flow and option combination.

Exits 1 on any case beyond tolerance (float64: 1e-12 relative; float32: 1e-4), and reports
per case whether the parameters are bit-for-bit identical. The cases run single-threaded, in
parallel processes when there is enough work (``--workers``); the records are a serial run's.
"""

from __future__ import annotations

import json
import sys

import torch

from ..verify import tolerance, verify


def add_arguments(p):
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per case")
    p.add_argument("--flow", action="append", help="only these flows (repeatable)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes to run the cases in (default: the available cores when "
                        "there is enough work, else 1; each runs single-threaded)")
    p.add_argument("--json", action="store_true", help="print one JSON record per case")


def run(args) -> int:
    def show(rec):
        if not args.json:
            mark = "ok " if rec["ok"] else "BAD"
            print(f"{mark} {rec['flow']:<8} {'bitwise' if rec['bitwise'] else '       '} "
                  f"rel {rec['max_rel_err']:.1e}  {rec['options']}", flush=True)

    if not args.json:
        print(f"torch {torch.__version__}, {args.dtype}, {args.steps} steps, "
              f"tolerance {tolerance(getattr(torch, args.dtype)):.0e} relative")
    records = verify(args.dtype, args.steps, flows=args.flow, progress=show,
                     workers=args.workers)
    bad = [r for r in records if not r["ok"]]
    if args.json:
        print(json.dumps(records, indent=1))
    else:
        nbit = sum(r["bitwise"] for r in records)
        print(f"{len(records)} cases: {len(records) - len(bad)} within tolerance, "
              f"{nbit} bit-for-bit identical, {len(bad)} mismatched")
    if bad:
        print(f"fluxode verify: {len(bad)} case(s) beyond tolerance", file=sys.stderr)
        return 1
    return 0
