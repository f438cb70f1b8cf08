"""List every flow (built-in and plugin) with its ODE system, state variables and memory per parameter.

Flows are shown with their default hyperparameters, plus variants: a flow class may define
``variants()`` (a classmethod returning option dicts); otherwise the variants are the
entries of its ``option_grid()`` that change its state variables or the form of its
equations (momentum, nesterov, centered, amsgrad), each reduced to its own options (not the
common lr, weight_decay, maximize, ...) that differ from the defaults.
"""

from __future__ import annotations

import inspect
import json
import re

from ..flows import FLOWS, Flow, make_flow


def variants(cls) -> list[dict]:
    """Option dicts to show for ``cls``: its own ``variants()``, or one per distinct form."""
    own = getattr(cls, "variants", None)
    if callable(own):
        return [dict(v) for v in own()]
    base = make_flow(cls)
    common = set(inspect.signature(Flow).parameters)  # lr, weight_decay, maximize, ...
    defaults = base.hyperparameters()
    out, forms = [{}], {_form(base)}
    grid = [{k: v for k, v in opts.items() if k not in common and defaults.get(k) != v}
            for opts in cls.option_grid()]
    for opts in sorted(grid, key=len):
        try:
            form = _form(make_flow(cls, **opts))
        except ValueError:
            continue
        if form not in forms:
            forms.add(form)
            out.append(opts)
    return out


def _form(flow) -> tuple:
    """The flow's state names and equations with the numbers blanked out."""
    number = r"(?<![\w.])[-+]?\d+(\.\d*)?(e[-+]?\d+)?"
    return flow.state_names, tuple(re.sub(number, "#", eq) for eq in flow.equations())


def add_arguments(p):
    p.add_argument("--json", action="store_true", help="print a JSON list instead of text")


def run(args) -> int:
    rows = []
    for name, cls in FLOWS.items():
        for opts in variants(cls):
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
