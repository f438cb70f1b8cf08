"""The zoo table: for every registered flow, measured on built-in problems (float64):

  order   the fitted order of the discrete runs along ``rates`` (``fluxode.limits.sweep`` on
          ``quadratic``, T = 8, h = 1/16 … 1/256) with its 95% t-interval, and the interval of
          the three smallest h (the asymptotic end)
  NFE     the right-hand-side evaluations of a dopri5 solve on ``rosenbrock`` over τ ∈ [0, 50]
          (rtol 1e-7, atol 1e-9, at most 20 000 solver steps)
  dist    max_k ‖W_k - W(k)‖ between torch's discrete map (h = 1) and the continuous flow on
          ``rosenbrock`` over 50 steps (``fluxode.compare.compare``), with ‖W₀‖ for scale

Every flow runs at its registered defaults (torch's, where it has a twin) unless SETTINGS
names another lr; a measurement that does not apply is reported with the reason the library
gives (an exception's message) instead of a number. The registry is iterated, so plugin flows
and flows added later appear without changes here.

    PYTHONPATH=. python experiments/zoo_table.py --out out/experiments     (--quick: fewer h)
"""

import json
import math
import time

import torch
from _common import done, parse

from fluxode import limits as L
from fluxode.compare import compare
from fluxode.flows import FLOWS, make_flow
from fluxode.integrate import integrate

# lr where a flow's default is unstable or stiff on Rosenbrock (|∇L(x₀)| ≈ 216)
SETTINGS = {"adadelta": dict(lr=0.1), "adagrad": dict(lr=1e-2), "asgd": dict(lr=1e-3),
            "nesterov-ode": dict(lr=1e-3), "modified-sgd": dict(lr=1e-3),
            "sgd-schedulefree": dict(lr=1e-3)}


def _reason(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"


def measure(name: str, hs) -> dict:
    row = {"flow": name}
    try:
        flow = make_flow(name, **SETTINGS.get(name, {}))
    except Exception as err:  # noqa: BLE001 - a flow that needs arguments: say so
        row["reason"] = _reason(err)
        return row
    row["hyperparameters"] = {k: (v if isinstance(v, (int, float, bool, str)) else str(v))
                              for k, v in flow.hyperparameters().items()}
    t = time.perf_counter()
    try:
        s = L.sweep(flow, "quadratic", 8.0, hs=hs, path="rates")
        tail = L.fit_order(s.hs[-3:], s.errors[-3:])
        row["order"] = {"order": s.order, "ci": list(s.order_ci), "tail_ci": list(tail.ci),
                        "errors": s.errors}
    except Exception as err:  # noqa: BLE001
        row["order"] = {"reason": _reason(err)}
    row["order"]["seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    try:
        tr = integrate(flow, "rosenbrock", T=50, method="dopri5", dtype=torch.float64,
                       max_steps=20_000)
        row["nfe"] = {"nfe": tr.stats["nfe"], "steps": tr.stats["steps"],
                      "rejected": tr.stats["rejected"]}
    except Exception as err:  # noqa: BLE001
        row["nfe"] = {"reason": _reason(err)}
    row["nfe"]["seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    try:
        c = compare(flow, "rosenbrock", 50, max_steps=20_000).summary()
        d = c["max_param_distance"]
        row["distance"] = {"max": d, "final": c["final_param_distance"]}
        if not math.isfinite(d):
            row["distance"]["reason"] = "a trajectory is not finite"
    except Exception as err:  # noqa: BLE001
        row["distance"] = {"reason": _reason(err)}
    row["distance"]["seconds"] = time.perf_counter() - t
    return row


def cell(d: dict, fmt) -> str:
    return f"— ({d['reason']})" if "reason" in d else fmt(d)


def table(rows) -> str:
    out = ["| flow | order along rates (95% CI; 3 smallest h) | dopri5 NFE on rosenbrock, τ ≤ 50 "
           "(steps, rejected) | max ‖W_k - W(k)‖, 50 steps on rosenbrock |",
           "|---|---|---|---|"]
    for r in rows:
        if "reason" in r:
            out.append(f"| {r['flow']} | — ({r['reason']}) | — | — |")
            continue
        o = cell(r["order"], lambda d: f"{d['order']:.3f} ({d['ci'][0]:.3f}, {d['ci'][1]:.3f}; "
                                       f"{d['tail_ci'][0]:.3f}, {d['tail_ci'][1]:.3f})")
        n = cell(r["nfe"], lambda d: f"{d['nfe']} ({d['steps']}, {d['rejected']})")
        x = cell(r["distance"], lambda d: f"{d['max']:.3g}")
        lr = r["hyperparameters"].get("lr")
        out.append(f"| {r['flow']} (lr={lr:g}) | {o} | {n} | {x} |" if lr is not None
                   else f"| {r['flow']} | {o} | {n} | {x} |")
    return "\n".join(out)


def main():
    args = parse(__doc__)
    torch.set_default_dtype(torch.float32)  # torch's own default; problems are float64
    hs = [0.0625 / 2 ** j for j in range(3 if args.quick else 5)]
    rows = []
    for name in FLOWS:
        t = time.perf_counter()
        rows.append(measure(name, hs))
        print(f"{name}: {time.perf_counter() - t:.1f}s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "zoo_table.json"
    path.write_text(json.dumps(rows, indent=1, default=str))
    md = table(rows)
    (args.out / "zoo_table.md").write_text(md + "\n")
    print(md)
    done(args, path, args.out / "zoo_table.md")


if __name__ == "__main__":
    main()
