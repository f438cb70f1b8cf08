"""Modified equations: GD and heavy ball are order 1 from their plain flow, order 2 from the
modified flow -(1/(1-μ))∇[L + s(1+μ)/(4(1-μ)²)‖∇L‖²] (Barrett & Dherin 2021; Kovachki &
Stuart 2021, Ghosh et al. 2023), heavy ball started from the shifted W₀ + sμ/(1-μ)²g₀.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import done, parse  # noqa: E402

from fluxode import plotting  # noqa: E402
from fluxode.flows import make_flow  # noqa: E402
from fluxode.io import write_json  # noqa: E402
from fluxode.limits import sweep  # noqa: E402

args = parse(__doc__)
hs = [0.125 / 2 ** j for j in range(4 if args.quick else 5)]
cases = [("GD, quadratic", "quadratic", dict(lr=0.1), "rates"),
         ("GD, ravine", "ravine", dict(lr=0.02), "rates"),
         ("heavy ball μ=0.9, quadratic", "quadratic", dict(lr=0.01, momentum=0.9), "betas-fixed"),
         ("heavy ball μ=0.5, ravine", "ravine", dict(lr=0.001, momentum=0.5), "betas-fixed")]
record, panels = [], []
for label, prob, hp, path in cases:
    flow = make_flow("sgd", **hp)
    pl = sweep(flow, prob, T=10.0, hs=hs, path=path)
    md = sweep(flow, prob, T=10.0, hs=hs, path=path, modified=True)
    record.append({"case": label, "plain": pl.to_dict(), "modified": md.to_dict()})
    panels.append((label, pl, md))
    print(f"{label:30s} plain {pl.order:.3f}  modified {md.order:.3f}")
png = plotting.save(plotting.modified_equations(panels, T=10.0),
                    args.out / "modified_equations.png", dpi=120)
js = write_json(args.out / "modified_equations.json", record)
done(args, js, png)
