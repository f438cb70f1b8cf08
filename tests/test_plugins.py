"""Flows from outside fluxode: the registry, CLI flags derived from hyperparameters, and the
package in tests/flowpkg (Lion, a factored second moment) run through every front door.

Subprocesses put tests/flowpkg on PYTHONPATH: its fluxode_flowpkg-0.1.dist-info declares the
two flows in the entry-point group ``fluxode.flows``, as an installed package would."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from torch import nn

from fluxode import FLOWS, Flow, FlowOptimizer, make_flow, register_flow
from fluxode.commands import hyperparameters as H
from fluxode.discretize import run_discrete
from fluxode.flows import registry
from fluxode.flows.sgd import SGD

PKG = Path(__file__).parent / "flowpkg"


@pytest.fixture
def flowpkg(monkeypatch):
    """The plugin module, imported in-process; the registry is restored afterwards."""
    len(FLOWS)  # load the entry points before the snapshot
    monkeypatch.setattr(FLOWS, "_classes", dict(FLOWS._classes))
    monkeypatch.syspath_prepend(str(PKG))
    import flowpkg

    for cls in (flowpkg.Lion, flowpkg.FactoredRMS):  # registered on first import only
        register_flow(cls)
    return flowpkg


def fluxode_cli(*argv, timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PKG), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-m", "fluxode", *argv], capture_output=True,
                          text=True, env=env, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# --- the registry ------------------------------------------------------------------------------
def test_register_flow_refuses_duplicates_and_validates(flowpkg):
    class Other(flowpkg.Lion):
        pass

    with pytest.raises(ValueError, match="'my-lion' is already registered.*replace=True"):
        register_flow(Other)
    assert register_flow(flowpkg.Lion) is flowpkg.Lion  # the same class again: a no-op
    assert register_flow(Other, replace=True) is Other and FLOWS["my-lion"] is Other

    @register_flow(name="lion-alias")
    class Alias(flowpkg.Lion):
        pass

    assert FLOWS["lion-alias"] is Alias
    with pytest.raises(TypeError, match="subclass of fluxode.Flow"):
        register_flow(int)
    with pytest.raises(ValueError, match="non-empty string `name`"):
        register_flow(type("Nameless", (Flow,), {"blocks": lambda s: [],
                                                 "equations": lambda s: []}))
    with pytest.raises(ValueError, match="must define blocks\\(\\) and equations\\(\\)"):
        register_flow(type("Empty", (Flow,), {"name": "empty"}))


def test_entry_points_load_lazily_and_a_broken_plugin_only_warns(monkeypatch):
    eps = [metadata.EntryPoint("broken", "no_such_module_for_fluxode:Flow", registry.GROUP),
           metadata.EntryPoint("sgd", "fluxode.flows.sgd:SGD", registry.GROUP)]
    calls = []
    monkeypatch.setattr(registry, "_entry_points", lambda group: calls.append(group) or eps)
    reg = registry.Registry()
    assert not calls  # nothing is read before the registry is
    with pytest.warns(RuntimeWarning, match="flow plugin broken = no_such_module"):
        assert list(reg) == ["sgd"]
    assert reg["sgd"] is SGD and calls == [registry.GROUP]
    len(reg)
    assert calls == [registry.GROUP]  # loaded once


def test_installed_plugin_is_found_through_its_entry_points(flowpkg):
    reg = registry.Registry()
    assert {"my-lion", "factored-rms"} <= set(reg)
    assert reg["my-lion"] is flowpkg.Lion and reg["factored-rms"] is flowpkg.FactoredRMS


def test_make_flow_takes_a_name_a_class_or_an_instance(flowpkg):
    lion = make_flow(flowpkg.Lion, lr=3e-4, betas=(0.95, 0.98))
    assert isinstance(lion, flowpkg.Lion) and lion.lr == 3e-4 and lion.betas == (0.95, 0.98)
    assert make_flow(lion) is lion
    assert isinstance(make_flow("my-lion"), flowpkg.Lion)
    with pytest.raises(ValueError, match="ready-made flow"):
        make_flow(lion, lr=1.0)
    with pytest.raises(ValueError, match="flow 'my-lion' has no hyperparameter 'momentum'"):
        make_flow(flowpkg.Lion, momentum=0.9)
    with pytest.raises(ValueError, match="flow must be one of"):
        make_flow("no-such-flow")
    with pytest.raises(ValueError, match="betas"):
        make_flow("my-lion", betas=(1.5, 0.9))


# --- flags derived from the hyperparameters --------------------------------------------------
def test_flags_are_typed_from_the_flows_defaults():
    p = argparse.ArgumentParser()
    p.add_argument("--h", type=float, default=1.0)  # the command's own flag wins
    H.add_flags(p, skip=("lr",))
    args = p.parse_args(["--weight-decay", "0.1", "--no-amsgrad", "--nesterov", "--betas",
                         "0.8", "0.9", "--schedule", "cosine:500", "--max-dim", "16",
                         "--max-grad-norm", "1.5", "--h", "0.5"])
    assert H.collect(args) == {"weight_decay": 0.1, "amsgrad": False, "nesterov": True,
                               "betas": (0.8, 0.9), "schedule": "cosine:500", "max_dim": 16,
                               "max_grad_norm": 1.5}
    assert args.h == 0.5 and "lr" not in vars(args)
    assert H.collect(p.parse_args([])) == {}
    with pytest.raises(ValueError, match="flow 'adam' has no hyperparameter '(nesterov|max_dim)"):
        H.collect(args, flow="adam")
    with pytest.raises(SystemExit):
        p.parse_args(["--betas", "0.9"])  # Adam's betas take two numbers


def test_a_flag_the_flow_does_not_take_is_one_line_error(capsys):
    from fluxode.cli import main

    assert main(["limit", "--flow", "adam", "--momentum", "0.9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "flow 'adam'" in err and "'momentum'" in err


def test_verify_flow_filter_refuses_flows_without_a_twin():
    from fluxode.verify import verify

    with pytest.raises(ValueError, match="flow 'newton' names no installed reference twin"):
        verify(steps=1, flows=["newton"])
    with pytest.raises(ValueError, match="flow must be one of"):
        verify(steps=1, flows=["nope"])


# --- the plugin flows, in-process ---------------------------------------------------------------
def lion_loop(p, grad, steps, lr, betas, wd):
    """lion-pytorch's update, written out (lion-pytorch itself is not a dependency)."""
    m = torch.zeros_like(p)
    b1, b2 = betas
    for _ in range(steps):
        g = grad(p)
        p.mul_(1 - lr * wd)
        update = m.clone().mul_(b1).add(g, alpha=1 - b1).sign_()
        p.add_(update, alpha=-lr)
        m.lerp_(g, 1 - b2)
    return p


