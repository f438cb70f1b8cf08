"""Modified flows of Adam and RMSprop along ``rates`` (float64): fitted order 2 where the plain
flows give 1, their closed-form pieces, and the capabilities that reach them."""

import math

import pytest
import torch

from fluxode import limits as L
from fluxode.flows import make_flow
from fluxode.flows.modified import ModifiedAdam, ModifiedRMSprop
from fluxode.integrate import integrate, run_discrete_trajectory
from fluxode.problems import make_problem

HS = [0.125 / 2 ** j for j in range(5)]


@pytest.mark.slow
def test_adam_modified_flow_is_order_two_where_the_plain_flow_is_order_one():
    flow = make_flow("adam", lr=0.05, betas=(0.9, 0.99))
    plain = L.sweep(flow, "quadratic", T=10.0, hs=HS)
    mod = L.sweep(flow, "quadratic", T=10.0, hs=HS, modified=True)
    assert plain.order == pytest.approx(1.0, abs=0.05)
    assert mod.order == pytest.approx(2.0, abs=0.05)
    # the modified flow's error is orders of magnitude below the plain one at every h
    assert all(m < 0.05 * p for m, p in zip(mod.errors, plain.errors))


def test_adamw_modified_flow_is_order_two_with_decoupled_decay():
    flow = make_flow("adamw", lr=0.05, betas=(0.8, 0.95), weight_decay=0.5)
    hs = HS[:4]
    mod = L.sweep(flow, "quadratic", T=5.0, hs=hs, modified=True)
    plain = L.sweep(flow, "quadratic", T=5.0, hs=hs)
    assert plain.order == pytest.approx(1.0, abs=0.1)
    assert mod.order == pytest.approx(2.0, abs=0.1)


def _warm_rmsprop_orders(eps):
    """Plain and modified orders of RMSprop from a warm state v₀ = g₀² (no v = 0 transient)."""
    p, T = make_problem("quadratic"), 10.0
    flow = make_flow("rmsprop", lr=0.01, alpha=0.9, eps=eps)
    W0 = p.x0()
    g0 = p.grad(W0)
    S0 = {"W": W0, "v": g0 * g0}
    times = torch.arange(0, T + 1e-9, HS[0], dtype=torch.float64)
    ref = integrate(flow, p, state=S0, save_at=times, rtol=1e-12, atol=1e-12).W[-1]
    plain, mod = [], []
    for h in HS:
        Wd = run_discrete_trajectory(flow, p, round(T / h), h=h, state=S0).W[-1]
        m = flow.modified(h)
        Wm = integrate(m, p, state=m.from_state(S0, g0), save_at=times, rtol=1e-12,
                       atol=1e-12).W[-1]
        plain.append(float((Wd - ref).norm()))
        mod.append(float((Wd - Wm).norm()))
    return L.fit_order(HS, plain), L.fit_order(HS, mod)


@pytest.mark.slow
def test_rmsprop_modified_flow_is_order_two_from_a_warm_state():
    plain, mod = _warm_rmsprop_orders(1e-8)
    assert plain.order == pytest.approx(1.0, abs=0.02)
    assert mod.order == pytest.approx(2.0, abs=0.02)
    assert plain.ci[1] < 1.5 < mod.ci[0]


def test_rmsprop_from_torchs_cold_start_has_a_sqrt_h_transient_the_shift_removes():
    """From v = 0 the field is ~1/√τ: the plain flow is order ½; the modified flow with its
    start shift (g frozen over the transient) brings the error down by two orders of
    magnitude and to order ≈ 1 — not 2 (the O(h) remainder of the transient; documented)."""
    flow = make_flow("rmsprop", lr=0.01, alpha=0.9)
    hs = HS[:4]
    plain = L.sweep(flow, "quadratic", T=5.0, hs=hs)
    mod = L.sweep(flow, "quadratic", T=5.0, hs=hs, modified=True)
    assert plain.order == pytest.approx(0.5, abs=0.05)
    assert mod.order == pytest.approx(1.0, abs=0.1)
    assert all(m < 0.01 * p for m, p in zip(mod.errors, plain.errors))


def test_modified_filters_reproduce_torchs_bias_corrections_at_the_midpoints():
    """c(τ) = 1 - √(1-hr)·e^{-r̃τ} equals the Euler clock 1 - (1-hr)ᵏ at τ = (k - ½)h."""
    h, b1, b2 = 0.25, 0.9, 0.99
    m = ModifiedAdam(lr=0.1, betas=(b1, b2), h=h)
    for (r, rt, c0) in zip((1 - b1, 1 - b2), m.filter_rates, m.clock_starts):
        assert rt == pytest.approx(r * (1 + h * r / 2), rel=h * h * r * r)
        for k in (1, 2, 7, 40):
            c = 1 - (1 - c0) * math.exp(-rt * (k - 0.5) * h)
            assert c == pytest.approx(1 - (1 - h * r) ** k, rel=1e-13)
    W = torch.tensor([1.0, -2.0], dtype=torch.float64)
    g0 = torch.tensor([0.3, -0.5], dtype=torch.float64)
    S = m.init(W, g0)
    assert torch.allclose(S["m"] / S["c1"], g0) and torch.allclose(S["v"] / S["c2"], g0 ** 2)
    assert torch.equal(S["W"], W)


