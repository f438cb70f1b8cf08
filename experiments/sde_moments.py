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

from fluxode import plotting, sde  # noqa: E402
from fluxode.io import write_json  # noqa: E402

args = parse(__doc__)
lte = sde.li_tai_e_study()
hs = [0.5 / 2 ** j for j in range(4 if args.quick else 6)]
sq = sde.sqrt_path_study(hs=hs, replicas=20000 if args.quick else 100000, lr=0.5, alpha=0.9,
                         eps=0.5)
ad = sde.adam_sqrt_path_study(hs=[0.5 / 2 ** j for j in range(6 if args.quick else 9)],
                              replicas=20000 if args.quick else 100000)
for name, study in (("RMSprop", sq), ("Adam", ad)):
    for r in study["rows"]:
        print(f"{name:8s} h = {r['h']:<10g} var error {r['var_err']:.2e} (s.e. {r['var_se']:.1e})"
              f"  mean error {r['mean_err']:.2e} (s.e. {r['mean_se']:.1e})")
png = plotting.save(plotting.sde_moments(lte, sq, ad), args.out / "sde_moments.png", dpi=130)
js = write_json(args.out / "sde_moments.json", {"li_tai_e": lte, "sqrt_path": sq,
                                                         "adam_sqrt_path": ad})
done(args, js, png)
