"""CPU Adam kernel benchmark: fluxode fast path vs torch.optim AdamW (fused, foreach, single).

    PYTHONPATH=. python benchmarks/bench_cpu_kernels.py [--max-log2 24] [--quick] [--json F]

Byte counts per fp32 parameter: see fluxode.kernels.bench.BYTES_PER_PARAM (AdamW 28 B).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fluxode.io import write_json  # noqa: E402
from fluxode.kernels.bench import format_table, run_cpu_bench  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-log2", type=int, default=25, help="largest N = 2^k (<= 27 here)")
    ap.add_argument("--min-log2", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="N up to 2^20, 3 repeats")
    ap.add_argument("--json", type=str, default=None, help="also write records to this file")
    a = ap.parse_args(argv)
    if a.quick:
        a.max_log2, a.repeats = min(a.max_log2, 20), 3
    recs = run_cpu_bench(max_log2=a.max_log2, repeats=a.repeats, min_log2=a.min_log2)
    print(format_table(recs))
    if a.json:
        write_json(a.json, recs)  # atomic, parents created
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
