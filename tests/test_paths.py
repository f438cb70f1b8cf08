"""One clock and h given once; the square-root rule both ways; the modified heavy-ball start
and its error constant (against the derivation in fluxode.flows.modified); NAG as a discrete
flow and its gap to the Su–Boyd–Candès ODE. All float64."""

from __future__ import annotations

import math

import pytest
import torch

import fluxode.paths as P
from fluxode import make_flow
from fluxode.flows import nag
from fluxode.flows.modified import ModifiedAdam, ModifiedRMSprop
from fluxode.integrate import integrate, run_discrete_trajectory
from fluxode.limits import fit_order, sweep
from fluxode.problems import Quadratic

A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)


def _prob():
    return Quadratic(A, start=[1.0, -0.5])


# --- one clock, h once ------------------------------------------------------------------------
def test_h_is_given_once_and_a_mismatch_is_refused():
    flow = make_flow("sgd", lr=0.1, momentum=0.9)
    F = P.discrete_flow(flow, 0.25, "betas-fixed")
    once = run_discrete_trajectory(F, _prob(), 8)
    twice = run_discrete_trajectory(F, _prob(), 8, h=0.25)
    torch.testing.assert_close(once.W, twice.W, rtol=0, atol=0)
    assert float(once.times[-1]) == 2.0  # τ = k·h
    with pytest.raises(ValueError, match="disagrees"):
        run_discrete_trajectory(F, _prob(), 8, h=1.0)
    # rates: the flow carries h as well (same optimizer, step h)
    R = P.discrete_flow(flow, 0.5, "rates")
    assert P.step_of(R) == 0.5 and P.step_of(flow) == 1.0 and P.step_of(flow, 0.5) == 0.5
    with pytest.raises(ValueError, match="disagrees"):
        P.step_of(R, 0.25)


@pytest.mark.parametrize("name", ["modified-sgd", ModifiedAdam, ModifiedRMSprop, "nag"])
@pytest.mark.parametrize("h", [2.0, 0.0, -0.5, math.inf])
def test_every_flow_h_has_the_path_range(name, h):
    with pytest.raises(ValueError, match="h must be"):
        make_flow(name, h=h)
    with pytest.raises(ValueError, match="h must be"):
        P.discrete_flow(make_flow("sgd"), h)


def test_lr_time_is_an_explicit_conversion():
    assert P.lr_time(30.0, 0.1) == pytest.approx(3.0)
    assert P.step_time(3.0, 0.1) == pytest.approx(30.0)
    with pytest.raises(ValueError, match="lr"):
        P.lr_time(1.0, 0.0)


