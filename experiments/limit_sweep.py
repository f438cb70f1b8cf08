"""Limit sweeps along the scaling paths: discrete runs converge at order 1 to their limit flow.

rates: Adam and heavy ball are Euler steps of their ODEs (order 1). betas-fixed: momentum SGD
tends to gradient flow with rate lr/(1-μ), RMSprop to the sign-like flow g/(|g|+ε).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import done, parse  # noqa: E402

from fluxode.flows import make_flow  # noqa: E402
from fluxode.io import write_json  # noqa: E402
from fluxode.limits import sweep  # noqa: E402
from fluxode.plotting import plot_sweeps  # noqa: E402

args = parse(__doc__)
n = 4 if args.quick else 6
hs = [0.125 / 2 ** j for j in range(n)]
cases = [("adam", dict(lr=0.05, betas=(0.9, 0.99)), "rates"),
         ("sgd", dict(lr=0.01, momentum=0.9), "rates"),
         ("sgd", dict(lr=0.01, momentum=0.9), "betas-fixed"),
         ("rmsprop", dict(lr=0.01, alpha=0.9, eps=1e-3), "betas-fixed")]
sweeps = [sweep(make_flow(name, **hp), "quadratic", T=10.0, hs=hs, path=path)
          for name, hp, path in cases]
for s in sweeps:
    lo, hi = s.order_ci
    print(f"{s.flow:8s} {s.path:12s} order {s.order:.3f} CI [{lo:.3f}, {hi:.3f}]")
png = plot_sweeps(sweeps, args.out / "limit_sweep.png",
                  title="Discrete runs vs their h → 0 limits (quadratic, T = 10)")
js = write_json(args.out / "limit_sweep.json", [s.to_dict() for s in sweeps])
done(args, js, png)
