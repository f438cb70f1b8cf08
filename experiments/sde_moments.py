"""SDE limits. Left: SGD vs the first- and second-order SDEs of Li, Tai & E (2017) on a
noisy quadratic (exact moments; weak orders 1 and 2 for the mean). Right: RMSprop along
the square-root path (Malladi et al. 2022): Monte Carlo moments of the discrete runs
approach the SDE's as h shrinks, down to the Monte Carlo noise. Third: Adam (the real flow,
with its bias-correction clocks) along the same path vs its SDE (linear moment ODEs of θ and
the momentum m); its weak error decays more slowly, ~h·log(1/h).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import done, parse  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from fluxode import sde  # noqa: E402
from fluxode.io import save_figure, write_json  # noqa: E402

args = parse(__doc__)
lte = sde.li_tai_e_study()
hs = [0.5 / 2 ** j for j in range(4 if args.quick else 6)]
sq = sde.sqrt_path_study(hs=hs, replicas=20000 if args.quick else 100000, lr=0.5, alpha=0.9,
                         eps=0.5)
ad = sde.adam_sqrt_path_study(hs=[0.5 / 2 ** j for j in range(6 if args.quick else 9)],
                              replicas=20000 if args.quick else 100000)
fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(16, 4))
for o, m in ((1, "o"), (2, "s")):
    r = lte[f"order{o}"]
    a1.loglog(lte["lrs"], r["mean_errors"], m + "-",
              label=f"mean, order-{o} SDE: p={r['mean_order']:.2f}")
    a1.loglog(lte["lrs"], r["cov_errors"], m + "--",
              label=f"covariance, order-{o} SDE: p={r['cov_order']:.2f}")
a1.set_xlabel("learning rate η")
a1.set_ylabel("moment error at t = 2")
a1.set_title("SGD vs its SDEs (Li, Tai & E 2017)")
a1.legend(fontsize=7)
h = [r["h"] for r in sq["rows"]]
a2.loglog(h, [r["var_err"] for r in sq["rows"]], "o-", label="|var - var_SDE|")
a2.loglog(h, [r["mean_err"] for r in sq["rows"]], "s-", label="|mean - mean_SDE|")
a2.loglog(h, [2 * r["var_se"] for r in sq["rows"]], "k:", label="2 × Monte Carlo s.e. (var)")
a2.loglog(h, [sq["rows"][0]["var_err"] * (x / h[0]) ** 0.5 for x in h], "k--", lw=0.8,
          label="slope 1/2 (weak order O(√h))")
a2.set_title("RMSprop → its SDE (Malladi et al. 2022)")
h = [r["h"] for r in ad["rows"]]
a3.loglog(h, [r["var_err"] for r in ad["rows"]], "o-", label="|var - var_SDE|")
a3.loglog(h, [r["mean_err"] for r in ad["rows"]], "s-", label="|mean - mean_SDE|")
a3.loglog(h, [2 * r["var_se"] for r in ad["rows"]], "k:", label="2 × Monte Carlo s.e. (var)")
a3.loglog(h, [ad["rows"][0]["var_err"] * (x / h[0]) for x in h], "k--", lw=0.8,
          label="slope 1")
a3.set_title("Adam (bias-correction clocks) → its SDE")
for a in (a2, a3):
    a.xaxis.set_minor_formatter(NullFormatter())
    a.set_xlabel("h (square-root path)")
    a.legend(fontsize=7)
for a in (a1, a2, a3):
    a.grid(True, which="both", alpha=0.3)
fig.tight_layout()
for name, study in (("RMSprop", sq), ("Adam", ad)):
    for r in study["rows"]:
        print(f"{name:8s} h = {r['h']:<10g} var error {r['var_err']:.2e} (s.e. {r['var_se']:.1e})"
              f"  mean error {r['mean_err']:.2e} (s.e. {r['mean_se']:.1e})")
png = save_figure(fig, args.out / "sde_moments.png", dpi=130)
js = write_json(args.out / "sde_moments.json", {"li_tai_e": lte, "sqrt_path": sq,
                                                         "adam_sqrt_path": ad})
done(args, js, png)
