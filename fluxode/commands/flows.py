"""List every flow with its ODE system, state variables and optimizer memory per parameter.

Flows are shown with their default hyperparameters; options that change the state (momentum,
centered, amsgrad) are shown as extra variants.
"""

from __future__ import annotations

import json

from ..flows import FLOWS, make_flow

VARIANTS = {
    "sgd": [{}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}],
    "rmsprop": [{}, {"centered": True, "momentum": 0.9}],
    "adam": [{}, {"amsgrad": True}],
    "adamw": [{}],
}


def add_arguments(p):
    p.add_argument("--json", action="store_true", help="print a JSON list instead of text")


def run(args) -> int:
    rows = []
    for name, cls in FLOWS.items():
        for opts in VARIANTS.get(name, [{}]):
            flow = make_flow(name, **opts)
            rows.append({"flow": name, "options": opts, "torch_twin": cls.torch_twin,
                         "state": list(flow.state_names),
                         "memory_per_param": flow.memory_per_param,
                         "equations": [flow.gradient_equation(), *flow.equations()],
                         "text": flow.describe()})
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "text"} for r in rows], indent=2))
        return 0
    for r in rows:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items())
        print(f"[{r['flow']}{' ' + opts if opts else ''}]  torch twin: {r['torch_twin'] or '—'}")
        print(r["text"], end="\n\n")
    print("Memory per parameter (paper §9.2, as the code keeps it):")
    print(f"  {'flow':<28} {'state tensors':>13} {'bytes/param fp32':>17}")
    for r in rows:
        label = r["flow"] + ("+" + ",".join(r["options"]) if r["options"] else "")
        print(f"  {label:<28} {r['memory_per_param']:>13} {4 * r['memory_per_param']:>17}")
    return 0
