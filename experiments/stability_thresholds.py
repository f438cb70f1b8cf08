"""Stability thresholds on L = ½λw²: bisection on the spectral radius of the real discrete map
vs the closed forms 2/λ (GD), (2+2μ)/λ (heavy ball), (2+2μ)/((1+2μ)λ) (Nesterov), and
(2+2β₁)(√v+ε)/((1-β₁)λ) for Adam with a frozen preconditioner (Cohen et al. 2022).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import done, parse  # noqa: E402

import numpy as np  # noqa: E402

from fluxode import plotting  # noqa: E402
from fluxode import stability as S  # noqa: E402
from fluxode.flows import make_flow  # noqa: E402
from fluxode.io import write_json  # noqa: E402

args = parse(__doc__)
rows = S.table(lams=(1.0, 100.0) if args.quick else (1.0, 10.0, 100.0))
worst = max(r["rel_diff"] for r in rows)
print(f"{len(rows)} thresholds, worst relative difference {worst:.1e}")
v, lam = 1e-2, 1.0
curves = [("GD", "sgd", {}), ("heavy ball μ=0.9", "sgd", dict(momentum=0.9)),
          ("Nesterov μ=0.9", "sgd", dict(momentum=0.9, nesterov=True)),
          ("Adam β₁=0.9, frozen v", "adam", dict(betas=(0.9, 0.999)))]
lines = []
for label, name, hp in curves:
    lr_star = S.formula_lr(name, lam, v=v, **hp)
    x = np.linspace(0.05, 1.5, 150 if args.quick else 400)
    rho = [S.spectral_radius(make_flow(name, lr=f * lr_star, **hp), lam, v) for f in x]
    lines.append({"label": label, "lr_star": lr_star, "x": x, "rho": rho})
fig = plotting.stability_curves(lines, title=f"Linear stability on ½λw², λ = {lam:g} (v = {v:g})")
png = plotting.save(fig, args.out / "stability_thresholds.png", dpi=130)
js = write_json(args.out / "stability_thresholds.json", {"rows": rows, "worst_rel_diff": worst})
done(args, js, png)
