"""Figures: analysis modules never import matplotlib; the builders in fluxode.plotting return
Figures (no pyplot) and ``save`` writes them atomically where asked."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from fluxode import plotting
from fluxode.limits import sweep
from fluxode.problems import Rosenbrock, make_problem


def test_analysis_modules_do_not_import_matplotlib_and_plotting_avoids_pyplot():
    code = ("import sys\n"
            "import fluxode, fluxode.limits, fluxode.sweep, fluxode.train, fluxode.compare, "
            "fluxode.problems, fluxode.cli\n"
            "assert 'matplotlib' not in sys.modules, 'analysis imported matplotlib'\n"
            "import fluxode.plotting\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'plotting imported pyplot'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_contour_grid():
    X, Y, Z = plotting.contour_grid(Rosenbrock(), 20)
    assert X.shape == Y.shape == Z.shape == (20, 20) and Z.min() >= 0
    with pytest.raises(ValueError, match="2-D"):
        plotting.contour_grid(make_problem("logreg-digits"), 5)


def test_plot_sweeps_and_learning_curves_write_pngs(tmp_path):
    s = sweep("sgd", "quadratic", T=1.0, hs=[0.25, 0.125, 0.0625])
    fig = plotting.error_vs_h(s)
    assert len(fig.axes) == 1 and len(fig.axes[0].get_lines()) == 3  # sweep + 2 slopes
    png = plotting.plot_sweeps([s, s], tmp_path / "sub" / "e.png", title="t")
    assert png == tmp_path / "sub" / "e.png" and png.read_bytes()[:4] == b"\x89PNG"
    hist = [{"epoch": e, "train_loss": 1.0 / (e + 1), "test_accuracy": 0.5, "nfe_per_step": 4.0}
            for e in range(3)]
    out = plotting.plot_learning_curves(tmp_path / "lc.png", {"a": hist, "b": hist}, title="x")
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_final_loss_map_and_save_formats(tmp_path):
    fig = plotting.final_loss_map(torch.logspace(-3, 3, 6), [0.1, 0.2, 0.3], [0.5, 0.9])
    assert len(fig.axes) == 2  # the map and its colour bar
    assert plotting.save(fig, tmp_path / "m.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize("hi, decades_only", [(1e3, True), (50.0, False)])
def test_log_axes_over_many_decades_tick_decades_in_plain_text(hi, decades_only):
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    ax = Figure().subplots()
    ax.plot([0.0, 1.0], [1.0, hi])
    plotting._style(ax, log=True)
    assert isinstance(ax.yaxis.get_minor_locator(), NullLocator) == decades_only
    fmt = ax.yaxis.get_major_formatter()
    assert (fmt(1e-3) == "10⁻³") == decades_only  # else matplotlib's mathtext labels
    assert [plotting._decade(x) for x in (1e-18, 1.0, 1e5)] == ["10⁻¹⁸", "10⁰", "10⁵"]


def test_trajectory_panels_draw_the_same_level_sets_in_every_panel():
    from matplotlib.collections import LineCollection

    from fluxode.compare import compare

    problem = make_problem("ravine", dtype=torch.float64)
    comps = [compare(f, problem, 5, label=f) for f in ("sgd", "adam")]
    fig = plotting.trajectory_panels(problem, comps)
    sets = [[c for c in ax.collections if isinstance(c, LineCollection)] for ax in fig.axes[:2]]
    assert [len(s) for s in sets] == [1, 1]
    a, b = (s[0].get_segments() for s in sets)
    assert len(a) == len(b) > 25 and all((x == y).all() for x, y in zip(a, b))
    # the lines are level sets of L - min L (+ floor) at 25 log-spaced levels
    X, Y, Z = plotting.contour_grid(problem, 300)
    floor = 1e-4 * float(Z.max() - Z.min())
    levels = torch.logspace(math.log10(floor * 3), math.log10(float(Z.max() - Z.min()) + floor),
                            25, dtype=torch.float64)
    pts = torch.as_tensor(np.concatenate(a))
    vals = problem.loss_batch(pts) - float(Z.min()) + floor
    rel = ((vals[:, None] - levels[None]).abs() / levels[None]).min(1).values
    assert float(rel.max()) < 0.03  # linear interpolation on the 300² grid: ≈ 1%
