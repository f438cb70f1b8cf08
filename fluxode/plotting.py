"""Every figure fluxode draws, and the one way they are written.

Analysis modules return data; the functions here turn that data into matplotlib Figures.
Each builder returns a Figure; ``save`` writes one atomically (``fluxode.io.save_figure``,
format from the suffix). The ``plot_*`` helpers build and save in one call.

Comparisons (``fluxode.compare``)
    trajectory_panels  one panel per optimizer: both runs over the loss contours (2-D problems)
    loss_curves        L(W(τ)) of both runs, log scale
    distance_curves    ‖W_disc - W_cont‖ and |ΔL| over τ, log scale
    contour_grid       (X, Y, Z) loss values on a grid, for contour plots of 2-D problems
Limits, sweeps, training (``fluxode.limits``, ``fluxode.sweep``, ``fluxode.train``)
    error_vs_h         log-log error vs step h of limit sweeps, fitted orders in the legend
    final_loss_map     log₁₀ final loss over an lr × momentum grid
    learning_curves    training loss, test accuracy and evaluations per step over epochs
Studies (``experiments/``)
    sde_moments, modified_equations, edge_of_stability, stability_curves, training_runs

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), never pyplot:
nothing here selects a backend or touches pyplot's figure registry, so the module works
headless and leaves a notebook's inline backend alone.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import contourpy
import matplotlib
import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator

from . import io

DISC = dict(color="#d62728", lw=1.0, marker="o", ms=2.2, label="discrete (h = 1, torch.optim)")
CONT = dict(color="#1f77b4", lw=1.8, label="continuous (ODE)")
COLORS = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]


MINOR_DECADES = 2  # log axes spanning more decades get no minor ticks (see _style)
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _decade(x, pos=None) -> str:
    """The label 10ᵏ of a decade tick, in plain text (no mathtext to parse and lay out)."""
    return "10" + str(round(math.log10(x))).translate(_SUPERSCRIPT)


def _style(ax, xlabel="step clock τ", ylabel=None, log=False):
    """Labels, a light major grid, no top/right spines. A log y axis over more than
    ``MINOR_DECADES`` decades has ticks at decades only, labelled 10ᵏ in plain text: the
    unlabelled 2…9 × 10ᵏ minor ticks and mathtext labels add nothing readable there and were
    over half of what such a figure costs to draw (≈ 0.3 s per axis). Call it after
    plotting, so the data limits are known."""
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        if hi > lo > 0 and math.log10(hi / lo) > MINOR_DECADES:
            ax.yaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_major_formatter(FuncFormatter(_decade))
    ax.grid(True, which="major", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def contour_grid(problem, n: int = 200,
                 bounds=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, Y, Z): ``problem``'s loss on an n×n grid over ``bounds`` (default the problem's own,
    else [-2, 2]²), for contour plots of 2-D problems."""
    if problem.dim != 2:
        raise ValueError(f"contour_grid needs a 2-D problem, {problem.name!r} has dim "
                         f"{problem.dim}")
    (x0, x1), (y0, y1) = bounds or problem.bounds or ((-2, 2), (-2, 2))
    xs = torch.linspace(x0, x1, n, dtype=torch.float64)
    ys = torch.linspace(y0, y1, n, dtype=torch.float64)
    X, Y = torch.meshgrid(xs, ys, indexing="xy")
    P = torch.stack([X.reshape(-1), Y.reshape(-1)], 1).to(problem.dtype)
    Z = torch.stack([problem.loss(p) for p in P]) if not hasattr(problem, "loss_batch") \
        else problem.loss_batch(P)
    return X.numpy(), Y.numpy(), Z.reshape(n, n).double().cpu().numpy()


