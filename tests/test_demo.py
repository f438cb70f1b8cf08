"""`fluxode demo`: every section and its claims, run as a user types it (stdout piped, so
block-buffered), and the second process it hands sections 3 and 4's figures to."""

import json
import math
import os
import re
import subprocess
import sys

import pytest

from fluxode.commands import demo
from fluxode.flows import FLOWS


@pytest.mark.parametrize("cores", [1, 2])
def test_background_runs_jobs_in_order_elsewhere_and_reraises_their_errors(monkeypatch, cores):
    monkeypatch.setattr(demo, "available_cores", lambda: cores)
    with demo._background() as later:
        pid = later(os.getpid)
        hyp = later(math.hypot, 3.0, 4.0)
        bad = later(int, "x")
        assert hyp() == 5.0
        assert (pid() != os.getpid()) == (cores > 1)  # one core: run here, when asked
        with pytest.raises(ValueError, match="invalid literal"):
            bad()


@pytest.mark.slow
def test_demo_command_prints_every_section_once_and_writes_its_figures(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "fluxode", "demo", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    for k in range(1, 5):  # once each: a forked process must not repeat buffered output
        assert len(re.findall(rf"^== {k}\. ", text, re.M)) == 1, text
    twins = [n for n, cls in FLOWS.items() if cls.torch_twin]
    assert len(re.findall(r"vs torch\.optim\.\w+ +bit-for-bit", text)) == len(twins) >= 12
    s3 = text.split("== 3.")[1].split("== 4.")[0]
    assert len(re.findall(r"^  (ravine|rosenbrock) ", s3, re.M)) == 8
    orders = [float(x) for x in re.findall(r"order (\d+\.\d+)  \(95% CI", text)]
    assert orders == [pytest.approx(1.0, abs=0.1), pytest.approx(2.0, abs=0.15)]
    summary = json.loads((out / "summary.json").read_text())
    assert {"verify", "demo_panels", "demo_error_vs_h", "seconds"} <= summary.keys()
    assert all(rec["bitwise"] for rec in summary["verify"])
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted([f"{p}_{k}.png" for p in ("ravine", "rosenbrock")
                           for k in ("trajectories", "losses", "distance")] + ["error_vs_h.png"])
    assert all((out / p).stat().st_size > 10_000 for p in pngs)
    assert (out / "compare_summary.json").exists() and (out / "error_vs_h.json").exists()
