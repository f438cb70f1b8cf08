"""Discrete vs continuous comparisons, figures and the ``fluxode compare`` command."""

import json

import numpy as np
import pytest
import torch

from fluxode import make_flow
from fluxode.cli import main
from fluxode.compare import compare
from fluxode.problems import make_problem


def test_runs_start_together_and_are_aligned():
    c = compare(make_flow("adam", lr=0.05), make_problem("ravine"), 30, refine=3)
    assert c.param_distance[0] == 0
    assert torch.equal(c.continuous_aligned.times, c.discrete.times)
    assert len(c.continuous.times) == 91
    s = c.summary()
    for key in ("max_param_distance", "final_param_distance", "final_loss_discrete",
                "final_loss_continuous", "nfe"):
        assert np.isfinite(s[key])
    assert s["max_param_distance"] >= s["final_param_distance"] > 0


def test_gd_gap_shrinks_linearly_with_h_at_tight_tolerance():
    """GD with step h vs gradient flow over τ ∈ [0, 4]: max distance ∝ h."""
    p = make_problem("quadratic")
    hs = [0.2, 0.1, 0.05]
    gaps = [compare(make_flow("sgd", lr=0.5), p, int(round(4 / h)), h=h, rtol=1e-11,
                    atol=1e-12).summary()["max_param_distance"] for h in hs]
    slope = np.polyfit(np.log(hs), np.log(gaps), 1)[0]
    assert abs(slope - 1) < 0.15
    # tightening the tolerance no longer changes the gap: it is the discretization's own
    loose = compare(make_flow("sgd", lr=0.5), p, 40, h=0.1, rtol=1e-9, atol=1e-10)
    assert abs(loose.summary()["max_param_distance"] - gaps[1]) < 1e-6 * gaps[1]


def test_compare_command_writes_figures_and_json(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["compare", "--flow", "sgd", "--problem", "ravine", "--lr", "0.01",
               "--momentum", "0.9", "--steps", "20", "--rtol", "1e-6", "--atol", "1e-8",
               "--out", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    for key in ("max_param_distance", "final_param_distance", "final_loss_discrete",
                "final_loss_continuous", "nfe"):
        assert key in summary
    assert json.loads((out / "summary.json").read_text())["nfe"] == summary["nfe"]
    for name in ("trajectories.png", "losses.png", "distance.png"):
        assert (out / name).stat().st_size > 10_000
    assert not list(out.glob(".*.tmp"))


def test_compare_command_bad_input(capsys):
    assert main(["compare", "--flow", "sgd", "--problem", "ravine", "--method", "rk45"]) == 2
    assert "method must be one of" in capsys.readouterr().err
    assert main(["compare", "--flow", "adam", "--problem", "ravine", "--momentum", "0.9"]) == 2
    assert main(["compare", "--flow", "sgd", "--problem", "nope"]) == 2


@pytest.mark.slow
def test_demo_panels(tmp_path):
    from fluxode.compare import demo_panels

    s = demo_panels(tmp_path)
    assert len(s["runs"]) == 8 and len(s["figures"]) == 6
    assert (tmp_path / "compare_summary.json").exists()