def trajectory_panels(problem, comparisons, ncols: int | None = None, n_contours: int = 25):
    """Side-by-side panels over log-spaced loss contours, one per comparison."""
    X, Y, Z = contour_grid(problem, 300)
    floor = 1e-4 * float(Z.max() - Z.min())      # log-spaced levels of L - min L
    Zs = Z - float(Z.min()) + floor
    levels = np.geomspace(floor * 3, float(Zs.max()), n_contours)
    contours = contourpy.contour_generator(X, Y, Zs, line_type=contourpy.LineType.Separate)
    lines = [line for level in levels for line in contours.lines(level)]  # once, every panel
    n = len(comparisons)
    ncols = ncols or n
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(max(3.6 * ncols, 6.0), 3.3 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    for ax, comp in zip(axes.flat, comparisons):
        ax.add_collection(LineCollection(lines, colors="0.6", linewidths=0.6),
                          autolim=False)
        d = comp.discrete.W.double().cpu().numpy()
        c = comp.continuous.W.double().cpu().numpy()
        ax.plot(d[:, 0], d[:, 1], **DISC)
        ax.plot(c[:, 0], c[:, 1], **CONT)
        ax.plot(*d[0], "k^", ms=6, label="start")
        if problem.minimizer is not None:
            m = problem.minimizer.double().cpu().numpy()
            ax.plot(*m, "k*", ms=9, label="minimum")
        ax.set_title(comp.label, fontsize=10)
        (x0, x1), (y0, y1) = problem.bounds
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_xlabel("w₁")
    for ax in axes[:, 0]:
        ax.set_ylabel("w₂")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels) if ncols > 2 else 2,
               frameon=False)
    fig.suptitle(f"{problem.name}: discrete vs continuous trajectories "
                 f"({comparisons[0].discrete.stats['steps']} steps)")
    return fig


def loss_curves(comparisons, title: str = "loss"):
    """L over τ for each optimizer: discrete markers, continuous lines, log scale."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, comp in enumerate(comparisons):
        col = COLORS[i % len(COLORS)]
        td, tc = comp.discrete.times.numpy(), comp.continuous.times.numpy()
        ld, lc = comp.discrete.losses.numpy(), comp.continuous.losses.numpy()
        floor = np.finfo(np.float64).tiny
        ax.plot(tc, np.maximum(lc, floor), color=col, lw=1.6, label=f"{comp.label} (ODE)")
        ax.plot(td, np.maximum(ld, floor), color=col, lw=0, marker="o", ms=3.0, mfc="none",
                markevery=max(1, len(td) // 40), label=f"{comp.label} (discrete)")
    positive = all(float(c.discrete.losses.min()) > 0 and float(c.continuous.losses.min()) > 0
                   for c in comparisons)
    _style(ax, ylabel="loss L(W)", log=positive)
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=2, frameon=False)
    return fig


def distance_curves(comparisons, title: str = "discrete vs continuous"):
    """‖W_disc(τ) - W_cont(τ)‖₂ and |L_disc - L_cont| over τ (log scale)."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    tiny = 1e-18
    for i, comp in enumerate(comparisons):
        col = COLORS[i % len(COLORS)]
        t = comp.times.numpy()
        a1.plot(t[1:], np.maximum(comp.param_distance.numpy()[1:], tiny), color=col,
                label=comp.label)
        a2.plot(t[1:], np.maximum(comp.loss_gap.abs().numpy()[1:], tiny), color=col,
                label=comp.label)
    _style(a1, ylabel="‖W_discrete − W_ODE‖₂", log=True)
    _style(a2, ylabel="|L_discrete − L_ODE|", log=True)
    a1.legend(fontsize=8, frameon=False)
    fig.suptitle(title)
    return fig