def test_modified_rmsprop_field_is_the_barrett_dherin_correction_for_frozen_v():
    """With P = 1/(√v+ε): Ẇ = -ηP[g + (h/2)ηHPg]; for P = 1 this is -η∇(L + (hη/4)‖∇L‖²)."""
    p = make_problem("ravine")
    m = ModifiedRMSprop(lr=0.02, alpha=0.9, eps=1.0, h=0.5, shift_start=False)
    W = p.x0()
    g, H = p.grad(W), p.hessian(W)
    S = {"W": W, "v": torch.zeros_like(W)}  # P = 1/ε = 1
    from fluxode.discretize import vector_field

    dW = vector_field(m, 0.0, S, g, H)["W"]
    assert torch.allclose(dW, -0.02 * (g + 0.25 * 0.02 * H @ g), rtol=1e-14, atol=0)
    assert "H·P·g" in m.describe()


def test_start_shift_matches_a_brute_force_sum_with_g_frozen():
    m = ModifiedRMSprop(lr=0.01, alpha=0.9, eps=1e-3, h=0.25)
    g0 = torch.tensor([0.7, -0.02, 0.0], dtype=torch.float64)
    delta = m.start_shift(g0)
    # the discrete steps fall short of the flow's 1/√τ start: δ has the sign of g₀
    assert delta[2] == 0 and delta[0] > 0 > delta[1]
    # brute force: discrete steps vs a fine quadrature of the flow with g frozen
    h, r, rt, eps = 0.25, 0.1, m.filter_rate, 1e-3
    a = g0[:2].abs()
    want = torch.zeros(2, dtype=torch.float64)
    n_fine = 4000
    for k in range(2000):
        vd = a * a * (1 - (1 - h * r) ** (k + 1))
        s = (torch.arange(n_fine, dtype=torch.float64) + 0.5) / n_fine * h + k * h
        v = a[:, None] ** 2 * (1 - math.sqrt(1 - h * r) * torch.exp(-rt * s))
        flow_step = -(0.01 * a[:, None] / (v.sqrt() + eps)).mean(1) * h
        want += -h * 0.01 * a / (vd.sqrt() + eps) - flow_step
    assert torch.allclose(delta[:2].abs(), want.abs(), rtol=2e-3)


def test_capabilities_reach_the_modified_adaptive_flows():
    assert isinstance(make_flow("adam", lr=0.01).modified(0.5), ModifiedAdam)
    assert isinstance(make_flow("rmsprop", lr=0.01).modified(0.5), ModifiedRMSprop)
    with pytest.raises(ValueError, match="declares no modified flow along 'betas-fixed'"):
        make_flow("adam").modified(0.5, "betas-fixed")
    with pytest.raises(ValueError, match="amsgrad"):
        make_flow("adam", amsgrad=True).modified(0.5)
    with pytest.raises(ValueError, match="momentum=0"):
        make_flow("rmsprop", momentum=0.9).modified(0.5)
    with pytest.raises(ValueError, match="constant lr"):
        make_flow("rmsprop", schedule="cosine:100").modified(0.5)


def test_limit_command_runs_the_adam_modified_sweep(tmp_path):
    from fluxode.cli import main

    main(["limit", "--flow", "adam", "--problem", "quadratic", "--lr", "0.05", "--T", "4",
          "--hs", "0.125", "0.0625", "0.03125", "0.015625", "--modified", "--out", str(tmp_path)])
    import json

    rec = json.loads((tmp_path / "limit.json").read_text())
    assert rec["reference"] == "modified" and rec["order"] == pytest.approx(2.0, abs=0.1)


def test_limit_command_notes_a_singular_start(capsys):
    """From torch's v = 0 RMSprop's error is not a power series in h: the fitted order of the
    plain flow is about ½ (not 1), and the command says why; Adam's start is regular."""
    from fluxode.cli import main

    args = ["--problem", "quadratic", "--lr", "0.01", "--T", "2", "--hs", "0.25", "0.125",
            "0.0625"]
    main(["limit", "--flow", "rmsprop", *args])
    out = capsys.readouterr().out
    order = float(out.split("order ")[1].split()[0])
    assert order < 0.75
    assert "note: rmsprop starts where its field is singular (v(0) = 0" in out
    main(["limit", "--flow", "adam", *args])
    assert "note:" not in capsys.readouterr().out