def test_lion_discrete_run_is_the_lion_loop_bit_for_bit(flowpkg):
    torch.manual_seed(0)
    A = torch.randn(6, 6, dtype=torch.float64)
    A = A @ A.T + torch.eye(6, dtype=torch.float64)
    W0 = torch.randn(6, dtype=torch.float64)
    lion = flowpkg.Lion(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    _, Ws = run_discrete(lion, lambda W: A @ W, W0, 200)
    ref = lion_loop(W0.clone(), lambda W: A @ W, 200, 1e-2, (0.9, 0.99), 0.1)
    assert torch.equal(Ws[-1], ref)


def _net_and_loss(seed=0):
    torch.manual_seed(seed)
    net = nn.Linear(4, 3).double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    return net, lambda model: nn.functional.mse_loss(model(x), y)


def test_lion_in_flowoptimizer_discrete_is_the_lion_loop_bit_for_bit(flowpkg):
    net, loss_of = _net_and_loss()
    twin, _ = _net_and_loss()
    opt = FlowOptimizer(net.parameters(), flowpkg.Lion, method="discrete", lr=1e-2,
                        betas=(0.9, 0.99), weight_decay=0.1)
    ms = [torch.zeros_like(p) for p in twin.parameters()]
    for _ in range(50):
        opt.zero_grad()
        loss_of(net).backward()
        opt.step()
        twin.zero_grad()
        loss_of(twin).backward()
        with torch.no_grad():  # lion-pytorch's step, by hand
            for p, m in zip(twin.parameters(), ms):
                p.mul_(1 - 1e-2 * 0.1)
                p.add_(m.clone().mul_(0.9).add(p.grad, alpha=1 - 0.9).sign_(), alpha=-1e-2)
                m.lerp_(p.grad, 1 - 0.99)
    for p, q in zip(net.parameters(), twin.parameters()):
        assert torch.equal(p.detach(), q.detach())


@pytest.mark.parametrize("flow", ["Lion", "FactoredRMS"])
@pytest.mark.parametrize("method", ["discrete", "rk4"])
def test_plugin_flows_step_an_nn_linear(flowpkg, flow, method):
    net, loss_of = _net_and_loss(1)
    cls = getattr(flowpkg, flow)
    opt = FlowOptimizer(net.parameters(), cls, method=method, lr=1e-2)

    def closure():
        opt.zero_grad()
        loss = loss_of(net)
        loss.backward()
        return loss

    first = float(closure().detach())
    for _ in range(20):
        opt.step(closure)
    assert float(loss_of(net).detach()) < first
    assert all(torch.isfinite(p).all() for p in net.parameters())
    if flow == "FactoredRMS":  # factored rows/cols for the weight, a full v for the bias
        w, b = opt.state[net.weight], opt.state[net.bias]
        assert tuple(w["r"].shape) == (3,) and tuple(w["c"].shape) == (4,)
        assert tuple(b["r"].shape) == (3,)


def test_factored_second_moment_matches_a_hand_loop(flowpkg):
    """Discrete factored-rms on a 2-D W: r, c start at the first gradient's row/col means."""
    torch.manual_seed(2)
    T = torch.randn(5, 3, dtype=torch.float64)
    W0 = torch.randn(5, 3, dtype=torch.float64)

    def grad(W):
        return (W - T) * torch.linspace(0.5, 2.0, 15, dtype=torch.float64).reshape(5, 3)

    lr, b2, eps = 1e-2, 0.9, 1e-8
    _, Ws = run_discrete(flowpkg.FactoredRMS(lr=lr, beta2=b2, eps=eps), grad, W0, 30)
    W, r, c = W0.clone(), None, None
    for _ in range(30):
        g = grad(W)
        if r is None:
            r, c = (g * g).mean(-1), (g * g).mean(-2)
        r = b2 * r + (1 - b2) * (g * g).mean(-1)
        c = b2 * c + (1 - b2) * (g * g).mean(-2)
        vhat = torch.outer(r, c) / r.mean()
        W = W - lr * g / (vhat.sqrt() + eps)
    torch.testing.assert_close(Ws[-1], W, rtol=1e-12, atol=1e-14)


# --- every command, in a subprocess with the plugin "installed" ------------------------------
FLOWS_AND_MODULES = """
import contextlib, io, json, sys
from fluxode.cli import main
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    assert main(["flows", "--json"]) == 0
heavy = ("torchdiffeq", "scipy", "matplotlib", "torchsde")
print(json.dumps({"flows": json.loads(buf.getvalue()),
                  "imported": sorted({m.split(".")[0] for m in sys.modules} & set(heavy))}))
"""


def test_fluxode_flows_lists_the_plugin_flows():
    """... and imports none of the solver, statistics and plotting libraries (a fresh
    process: the command imports only what it runs)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PKG), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", FLOWS_AND_MODULES], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["imported"] == []
    out = result["flows"]
    names = {r["flow"] for r in out}
    assert {"my-lion", "factored-rms", "sgd", "adam"} <= names
    lion = next(r for r in out if r["flow"] == "my-lion")
    assert lion["state"] == ["W", "m"] and "sign" in lion["equations"][1]


def test_fluxode_compare_runs_lion(tmp_path):
    out = json.loads(fluxode_cli("compare", "--flow", "my-lion", "--problem", "quadratic",
                                 "--lr", "0.01", "--betas", "0.9", "0.99", "--steps", "20",
                                 "--method", "rk4", "--step-size", "0.25",
                                 "--out", str(tmp_path), "--json"))
    assert out["hyperparameters"]["betas"] == [0.9, 0.99]
    assert out["max_param_distance"] < 0.1


def test_fluxode_limit_fits_order_one_for_the_smooth_plugin_flow():
    rec = json.loads(fluxode_cli("limit", "--flow", "factored-rms", "--problem", "quadratic",
                                 "--path", "rates", "--lr", "0.02", "--beta2", "0.99",
                                 "--T", "2", "--hs", "0.125", "0.0625", "0.03125", "--json"))
    lo, hi = rec["order_ci"]
    assert abs(rec["order"] - 1) < 0.01 and lo <= 1 <= hi, rec


def test_fluxode_train_runs_lion_with_rk4(tmp_path):
    out = json.loads(fluxode_cli("train", "--flow", "my-lion", "--method", "rk4", "--epochs", "1",
                                 "--dataset", "iris", "--model", "logreg", "--batch-size", "64",
                                 "--lr", "1e-3", "--betas", "0.9", "0.99",
                                 "--out", str(tmp_path), "--json"))
    assert out["flow"] == "my-lion" and out["steps"] >= 1 and out["nfe_per_step"] == 4.0


def test_readme_lion_is_the_plugin_lion_in_at_most_30_lines():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Write your own flow", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.splitlines()) <= 30
    cls = code[code.index("@register_flow"):]
    assert cls in (PKG / "flowpkg" / "__init__.py").read_text()
