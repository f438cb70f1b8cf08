"""Figures for discrete-vs-continuous comparisons (matplotlib, Agg backend).

    trajectory_panels  one panel per optimizer: both runs over the loss contours (2-D problems)
    loss_curves        L(W(τ)) of both runs, log scale
    distance_curves    ‖W_disc - W_cont‖ and |ΔL| over τ, log scale

Each returns a Figure; ``save`` writes it atomically (``fluxode.io.save_figure``) and closes it.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import io  # noqa: E402

DISC = dict(color="#d62728", lw=1.0, marker="o", ms=2.2, label="discrete (h = 1, torch.optim)")
CONT = dict(color="#1f77b4", lw=1.8, label="continuous (ODE)")
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _style(ax, xlabel="step clock τ", ylabel=None, log=False):
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(True, which="major", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def trajectory_panels(problem, comparisons, ncols: int | None = None, n_contours: int = 25):
    """Side-by-side panels over log-spaced loss contours, one per comparison."""
    X, Y, Z = problem.contour_grid(300)
    floor = 1e-4 * float(Z.max() - Z.min())      # log-spaced levels of L - min L
    Zs = Z - float(Z.min()) + floor
    levels = np.geomspace(floor * 3, float(Zs.max()), n_contours)
    n = len(comparisons)
    ncols = ncols or n
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(3.6 * ncols, 6.0), 3.3 * nrows + 0.6),
                             squeeze=False,
                             sharex=True, sharey=True, constrained_layout=True)
    for ax, comp in zip(axes.flat, comparisons):
        ax.contour(X, Y, Zs, levels=levels, colors="0.6", linewidths=0.6,
                   norm=matplotlib.colors.LogNorm())
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
    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
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
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
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


def save(fig, path: str | Path, dpi: int = 130) -> Path:
    """Write the figure atomically and close it."""
    try:
        return io.save_figure(fig, path, dpi=dpi)
    finally:
        plt.close(fig)
