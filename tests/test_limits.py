"""Limit sweeps, scaling paths and modified equations (float64, closed forms and orders)."""

import math

import numpy as np
import pytest
import torch

from fluxode import limits as L
from fluxode import paths as P
from fluxode.flows import Block, Flow, make_flow
from fluxode.flows.modified import ModifiedSGD, SignFlow
from fluxode.flows.rates import Linear, Term, Toward
from fluxode.problems import make_problem

HS = [0.125 / 2 ** j for j in range(5)]



# --- order fitting -----------------------------------------------------------------------------
def test_fit_order_recovers_a_power_law_and_its_interval_covers_noisy_data():
    hs = np.array([0.1, 0.05, 0.025, 0.0125])
    fit = L.fit_order(hs, 3.0 * hs ** 1.7)
    assert fit.order == pytest.approx(1.7, abs=1e-12)
    assert fit.ci[1] - fit.ci[0] < 1e-9
    rng = np.random.default_rng(0)
    noisy = 2.0 * hs ** 2 * np.exp(0.05 * rng.standard_normal(len(hs)))
    fit = L.fit_order(hs, noisy)
    assert fit.ci[0] < fit.order < fit.ci[1]
    assert fit.ci[0] < 2.0 < fit.ci[1]
    from scipy import stats  # the interval is order ± t_{n-2}(0.5 + c/2)·stderr

    for c in (0.9, 0.95, 0.99):
        fit = L.fit_order(hs, noisy, confidence=c)
        half = stats.t.ppf(0.5 + c / 2, len(hs) - 2) * fit.stderr
        assert fit.ci == pytest.approx((fit.order - half, fit.order + half), rel=1e-13)


@pytest.mark.parametrize("hs, errors", [([0.1, 0.05], [1.0, 0.5]), ([0.1, 0.05, 0.02], [1, 0, 1]),
                                        ([0.1, -0.05, 0.02], [1, 1, 1]),
                                        ([0.1, 0.05, 0.02], [1, math.nan, 1])])
def test_fit_order_refuses_bad_input(hs, errors):
    with pytest.raises(ValueError):
        L.fit_order(hs, errors)


# --- reference integration and paths --------------------------------------------------------------
def test_integrate_matches_the_matrix_exponential():
    p = make_problem("ravine")
    taus = torch.linspace(0, 5, 11, dtype=torch.float64)
    W = L.continuous(make_flow("sgd", lr=0.05), p, p.x0(), taus)
    exact = p.gradient_flow_solution(taus, lr=0.05)
    assert torch.allclose(W, exact, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name, hp, twin", [
    ("sgd", dict(lr=0.05, momentum=0.9), lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9)),
    ("adam", dict(lr=0.05, betas=(0.8, 0.95)),
     lambda ps, lr: torch.optim.Adam(ps, lr=lr, betas=(0.8, 0.95))),
    ("rmsprop", dict(lr=0.01, alpha=0.9),
     lambda ps, lr: torch.optim.RMSprop(ps, lr=lr, alpha=0.9)),
])
def test_betas_fixed_euler_step_h_is_torch_with_lr_times_h(name, hp, twin):
    p, h = make_problem("quadratic"), 0.25
    flow = P.discrete_flow(make_flow(name, **hp), h, "betas-fixed")
    W = L.discrete(flow, p, p.x0(), h, 30)[-1]
    w = torch.nn.Parameter(p.x0())
    opt = twin([w], hp["lr"] * h)
    for _ in range(30):
        opt.zero_grad()
        w.grad = p.grad(w.detach())
        opt.step()
    assert torch.allclose(W, w.detach(), rtol=1e-13, atol=1e-14)


def test_betas_fixed_limits():
    lim = P.limit_flow(make_flow("sgd", lr=0.01, momentum=0.9), "betas-fixed")
    assert lim.name == "sgd" and lim.momentum == 0 and lim.lr == pytest.approx(0.1)
    lim = P.limit_flow(make_flow("adamw", lr=0.01, eps=1e-6, weight_decay=0.1), "betas-fixed")
    assert isinstance(lim, SignFlow) and lim.eps == 1e-6 and lim.decoupled_decay
    assert P.limit_flow(make_flow("adam"), "rates").name == "adam"
    with pytest.raises(ValueError, match="adagrad"):
        P.limit_flow(make_flow("adagrad"), "betas-fixed")
    with pytest.raises(ValueError, match="path"):
        P.limit_flow(make_flow("sgd"), "fast")


