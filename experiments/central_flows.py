"""Central flows at the edge of stability (Cohen, Damian, Talwalkar, Kolter & Lee, ICLR 2025) on
the 2410-parameter tanh MLP on 100 digits (``fluxode.sharpness.tanh_mlp``, float64, MSE):
discrete GD at η ∈ {0.5, 0.3} and RMSprop (α = 0.99, from the warm state v₀ = g₀²) against
their plain flows and their central flows (``fluxode.central``): weight-distance ratio,
time-averaged loss vs the predicted loss L + ½σ²S, sharpness. And Adam's preconditioned
sharpness along a discrete run against (2 + 2β₁)/((1-β₁)η) (``fluxode.sharpness.track``).
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import done, parse  # noqa: E402

from fluxode import plotting  # noqa: E402
from fluxode import sharpness as Sh  # noqa: E402
from fluxode.central import central_flow, compare  # noqa: E402
from fluxode.io import write_json  # noqa: E402

args = parse(__doc__)
q = args.quick
p = Sh.tanh_mlp()
settings = [("gd", 0.5, 150 if q else 400, {}), ("gd", 0.3, 300 if q else 1000, {}),
            ("rmsprop", 1e-3, 150 if q else 400, dict(alpha=0.99))]
records = []
for opt, lr, T, kw in settings:
    r = compare(central_flow(opt, lr, k=1, **kw), p, T, save_every=T // 20, window=20,
                method="midpoint", step_size=0.5)
    t = np.array(r["times"])
    edge = t >= 0.5 * T
    rel = np.array(r["rel_loss_error"])
    r["summary"] = {
        "final_ratio": r["ratio"][-1],
        "median_rel_loss_error_second_half": float(np.median(rel[edge])),
        "max_rel_loss_error_second_half": float(rel[edge].max()),
        "final_rel_loss_error": float(rel[-1]),
        "central_sharpness_final": r["central_sharpness"][-1],
        "discrete_sharpness_second_half": [float(min(np.array(r["discrete_sharpness"])[edge])),
                                           float(max(np.array(r["discrete_sharpness"])[edge]))],
        "threshold": r["threshold"], "lanczos_max_residual": r["lanczos_max_residual"],
        "lanczos_all_converged": r["lanczos_all_converged"], "wall_time_s": r["wall_time_s"]}
    s = r["summary"]
    print(f"{opt} η={lr:g} T={T}: ratio at T {s['final_ratio']:.3f}; predicted vs averaged "
          f"loss, 2nd half: median {s['median_rel_loss_error_second_half']:.3f}, max "
          f"{s['max_rel_loss_error_second_half']:.3f}, at T {s['final_rel_loss_error']:.3f}; "
          f"S_central {s['central_sharpness_final']:.4g} vs threshold {lr and r['threshold']:.4g}"
          f"; discrete S in {np.round(s['discrete_sharpness_second_half'], 4).tolist()}; "
          f"Lanczos residual ≤ {s['lanczos_max_residual']:.1e}, converged "
          f"{s['lanczos_all_converged']}; {s['wall_time_s']:.0f}s", flush=True)
    records.append(r)

adam = Sh.track("adam", p, 500 if q else 1500, every=25, lr=0.01, betas=(0.9, 0.999))
steps = np.array(adam["sharpness_steps"])
ratio = np.array(adam["sharpness"]) / adam["threshold"]
late = ratio[steps >= steps[-1] / 3]
adam["hover"] = {"from_step": int(steps[-1] / 3), "min": float(late.min()),
                 "max": float(late.max()), "mean": float(late.mean())}
print(f"adam η=0.01 β=(0.9, 0.999): preconditioned sharpness / (38/η) from step "
      f"{adam['hover']['from_step']} in [{late.min():.3f}, {late.max():.3f}], mean "
      f"{late.mean():.3f}", flush=True)

fig = plotting.central_flows(records, title=f"{p.dim}-parameter tanh MLP on digits: "
                             "discrete vs plain flow vs central flow")
png = plotting.save(fig, args.out / "central_flows.png", dpi=110)
fig2 = plotting.edge_of_stability([adam], title="Adam: preconditioned sharpness vs "
                                  "(2+2β₁)/((1-β₁)η)")
png2 = plotting.save(fig2, args.out / "adam_preconditioned_sharpness.png", dpi=110)
js = write_json(args.out / "central_flows.json", {"central": records, "adam": adam})
done(args, js, png, png2)