# --- sqrt path both ways -------------------------------------------------------------------------
def test_sqrt_scale_goes_both_ways_and_returns_hyperparameters_and_a_flow():
    base = make_flow("adam", lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    up = P.sqrt_scale(base, 4, batch_size=32)
    assert up.batch_size == 128 and up.noise_scale == 0.25 and up.steps_per_step == 4
    assert up.hyperparameters["lr"] == pytest.approx(2e-3)
    assert up.hyperparameters["betas"] == pytest.approx((0.6, 0.996))
    assert up.hyperparameters["eps"] == pytest.approx(5e-9)
    assert up.flow.name == "adam" and up.flow.hyperparameters() == up.hyperparameters
    down = P.sqrt_scale(base, 0.25, batch_size=32)
    assert down.batch_size == 8 and down.hyperparameters["lr"] == pytest.approx(5e-4)
    # κ and 1/κ invert each other
    back = P.sqrt_scale(up.flow, 0.25).hyperparameters
    for k in ("lr", "eps"):
        assert back[k] == pytest.approx(base.hyperparameters()[k], rel=1e-12)
    assert back["betas"] == pytest.approx(base.betas, rel=1e-12)
    with pytest.raises(ValueError, match="batch_size"):
        P.sqrt_scale(base, 0.3, batch_size=32)
    with pytest.raises(ValueError, match="leaves the flow's range"):
        P.sqrt_scale(base, 11.0)


def test_discrete_flow_on_the_sqrt_path_is_refused_with_the_way_to_run_it():
    with pytest.raises(ValueError, match="sqrt_point"):
        P.discrete_flow(make_flow("rmsprop"), 0.5, "sqrt")


# --- the modified heavy-ball start and error constant ------------------------------------------
def _slow_amplitude(s, lam, mu):
    """A/W₀ of heavy ball's slow mode on ½λw² (exact, from the two roots)."""
    x = s * lam
    b = 1 + mu - x
    disc = math.sqrt(b * b - 4 * mu)
    z1, z2 = (b + disc) / 2, (b - disc) / 2
    return (1 - x - z2) / (z1 - z2)


@pytest.mark.parametrize("mu", [0.3, 0.5, 0.8])
def test_modified_heavy_ball_start_matches_the_slow_mode_to_second_order(mu):
    """W(0)/W₀ - A/W₀ = O(s³) (the derived start), where the O(s) start leaves O(s²)."""
    lam, errs = 1.0, []
    hs = [(1 - mu) ** 2 * u for u in (0.016, 0.008, 0.004)]  # u = sλ/(1-μ)²
    for h in hs:
        f = make_flow("modified-sgd", lr=1.0, momentum=mu, h=h)
        W0 = float(integrate(f, Quadratic([[lam]], start=[1.0]), T=1).W[0, 0])
        errs.append(abs(W0 - _slow_amplitude(h, lam, mu)))
    assert fit_order(hs, errs).order == pytest.approx(3.0, abs=0.1)
    # the example: 1 + 2s + 20s² at μ = 0.5, s = 0.01
    if mu == 0.5:
        f = make_flow("modified-sgd", lr=1, momentum=0.5, h=0.01)
        W0 = float(integrate(f, Quadratic([[1.0]], start=[1.0]), T=1).W[0, 0])
        assert W0 == pytest.approx(1 + 2 * 0.01 + 20 * 0.01 ** 2, abs=2e-6)


def test_modified_heavy_ball_error_constant_matches_the_derivation():
    """‖W_h(T) - W(T)‖/h² → ‖C‖ (``ModifiedSGD.error_constant``), Richardson-extrapolated
    to O(h²), and the error vector points along C."""
    lr, mu, T = 0.1, 0.5, 20.0
    prob = _prob()
    hs = [0.25 / 2 ** j for j in range(5)]
    sw = sweep(make_flow("sgd", lr=lr, momentum=mu), prob, T=T, hs=hs, path="betas-fixed",
               modified=True)
    C = make_flow("modified-sgd", lr=lr, momentum=mu).error_constant(A, prob.x0(), T)
    r = [e / h ** 2 for e, h in zip(sw.errors, hs)]
    extrapolated = 2 * r[-1] - r[-2]  # r(h) = ‖C‖ + O(h)
    assert extrapolated == pytest.approx(float(C.norm()), rel=1e-3)
    assert abs(r[-1] - float(C.norm())) < abs(r[-2] - float(C.norm()))
    h = hs[-1]
    flow = make_flow("sgd", lr=lr, momentum=mu)
    disc = run_discrete_trajectory(P.discrete_flow(flow, h, "betas-fixed"), prob, round(T / h),
                                   every=round(T / h)).W[-1]
    mod = integrate(flow.modified(h, "betas-fixed"), prob, T=T, rtol=1e-12, atol=1e-12).W[-1]
    e = disc - mod
    assert float(torch.dot(e, C) / (e.norm() * C.norm())) > 0.999


def test_modified_sgd_kappa3_reduces_to_barrett_dherin():
    assert make_flow("modified-sgd", momentum=0.0).kappa3 == pytest.approx(1 / 3)


# --- NAG ---------------------------------------------------------------------------------------
def test_nag_flow_is_nag_at_every_step():
    prob = _prob()
    f = make_flow("nag", lr=0.1)
    tr = run_discrete_trajectory(f, prob, 30)
    ref = nag(lambda y: A @ y, prob.x0(), 0.1, 30)
    torch.testing.assert_close(tr.states["x"], ref, rtol=1e-13, atol=1e-15)
    h = 0.25  # along rates: step h is NAG with s = h²·lr
    tr = run_discrete_trajectory(P.discrete_flow(f, h), prob, 40)
    torch.testing.assert_close(tr.states["x"], nag(lambda y: A @ y, prob.x0(), h * h * 0.1, 40),
                               rtol=1e-13, atol=1e-15)


def test_nag_to_ode_gap_shrinks_like_sqrt_s():
    """Gap at fixed t between NAG (s = h²·lr) and the Su–Boyd–Candès ODE: order 1 in h, ½ in s,
    against the closed form (Bessel J₁) of the ODE too."""
    prob, lr, T = _prob(), 0.1, 10.0
    f = make_flow("nag", lr=lr)
    assert f.limit("rates").name == "nesterov-ode"
    hs = [0.25 / 2 ** j for j in range(5)]
    sw = sweep(f, prob, T=T, hs=hs)
    assert sw.reference == "limit"  # NAG is measured against its ODE, not against itself
    assert sweep(make_flow("sgd", lr=lr), prob, T=1.0, hs=hs[:3]).reference == "flow"
    ss = [h * h * lr for h in hs]
    fit = fit_order(ss, sw.errors)
    assert fit.ci[0] < 0.5 < fit.ci[1] or abs(fit.order - 0.5) < 0.02
    assert sw.errors[-2] / sw.errors[-1] == pytest.approx(2.0, rel=0.03)
    exact = prob.nesterov_ode_solution(T, lr)
    W = run_discrete_trajectory(P.discrete_flow(f, hs[-1]), prob, round(T / hs[-1])).W[-1]
    assert float((W - exact).norm()) == pytest.approx(sw.errors[-1], rel=1e-6)
    with pytest.raises(ValueError, match="rates"):
        f.limit("betas-fixed")