# --- limits, sweeps, training -------------------------------------------------------------------
def error_vs_h(sweeps, title: str | None = None, slopes=(1, 2)):
    """Log-log error vs h for one or more ``fluxode.limits.Sweep`` records, fitted orders in
    the legend, reference slopes as dashed lines through the first sweep's largest-h point."""
    sweeps = [sweeps] if hasattr(sweeps, "errors") else list(sweeps)
    fig = Figure(figsize=(5.6, 4.2))
    ax = fig.subplots()
    for s, marker in zip(sweeps, "osD^v<>"):
        lo, hi = s.order_ci
        ax.loglog(s.hs, s.errors, marker + "-", ms=5,
                  label=f"{s.flow} vs {s.reference} ({s.path}): p = {s.order:.3f} "
                        f"[{lo:.2f}, {hi:.2f}]")
    h = np.array(sweeps[0].hs)
    e0 = sweeps[0].errors[0]
    for p, ls in zip(slopes, ("--", ":", "-.")):
        ax.loglog(h, e0 * (h / h[0]) ** p, "k" + ls, lw=0.8, alpha=0.6, label=f"slope {p}")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("step h (step clock)")
    ax.set_ylabel(r"global error $\|W_h(T) - W(T)\|_2$")
    ax.set_title(title or f"error vs step size, T = {sweeps[0].T:g}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_sweeps(sweeps, path, title: str | None = None, slopes=(1, 2)) -> Path:
    """``error_vs_h`` saved to ``path`` (atomically); returns the path."""
    return save(error_vs_h(sweeps, title=title, slopes=slopes), path, dpi=130)


def final_loss_map(final_loss, lrs, momenta, title: str = ""):
    """log₁₀ of the final loss over an lr × momentum grid (``final_loss`` in row-major
    lr-then-momentum order, as ``fluxode.sweep`` returns it); colours saturate at 10."""
    Z = torch.log10(torch.as_tensor(final_loss).double().clamp(min=1e-300))
    Z = Z.reshape(len(lrs), len(momenta))
    fig = Figure(figsize=(5.6, 4.4))
    ax = fig.subplots()
    im = ax.imshow(Z.numpy(), origin="lower", aspect="auto", cmap="viridis",
                   vmin=float(Z.min()), vmax=1.0)
    ax.set_xticks(range(len(momenta)), [f"{m:.1f}" for m in momenta])
    ax.set_yticks(range(len(lrs)), [f"{lr:.3g}" for lr in lrs])
    ax.set_xlabel("momentum μ")
    ax.set_ylabel("lr")
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, label="log₁₀ final loss (≥ 1: diverging)")
    fig.tight_layout()
    return fig


