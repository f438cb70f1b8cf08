"""Central flows at the edge of stability (Cohen, Damian, Talwalkar, Kolter & Lee, ICLR 2025) on
the 2410-parameter tanh MLP on 400 digits (``fluxode.sharpness.tanh_mlp(n=400)``, float64, MSE;
on 100 digits GD at η = 0.3 does not hover at 2/η but runs catapult cycles, see
experiments/README.md):
discrete GD at η ∈ {0.5, 0.3} and RMSprop (η = 1e-3, α = 0.99, from v₀ = g₀²) against their
plain flows and their central flows (``fluxode.central``: k top eigenvalues held at 2/η by the
semidefinite complementarity problem, Baumgarte rate κ = 1, midpoint Δτ = 0.5). Both flows
start where the discrete run has entered the EoS (``central.eos_onset``: its sharpness crossed
2/η and was brought back, the oscillation established), from the run's centre ½(y_t + y_{t+1}).
Printed: ‖w_disc − w_central‖/‖w_disc − w_flow‖ over time and at T (raw iterate, and its
centre), the predicted loss L + ½⟨Σ, H⟩ against the discrete loss, both averaged by the same
Gaussian filter (σ = 50 steps, over the EoS phase only; ``central.compare``): median / max
pointwise error over the EoS phase and the error of the phase means; sharpness. Eigenpairs by
block Lanczos warm-started from the previous eigenvectors (a cluster of eigenvalues held at
2/η together is found whole).
The settings run in parallel worker processes.
And Adam's preconditioned sharpness along a discrete run against (2 + 2β₁)/((1-β₁)η) (on the
100-digit MLP, ``tanh_mlp()``, where it hovers).
"""

import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import done, parse  # noqa: E402

from fluxode import plotting  # noqa: E402
from fluxode import sharpness as Sh  # noqa: E402
from fluxode.central import central_flow, compare  # noqa: E402
from fluxode.io import write_json  # noqa: E402

args = parse(__doc__)
q = args.quick
p = Sh.tanh_mlp(n=400)
# (optimizer, lr, T, k, hyperparameters): the onset (``eos_onset``, after the oscillation's
# collapse right after the first push back: GD η=0.5: 236 → 336; η=0.3: 1936 → 2132; RMSprop:
# 86 → 218) plus the EoS phase the previous run compared over (664 / 1464 / 614 steps); k
# covers the eigenvalues that reach 2/η (3-4 at η = 0.5, 1 at η = 0.3, 4 for RMSprop) and the
# next one
settings = [("gd", 0.5, 400 if q else 1000, 4, {}), ("gd", 0.3, 2190 if q else 3600, 2, {}),
            ("rmsprop", 1e-3, 280 if q else 850, 4, {"alpha": 0.99})]
if q:
    settings = settings[:1]


def run(setting):
    opt, lr, T, k, kw = setting
    torch.set_num_threads(1)
    r = compare(central_flow(opt, lr, k=k, **kw), p, T, save_every=10, sigma=50,
                method="midpoint", step_size=0.5)
    t = np.array(r["times"])
    rel = np.array(r["rel_loss_error"])
    at400 = int(np.argmin(np.abs(t - 400)))
    r["summary"] = {
        "start": r["start"], "crossing": r["crossing"], "k": k,
        "final_ratio": r["ratio"][-1], "final_ratio_centered": r["ratio_centered"][-1],
        "ratio_at_400": r["ratio"][at400] if t[0] < 400 < t[-1] else None,
        "ratio_over_time": {int(a): round(b, 4) for a, b in
                            zip(t[::max(1, len(t) // 8)], r["ratio"][::max(1, len(t) // 8)])},
        "median_rel_loss_error": float(np.median(rel)), "max_rel_loss_error": float(rel.max()),
        "eos_loss_error": r["eos_loss_error"],
        "central_sharpness_final": r["central_sharpness"][-1],
        "discrete_sharpness_range": [float(min(r["discrete_sharpness"])),
                                     float(max(r["discrete_sharpness"]))],
        "threshold": r["threshold"], "lanczos_max_residual": r["lanczos_max_residual"],
        "lanczos_all_converged": r["lanczos_all_converged"],
        "max_sdcp_residual": r["max_sdcp_residual"], "wall_time_s": r["wall_time_s"]}
    return r


# the settings and Adam's run are independent: one single-threaded worker process each
with ProcessPoolExecutor(len(settings) + 1, mp_context=get_context("fork")) as pool:
    jobs = [pool.submit(run, setting) for setting in settings]
    adam_job = pool.submit(Sh.track, "adam", Sh.tanh_mlp(), 500 if q else 1500, every=25, lr=0.01,
                           betas=(0.9, 0.999))
    records = [job.result() for job in jobs]
    adam = adam_job.result()
for (_, _, T, _, _), r in zip(settings, records):
    opt, lr = r["optimizer"], r["lr"]
    k = r["k"]
    s = r["summary"]
    at_400 = "" if s["ratio_at_400"] is None else f", at 400 {s['ratio_at_400']:.3f}"
    print(f"{opt} η={lr:g} T={T} k={k}: S crosses 2/η at {s['crossing']}, EoS from "
          f"{s['start']}; ratio at T {s['final_ratio']:.3f} (centre {s['final_ratio_centered']:.3f}"
          f"{at_400}; over time {s['ratio_over_time']}); predicted vs "
          f"averaged loss (Gaussian σ = 50): median {s['median_rel_loss_error']:.3f}, max "
          f"{s['max_rel_loss_error']:.3f}, phase means {s['eos_loss_error']:.3f}; S_central "
          f"{s['central_sharpness_final']:.4g} vs threshold {r['threshold']:.4g}; discrete S in "
          f"{np.round(s['discrete_sharpness_range'], 4).tolist()}; Lanczos residual ≤ "
          f"{s['lanczos_max_residual']:.1e}, converged {s['lanczos_all_converged']}; SDCP "
          f"residual ≤ {s['max_sdcp_residual']:.1e}; {s['wall_time_s']:.0f}s", flush=True)

steps = np.array(adam["sharpness_steps"])
ratio = np.array(adam["sharpness"]) / adam["threshold"]
late = ratio[steps >= steps[-1] / 3]
adam["hover"] = {"from_step": int(steps[-1] / 3), "min": float(late.min()),
                 "max": float(late.max()), "mean": float(late.mean())}
print(f"adam η=0.01 β=(0.9, 0.999): preconditioned sharpness / (38/η) from step "
      f"{adam['hover']['from_step']} in [{late.min():.3f}, {late.max():.3f}], mean "
      f"{late.mean():.3f}", flush=True)

fig = plotting.central_flows(records, title=f"{p.dim}-parameter tanh MLP on 400 digits: "
                             "discrete vs plain flow vs central flow")
png = plotting.save(fig, args.out / "central_flows.png", dpi=110)
fig2 = plotting.edge_of_stability([adam], title="Adam: preconditioned sharpness vs "
                                  "(2+2β₁)/((1-β₁)η)")
png2 = plotting.save(fig2, args.out / "adam_preconditioned_sharpness.png", dpi=110)
js = write_json(args.out / "central_flows.json", {"central": records, "adam": adam})
done(args, js, png, png2)