def test_sqrt_point_scales_like_malladi():
    pt = P.sqrt_point(make_flow("adam", lr=0.1, betas=(0.9, 0.99), eps=1e-4), 0.25)
    assert pt.lr == pytest.approx(0.05) and pt.eps == pytest.approx(2e-4)
    assert pt.betas == pytest.approx((0.975, 0.9975)) and pt.noise_scale == pytest.approx(4.0)
    up = P.sqrt_point(make_flow("adam", lr=0.1, betas=(0.9, 0.99), eps=1e-4), 4.0)  # κ > 1
    assert up.lr == pytest.approx(0.2) and up.eps == pytest.approx(5e-5)
    assert up.betas == pytest.approx((0.6, 0.96)) and up.noise_scale == pytest.approx(0.25)
    w = P.sqrt_point(make_flow("adamw", lr=0.1, weight_decay=0.01), 0.25)  # lr·λ: a step rate
    assert w.lr == pytest.approx(0.05) and w.weight_decay == pytest.approx(0.005)
    with pytest.raises(ValueError, match="κ·\\(1-β\\)"):
        P.sqrt_point(make_flow("adam"), 20.0)
    with pytest.raises(ValueError, match="h must be in"):
        P.sqrt_point(make_flow("adam"), -2.0)
    with pytest.raises(ValueError, match="sqrt path"):
        P.sqrt_point(make_flow("sgd"), 0.5)


# --- convergence orders (the done-when) -----------------------------------------------------
@pytest.mark.parametrize("problem, lr", [("quadratic", 0.1), ("ravine", 0.02)])
def test_gd_order_one_to_gradient_flow_and_two_to_the_modified_flow(problem, lr):
    flow = make_flow("sgd", lr=lr)
    plain = L.sweep(flow, problem, T=10.0, hs=HS)
    mod = L.sweep(flow, problem, T=10.0, hs=HS, modified=True)
    assert plain.order == pytest.approx(1.0, abs=0.1)
    assert mod.order == pytest.approx(2.0, abs=0.15)
    assert all(m < p for m, p in zip(mod.errors, plain.errors))


@pytest.mark.parametrize("problem, lr, mu", [("quadratic", 0.01, 0.9), ("ravine", 0.001, 0.5)])
def test_heavy_ball_orders_against_plain_and_modified_flows(problem, lr, mu):
    flow = make_flow("sgd", lr=lr, momentum=mu)
    plain = L.sweep(flow, problem, T=10.0, hs=HS, path="betas-fixed")
    mod = L.sweep(flow, problem, T=10.0, hs=HS, path="betas-fixed", modified=True)
    assert plain.order == pytest.approx(1.0, abs=0.1)
    assert mod.order == pytest.approx(2.0, abs=0.15)


def test_heavy_ball_needs_the_shifted_start_for_order_two():
    p, lr, T = make_problem("quadratic"), 0.01, 10.0
    errs = []
    for h in HS:
        n = round(T / h)
        ref = L.continuous(ModifiedSGD(lr=lr, momentum=0.9, h=h, shift_start=False), p, p.x0(),
                          torch.tensor([0.0, T], dtype=torch.float64))
        W = L.discrete(P.discrete_flow(make_flow("sgd", lr=lr, momentum=0.9), h, "betas-fixed"),
                       p, p.x0(), h, n, every=n)
        errs.append(float((W[-1] - ref[-1]).norm()))
    assert L.fit_order(HS, errs).order == pytest.approx(1.0, abs=0.1)


def test_momentum_along_betas_fixed_tends_to_gradient_flow_with_rate_lr_over_one_minus_mu():
    p, lr, mu, T = make_problem("ravine"), 0.002, 0.8, 5.0
    flow = make_flow("sgd", lr=lr, momentum=mu)
    exact = p.gradient_flow_solution(T, lr=lr / (1 - mu))
    errs = []
    for h in HS:
        n = round(T / h)
        W = L.discrete(P.discrete_flow(flow, h, "betas-fixed"), p, p.x0(), h, n, every=n)[-1]
        errs.append(float((W - exact).norm()))
    fit = L.fit_order(HS, errs)
    assert fit.order == pytest.approx(1.0, abs=0.1)
    assert errs[-1] < 1e-2 * float(p.x0().norm())


def test_adam_along_rates_is_order_one():
    s = L.sweep(make_flow("adam", lr=0.05, betas=(0.9, 0.99)), "quadratic", T=10.0, hs=HS)
    assert s.order == pytest.approx(1.0, abs=0.1)
    d = s.to_dict()
    assert {"hs", "errors", "order", "order_ci"} <= set(d)


def test_rmsprop_along_betas_fixed_tends_to_the_sign_flow():
    s = L.sweep(make_flow("rmsprop", lr=0.01, alpha=0.9, eps=1e-3), "quadratic", T=10.0, hs=HS,
                path="betas-fixed")
    assert s.order == pytest.approx(1.0, abs=0.1)


