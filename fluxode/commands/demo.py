"""The tour: flows, discrete = torch.optim, discrete vs continuous, and an error-vs-h plot.

Writes figures and a summary JSON to --out (default ./fluxode-out/demo) and prints a table.
Runs in under a minute on a 2-core CPU.
"""

from __future__ import annotations

import time

import torch

from .. import io
from ..flows import FLOWS, make_flow
from ..verify import Case, run_case


def add_arguments(p):
    p.add_argument("--out", default="fluxode-out/demo", help="output folder")


def _section(title):
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def run(args) -> int:
    out = io.check_writable(args.out)
    t0 = time.perf_counter()
    summary: dict = {}

    _section("1. Optimizers as ODE flows")
    for name in ("sgd", "adamw"):
        print(make_flow(name, **({"momentum": 0.9} if name == "sgd" else {})).describe(), "\n")
    print(f"({len(FLOWS)} flows registered; `fluxode flows` lists them all)")

    _section("2. Partitioned Euler at h = 1 is torch.optim (float32, 200 steps)")
    rows = []
    for name, cls in FLOWS.items():
        if cls.torch_twin:
            rec = run_case(Case(name, cls.option_grid()[-1]), torch.float32, 200)
            rows.append(rec)
            print(f"  {name:<8} vs torch.optim.{cls.torch_twin:<8} "
                  f"{'bit-for-bit' if rec['bitwise'] else 'max rel err %.1e' % rec['max_rel_err']}"
                  f"   [{rec['options']}]")
    summary["verify"] = rows

    for title, fn, show in _extra_sections():
        _section(title)
        summary[fn.__name__] = result = fn(out)
        show(result)

    summary["seconds"] = time.perf_counter() - t0
    io.write_json(out / "summary.json", summary)
    print(f"\nfigures and summary.json in {out}/  ({summary['seconds']:.1f} s)")
    return 0


def _show_comparisons(result: dict) -> None:
    print(f"  {'problem':<11}{'optimizer':<22}{'loss: discrete':>15}{'continuous':>12}"
          f"{'max ‖ΔW‖':>10}{'NFE':>7}")
    for r in result["runs"]:
        print(f"  {r['problem']:<11}{r['label']:<22}{r['final_loss_discrete']:>15.3e}"
              f"{r['final_loss_continuous']:>12.3e}{r['max_param_distance']:>10.3f}"
              f"{r['nfe']:>7}")


def _show_orders(result: dict) -> None:
    for key, r in result.items():
        if isinstance(r, dict) and "order" in r:
            lo, hi = r["order_ci"]
            ref = "plain" if r["reference"] == "flow" else r["reference"]
            print(f"  {r['flow']} on {r['problem']}, h → 0 along '{r['path']}' vs the "
                  f"{ref} flow: order {r['order']:.3f}  (95% CI {lo:.3f}–{hi:.3f})")


def _extra_sections():
    """Sections provided by the continuous-trajectory and limit-study modules."""
    from ..compare import demo_panels
    from ..limits import demo_error_vs_h

    return [("3. Discrete vs continuous trajectories (ravine, Rosenbrock)", demo_panels,
             _show_comparisons),
            ("4. Error vs step size h, with fitted order", demo_error_vs_h, _show_orders)]
