"""The tour: flows, discrete = torch.optim, discrete vs continuous, and an error-vs-h plot.

Writes figures and a summary JSON to --out (default ./fluxode-out/demo) and prints a table.
Its problems are tiny (2-D losses, a 62-number net), so it runs single-threaded
(``fluxode.threads``) on two processes: a second one computes and draws section 3 (the
comparisons and their figures), then draws section 4's figure, while this one runs section 2
and computes section 4's sweeps. The second process is forked once torch is
imported, so it starts in milliseconds rather than the 2-3 s of a fresh interpreter; the two
halves cost about the same CPU (section 2 includes the one-off import of torch._dynamo that
any torch.optim step triggers).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

import torch

from .. import io, threads
from ..flows import FLOWS, make_flow
from ..verify import NET_SIZE, Case, available_cores, run_case


def add_arguments(p):
    p.add_argument("--out", default="fluxode-out/demo", help="output folder")


def _section(title):
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def run(args) -> int:
    out = io.check_writable(args.out)
    t0 = time.perf_counter()
    summary: dict = {}
    (title3, fn3, show3), (title4, (compute4, write4), show4) = _extra_sections()
    with threads.for_size(NET_SIZE), _background() as later:  # 2-D problems, a 62-number net
        panels = later(fn3, out)
        _section("1. Optimizers as ODE flows")
        for name in ("sgd", "adamw"):
            print(make_flow(name, **({"momentum": 0.9} if name == "sgd" else {})).describe(),
                  "\n")
        print(f"({len(FLOWS)} flows registered; `fluxode flows` lists them all)")

        _section("2. Partitioned Euler at h = 1 is torch.optim (float32, 200 steps)")
        rows = []
        for name, cls in FLOWS.items():
            if cls.torch_twin:
                rec = run_case(Case(name, cls.option_grid()[-1]), torch.float32, 200)
                rows.append(rec)
                exact = ('bit-for-bit' if rec['bitwise']
                         else 'max rel err %.1e' % rec['max_rel_err'])
                print(f"  {name:<8} vs torch.optim.{cls.torch_twin:<8} {exact}"
                      f"   [{rec['options']}]")
        summary["verify"] = rows
        # section 4 computed here while section 3 runs in the other process, drawn there after it
        record4 = later(write4, *compute4(), out)
        _section(title3)
        summary[fn3.__name__] = result3 = panels()
        show3(result3)
        _section(title4)
        summary["demo_error_vs_h"] = result4 = record4()
        show4(result4)

    summary["seconds"] = time.perf_counter() - t0
    io.write_json(out / "summary.json", summary)
    print(f"\nfigures and summary.json in {out}/  ({summary['seconds']:.1f} s)")
    return 0


@contextmanager
def _background():
    """Yields ``later(fn, *args)``, which runs ``fn(*args)`` in a second single-threaded process
    (jobs in the order given) when this machine has a second core, else here when its result
    is asked for, and returns a function that returns the result (re-raising its error). The
    process is forked where that is safe and cheap (Linux: it shares the imported modules),
    spawned elsewhere."""
    if available_cores() < 2:
        yield lambda fn, *args: lambda: fn(*args)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    method = "fork" if sys.platform == "linux" else "spawn"
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(method),
                               initializer=threads.single)

    def later(fn, *args):
        sys.stdout.flush()  # a forked process would print what is still buffered here again
        return pool.submit(fn, *args).result

    try:
        yield later
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


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
    from ..limits import demo_sweeps, write_demo_sweeps

    return [("3. Discrete vs continuous trajectories (ravine, Rosenbrock)", demo_panels,
             _show_comparisons),
            ("4. Error vs step size h, with fitted order", (demo_sweeps, write_demo_sweeps),
             _show_orders)]