def test_modified_flow_equations_and_gradient():
    f = ModifiedSGD(lr=0.1, momentum=0.5, h=0.5)
    assert f.coefficient == pytest.approx(0.05 * 1.5 / (4 * 0.25))
    H = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    g = torch.tensor([1.0, -1.0], dtype=torch.float64)
    assert torch.allclose(f.effective_gradient(g, g, H), g + 2 * f.coefficient * H @ g)
    assert "Hg" in f.describe()
    with pytest.raises(ValueError, match="Hessian"):
        f.effective_gradient(g, g, None)


# --- input checks ------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(path="sqrt"), "SDE"), (dict(path="nope"), "path"),
    (dict(hs=[0.1, 0.07, 0.05]), "divide"), (dict(hs=[0.3, 0.15, 0.075]), "integer"),
    (dict(hs=[0.5, 0.25]), "at least 3"), (dict(hs=[2.0, 1.0, 0.5]), "h must be in"),
    (dict(T=-1.0), "T must be"),
])
def test_sweep_refuses_bad_input(kwargs, match):
    args = dict(T=1.0, hs=[0.25, 0.125, 0.0625]) | kwargs
    with pytest.raises(ValueError, match=match):
        L.sweep(make_flow("sgd", lr=0.1), "quadratic", **args)


def test_modified_is_refused_where_it_is_not_derived():
    with pytest.raises(ValueError, match="betas-fixed"):
        L.sweep(make_flow("sgd", lr=0.1, momentum=0.9), "quadratic", T=1.0,
                hs=[0.25, 0.125, 0.0625], modified=True)
    with pytest.raises(ValueError, match="modified"):
        L.sweep(make_flow("adam", amsgrad=True), "quadratic", T=1.0, hs=[0.25, 0.125, 0.0625],
                modified=True)


def test_demo_error_vs_h_writes_figure_and_orders(tmp_path):
    rec = L.demo_error_vs_h(tmp_path)
    assert (tmp_path / "error_vs_h.png").stat().st_size > 10_000
    assert (tmp_path / "error_vs_h.json").exists()
    assert rec["plain"]["order"] == pytest.approx(1.0, abs=0.1)
    assert rec["modified"]["order"] == pytest.approx(2.0, abs=0.15)


# --- capabilities: the analysis asks the flow, never its name --------------------------------
class _EMAMomentum(Flow):
    """A user flow: ḃ = (1-μ)(g - b), Ẇ = -η·b (β-style momentum), unknown to fluxode."""

    name = "ema-momentum"
    vectors = ("b",)

    def __init__(self, lr=0.1, momentum=0.9):
        super().__init__(lr)
        self.momentum = momentum
        self.limit_calls = []

    def blocks(self):
        return [Block(("b",), lambda tau, S, g: (Toward(1 - self.momentum, g),)),
                Block(("W",), lambda tau, S, g: (Linear((Term(-self.eta(tau), S["b"]),)),))]

    def equations(self):
        return ["ḃ = (1-μ)(g - b)", "Ẇ = -η·b"]

    def limit(self, path="rates"):
        """betas-fixed: b is slaved to g, so Ẇ = -lr·g (gradient flow)."""
        self.limit_calls.append(path)
        if path == "betas-fixed":
            return make_flow("sgd", lr=self.lr)
        return super().limit(path)


def test_a_user_flow_states_its_own_betas_fixed_limit():
    flow = _EMAMomentum(lr=0.1, momentum=0.5)
    lim = P.limit_flow(flow, "betas-fixed")
    assert lim.name == "sgd" and lim.lr == 0.1 and flow.limit_calls == ["betas-fixed"]
    assert P.betas_fixed_limit(flow) is not None and P.limit_flow(flow) is flow
    s = L.sweep(flow, "quadratic", T=2.0, hs=[0.125, 0.0625, 0.03125, 0.015625],
                path="betas-fixed")
    assert s.order == pytest.approx(1.0, abs=0.1)
    with pytest.raises(ValueError, match="declares no modified flow"):
        L.modified_flow(flow, 0.1, "betas-fixed")


def test_limits_of_flows_without_them_are_refused_by_name():
    with pytest.raises(ValueError, match="flow 'newton' declares no betas-fixed limit"):
        P.limit_flow(make_flow("newton"), "betas-fixed")
    with pytest.raises(ValueError, match="flow 'newton' declares no sqrt path"):
        P.sqrt_point(make_flow("newton"), 0.5)
    with pytest.raises(ValueError, match="flow 'adam' declares no modified flow"):
        L.modified_flow(make_flow("adam"), 0.5, "betas-fixed")
    with pytest.raises(ValueError, match="constant lr"):
        P.limit_flow(make_flow("sgd", schedule="cosine:100"), "betas-fixed")
