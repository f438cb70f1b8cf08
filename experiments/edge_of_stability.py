"""Edge of stability (Cohen et al. 2021): full-batch GD on a tanh MLP (digits, MSE). At η = 0.5
the sharpness rises (progressive sharpening) and hovers at 2/η; at η = 0.1 it stays below.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import done, parse  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402

from fluxode import sharpness as Sh  # noqa: E402
from fluxode.io import save_figure, write_json  # noqa: E402

args = parse(__doc__)
steps = 1000 if args.quick else 3000
p = Sh.tanh_mlp()
runs = [Sh.track("sgd", p, steps, every=20, lr=lr) for lr in (0.5, 0.1)]
fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
for r, c in zip(runs, ["C3", "C0"]):
    lo, hi = Sh.last_quarter_ratio(r)
    r["last_quarter_ratio"] = (lo, hi)
    print(f"η = {r['lr']:g}: sharpness/(2/η) over the last quarter in [{lo:.3f}, {hi:.3f}]")
    a1.plot(r["sharpness_steps"], r["sharpness"], color=c, label=f"η = {r['lr']:g}")
    a1.axhline(r["threshold"], color=c, ls="--", lw=0.9, label=f"2/η = {r['threshold']:g}")
    a2.semilogy(r["loss"], color=c, label=f"η = {r['lr']:g}")
a1.set_xlabel("step")
a1.set_ylabel("sharpness λ_max(∇²L)")
a1.set_title(f"{p.dim}-parameter tanh MLP, full-batch GD")
a1.legend(fontsize=8)
a2.set_xlabel("step")
a2.set_ylabel("training loss (MSE)")
a2.legend(fontsize=8)
for a in (a1, a2):
    a.grid(alpha=0.3)
fig.tight_layout()
png = save_figure(fig, args.out / "edge_of_stability.png", dpi=130)
js = write_json(args.out / "edge_of_stability.json", runs)
done(args, js, png)
