"""Figures: analysis modules never import matplotlib; the builders in fluxode.plotting return
Figures (no pyplot) and ``save`` writes them atomically where asked."""

import subprocess
import sys

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
