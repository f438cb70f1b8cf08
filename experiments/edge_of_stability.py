"""Edge of stability (Cohen et al. 2021): full-batch GD on a tanh MLP (digits, MSE). At η = 0.5
the sharpness rises (progressive sharpening) and hovers at 2/η; at η = 0.1 it stays below.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import done, parse  # noqa: E402

from fluxode import plotting  # noqa: E402
from fluxode import sharpness as Sh  # noqa: E402
from fluxode.io import write_json  # noqa: E402

args = parse(__doc__)
steps = 1000 if args.quick else 3000
p = Sh.tanh_mlp()
runs = [Sh.track("sgd", p, steps, every=20, lr=lr) for lr in (0.5, 0.1)]
for r in runs:
    lo, hi = Sh.last_quarter_ratio(r)
    r["last_quarter_ratio"] = (lo, hi)
    print(f"η = {r['lr']:g}: sharpness/(2/η) over the last quarter in [{lo:.3f}, {hi:.3f}]")
fig = plotting.edge_of_stability(runs, title=f"{p.dim}-parameter tanh MLP, full-batch GD")
png = plotting.save(fig, args.out / "edge_of_stability.png", dpi=130)
js = write_json(args.out / "edge_of_stability.json", runs)
done(args, js, png)
