"""Shared plumbing for the study scripts: --out/--quick arguments, one thread. Figures are
drawn by ``fluxode.plotting`` (no pyplot, so no backend to choose)."""

import argparse
import time
from pathlib import Path

import torch


def parse(doc: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/experiments", help="folder for the JSON and PNG")
    p.add_argument("--quick", action="store_true", help="smaller settings (< 1 minute)")
    args = p.parse_args()
    args.out = Path(args.out)
    torch.set_num_threads(1)  # tiny problems: threads only add overhead
    args.t0 = time.perf_counter()
    return args


def done(args, *paths):
    print(f"wrote {', '.join(str(p) for p in paths)} in {time.perf_counter() - args.t0:.1f}s")
