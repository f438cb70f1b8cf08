"""Modified equations: GD and heavy ball are order 1 from their plain flow, order 2 from the
modified flow -(1/(1-μ))∇[L + s(1+μ)/(4(1-μ)²)‖∇L‖²] (Barrett & Dherin 2021; Kovachki &
Stuart 2021, Ghosh et al. 2023), heavy ball started from the shifted W₀ + sμ/(1-μ)²g₀.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import done, parse  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402
import numpy as np  # noqa: E402

from fluxode.flows import make_flow  # noqa: E402
from fluxode.io import save_figure, write_json  # noqa: E402
from fluxode.limits import sweep  # noqa: E402

args = parse(__doc__)
hs = [0.125 / 2 ** j for j in range(4 if args.quick else 5)]
cases = [("GD, quadratic", "quadratic", dict(lr=0.1), "rates"),
         ("GD, ravine", "ravine", dict(lr=0.02), "rates"),
         ("heavy ball μ=0.9, quadratic", "quadratic", dict(lr=0.01, momentum=0.9), "betas-fixed"),
         ("heavy ball μ=0.5, ravine", "ravine", dict(lr=0.001, momentum=0.5), "betas-fixed")]
fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
record = []
for ax, (label, prob, hp, path) in zip(axes, cases):
    flow = make_flow("sgd", **hp)
    pl = sweep(flow, prob, T=10.0, hs=hs, path=path)
    md = sweep(flow, prob, T=10.0, hs=hs, path=path, modified=True)
    record.append({"case": label, "plain": pl.to_dict(), "modified": md.to_dict()})
    print(f"{label:30s} plain {pl.order:.3f}  modified {md.order:.3f}")
    h = np.array(hs)
    ax.loglog(h, pl.errors, "o-", label=f"vs plain flow: p={pl.order:.2f}")
    ax.loglog(h, md.errors, "s-", label=f"vs modified flow: p={md.order:.2f}")
    ax.loglog(h, pl.errors[0] * (h / h[0]), "k--", lw=0.8, label="slope 1")
    ax.loglog(h, md.errors[0] * (h / h[0]) ** 2, "k:", lw=0.8, label="slope 2")
    ax.set_title(label, fontsize=10)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("h")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
axes[0].set_ylabel(r"$\|W_h(T) - W(T)\|$, T = 10")
fig.tight_layout()
png = save_figure(fig, args.out / "modified_equations.png", dpi=120)
js = write_json(args.out / "modified_equations.json", record)
done(args, js, png)