def learning_curves(runs: dict[str, list[dict]], title: str = ""):
    """Training loss, test accuracy and evaluations per step against epochs, one line per run
    (each run a list of ``fluxode.train`` history rows)."""
    fig = Figure(figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    for label, hist in runs.items():
        ep = [r["epoch"] for r in hist]
        axes[0].semilogy(ep, [r["train_loss"] for r in hist], marker="o", label=label)
        axes[1].plot(ep, [r["test_accuracy"] for r in hist], marker="o", label=label)
        axes[2].plot(ep, [r["nfe_per_step"] for r in hist], marker="o", label=label)
    for ax, name in zip(axes, ("training loss (epoch mean)", "test accuracy",
                               "gradient evaluations / step")):
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[2].set_ylim(bottom=0)
    axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_learning_curves(path, runs: dict[str, list[dict]], title: str = "") -> Path:
    """``learning_curves`` saved to ``path`` (atomically); returns the path."""
    return save(learning_curves(runs, title=title), path, dpi=110)


# --- studies (experiments/) ---------------------------------------------------------------------
def sde_moments(lte: dict, sq: dict, ad: dict):
    """Three panels: SGD vs its order-1/2 SDEs (``sde.li_tai_e_study``), RMSprop and Adam vs
    their square-root-path SDEs (``sde.sqrt_path_study``, ``sde.adam_sqrt_path_study``)."""
    fig = Figure(figsize=(16, 4))
    a1, a2, a3 = fig.subplots(1, 3)
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
    for a, study, slope, name in ((a2, sq, 0.5, "RMSprop → its SDE (Malladi et al. 2022)"),
                                  (a3, ad, 1.0, "Adam (bias-correction clocks) → its SDE")):
        rows = study["rows"]
        h = [r["h"] for r in rows]
        a.loglog(h, [r["var_err"] for r in rows], "o-", label="|var - var_SDE|")
        a.loglog(h, [r["mean_err"] for r in rows], "s-", label="|mean - mean_SDE|")
        a.loglog(h, [2 * r["var_se"] for r in rows], "k:", label="2 × Monte Carlo s.e. (var)")
        a.loglog(h, [rows[0]["var_err"] * (x / h[0]) ** slope for x in h], "k--", lw=0.8,
                 label="slope 1/2 (weak order O(√h))" if slope == 0.5 else "slope 1")
        a.set_title(name)
        a.xaxis.set_minor_formatter(NullFormatter())
        a.set_xlabel("h (square-root path)")
        a.legend(fontsize=7)
    for a in (a1, a2, a3):
        a.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def modified_equations(cases: list[tuple[str, object, object]], T: float = 10.0):
    """One panel per (label, plain sweep, modified sweep): error vs h against the plain and
    the modified flow, with slope-1 and slope-2 guides."""
    fig = Figure(figsize=(15, 3.8))
    axes = fig.subplots(1, len(cases), squeeze=False)[0]
    for ax, (label, pl, md) in zip(axes, cases):
        h = np.array(pl.hs)
        ax.loglog(h, pl.errors, "o-", label=f"vs plain flow: p={pl.order:.2f}")
        ax.loglog(h, md.errors, "s-", label=f"vs modified flow: p={md.order:.2f}")
        ax.loglog(h, pl.errors[0] * (h / h[0]), "k--", lw=0.8, label="slope 1")
        ax.loglog(h, md.errors[0] * (h / h[0]) ** 2, "k:", lw=0.8, label="slope 2")
        ax.set_title(label, fontsize=10)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("h")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel(rf"$\|W_h(T) - W(T)\|$, T = {T:g}")
    fig.tight_layout()
    return fig


def edge_of_stability(runs: list[dict], title: str = ""):
    """Sharpness against 2/η and training loss over steps, one colour per
    ``fluxode.sharpness.track`` run."""
    fig = Figure(figsize=(11, 4))
    a1, a2 = fig.subplots(1, 2)
    for r, c in zip(runs, ["C3", "C0", "C2", "C1"]):
        a1.plot(r["sharpness_steps"], r["sharpness"], color=c, label=f"η = {r['lr']:g}")
        a1.axhline(r["threshold"], color=c, ls="--", lw=0.9, label=f"2/η = {r['threshold']:g}")
        a2.semilogy(r["loss"], color=c, label=f"η = {r['lr']:g}")
    a1.set_xlabel("step")
    a1.set_ylabel("sharpness λ_max(∇²L)")
    if title:
        a1.set_title(title)
    a1.legend(fontsize=8)
    a2.set_xlabel("step")
    a2.set_ylabel("training loss (MSE)")
    a2.legend(fontsize=8)
    for a in (a1, a2):
        a.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def stability_curves(curves: list[dict], title: str = ""):
    """Spectral radius of the one-step map against lr / (formula threshold): each curve a dict
    with ``label``, ``lr_star``, ``x`` (the lr ratios) and ``rho``."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for cv, c in zip(curves, ["C0", "C1", "C2", "C3", "C4", "C5"]):
        ax.plot(cv["x"], cv["rho"], color=c, label=f"{cv['label']}: lr* = {cv['lr_star']:.4g}")
    ax.axhline(1, color="k", lw=0.8)
    ax.axvline(1, color="k", ls="--", lw=0.8)
    ax.set_xlabel("lr / formula threshold")
    ax.set_ylabel("spectral radius of the one-step map")
    if title:
        ax.set_title(title)
    ax.set_ylim(0, 2)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def training_runs(results: dict, title: str = ""):
    """Training loss, test accuracy, evaluations and wall time per epoch of several training
    runs: ``results[name]`` has ``history``, ``nfe_per_epoch`` and ``seconds_per_epoch``."""
    fig = Figure(figsize=(17, 4))
    ax = fig.subplots(1, 4)
    names = list(results)
    for name, marker in zip(names, "osD^v"):
        h = results[name]["history"]
        ep = [r["epoch"] for r in h]
        kw = {"ls": "--" if "discrete" in name else "-", "marker": marker, "mfc": "none",
              "label": name}
        ax[0].semilogy(ep, [r["train_loss"] for r in h], **kw)
        ax[1].plot(ep, [r["test_accuracy"] for r in h], **kw)
    ax[0].set_title("training loss (epoch mean)")
    ax[1].set_title("test accuracy")
    for a in ax[:2]:
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
    ax[1].legend(fontsize=8)
    y = range(len(names))
    ax[2].barh(y, [results[n]["nfe_per_epoch"] for n in names], color="tab:blue")
    ax[2].set_title("gradient evaluations / epoch")
    ax[3].barh(y, [results[n]["seconds_per_epoch"] for n in names], color="tab:orange")
    ax[3].set_title("wall time / epoch [s]")
    for a in ax[2:]:
        a.set_yticks(list(y), names, fontsize=8)
        a.invert_yaxis()
        a.grid(alpha=0.3, axis="x")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# --- the one way figures are written ------------------------------------------------------------
def save(fig, path: str | Path, dpi: int = 130) -> Path:
    """Write the figure atomically (format from the suffix; ``fluxode.io.save_figure``);
    returns the path written. A figure pyplot manages is closed (the builders here make
    unmanaged ones, freed with their last reference)."""
    try:
        return io.save_figure(fig, path, dpi=dpi)
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close(fig)


def central_flows(records: list[dict], title: str = ""):
    """One column per ``fluxode.central.compare`` record: ‖w_disc − w_central‖/‖w_disc −
    w_plain‖ over time; the discrete loss (raw and time-averaged), the plain flow's loss and
    the central flow's predicted loss; the discrete and central (preconditioned) sharpness
    with the threshold."""
    fig = Figure(figsize=(4.6 * len(records), 9.5))
    axes = fig.subplots(3, len(records), squeeze=False)
    for j, r in enumerate(records):
        t = r["times"]
        name = f"{r['optimizer']} η={r['lr']:g}"
        ax = axes[0, j]
        ax.plot(t[1:], r["ratio"][1:], color="C3")
        ax.axhline(0.1, color="k", ls=":", lw=1, label="target 0.1")
        ax.axhline(1.0, color="gray", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_title(name)
        _style(ax, ylabel="‖w_disc − w_central‖ / ‖w_disc − w_flow‖")
        ax.legend(fontsize=8)
        ax = axes[1, j]
        ax.plot(range(len(r["discrete_loss"])), r["discrete_loss"], color="C0", lw=0.5,
                alpha=0.4, label="discrete")
        ax.plot(t, r["discrete_loss_avg"], color="C0", label=f"discrete, {r['window']} mean")
        ax.plot(t, r["plain_loss"], color="C2", ls="--", label="plain flow")
        ax.plot(t, r["predicted_loss"], color="C3", label="central: L + ½σ²S")
        if "predicted_loss_avg" in r:  # the measure: both curves through the same filter
            ax.plot(t, r["predicted_loss_avg"], color="C3", ls=":",
                    label=f"central, {r['window']} mean")
        _style(ax, ylabel="loss", log=True)
        ax.legend(fontsize=8)
        ax = axes[2, j]
        ax.plot(t, r["discrete_sharpness"], "o-", ms=3, color="C0", label="discrete")
        ax.plot(t, r["central_sharpness"], color="C3", label="central")
        ax.axhline(r["threshold"], color="k", ls=":", lw=1, label="threshold")
        _style(ax, ylabel="(preconditioned) sharpness")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
