"""The torch.optim zoo (NAdam, RAdam, Adamax, Adadelta, ASGD, Rprop): bit for bit against
torch, continuous runs, the rates-path order and the declared limits."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from fluxode import limits as L
from fluxode.flows import FLOWS, make_flow
from fluxode.flows.adamax import Adamax
from fluxode.flows.modified import SignFlow
from fluxode.flows.nadam import NAdam, NAdamSignLimit, RAdam, RAdamSignLimit
from fluxode.flows.sgd import SGD
from fluxode.integrate import integrate
from fluxode.problems import make_problem
from fluxode.verify import DTYPES, Case, run_case

ZOO = ("nadam", "radam", "adamax", "adadelta", "asgd", "rprop")
HS = [0.0625 / 2 ** j for j in range(5)]


# --- registration and description -----------------------------------------------------------
@pytest.mark.parametrize("name", ZOO)
def test_registered_with_torch_defaults_and_names(name):
    cls = FLOWS[name]
    twin = cls.twin()
    assert twin is getattr(torch.optim, cls.torch_twin)
    flow = cls()
    hp = flow.hyperparameters()
    for k, v in cls.twin_defaults().items():
        assert hp[k] == (tuple(v) if isinstance(v, (tuple, list)) else v), k
    # every state variable torch keeps has its key, and torch keeps every mapped key
    p = torch.nn.Parameter(torch.randn(3, 2, dtype=torch.float64))
    opt = flow.reference_optimizer([p])
    p.grad = torch.randn_like(p)
    opt.step()
    keys = set(opt.state[p]) - {"step"}
    assert set(cls.torch_names.values()) == keys
    assert set(cls.torch_names) == {v.name for v in flow.variables()} - {"c1", "c2"}
    text = flow.describe()
    assert "Ẇ" in text and flow.name in text


@pytest.mark.parametrize("name", ZOO)
def test_invalid_options_are_refused(name):
    for bad in FLOWS[name].invalid_options():
        with pytest.raises(ValueError):
            make_flow(name, **bad)


# --- bit for bit against torch ------------------------------------------------------------------
# float64 only: every float32 case of every grid is checked bitwise by
# tests/test_verify.py::test_float32_is_bit_for_bit (the same run_case, 200 steps)
@pytest.mark.parametrize("dtype", ["float64"])
@pytest.mark.parametrize("name", ZOO)
def test_first_and_last_options_bit_for_bit(name, dtype):
    """The default options and the last grid entry (decay, maximize, other betas, ...), 300
    steps on a model with several shapes and a parameter without a gradient; bitwise in
    float64 (test_verify asks only ≤ 1e-12 there)."""
    grid = FLOWS[name].option_grid()
    for opts in (grid[0], grid[-1]):
        rec = run_case(Case(name, opts), DTYPES[dtype], 300)
        assert rec["bitwise"], rec


@pytest.mark.parametrize("name", ZOO)
def test_schedule_and_clipping_bit_for_bit(name):
    """A torch LR scheduler drives both (ASGD's next η uses the lr of the step that ran, as
    torch's does; Rprop ignores lr after its start), and clip_grad_norm_."""
    for case in (Case(name, {}, schedule="warmup:50:cosine:500"),
                 Case(name, {}, max_grad_norm=0.05)):
        rec = run_case(case, torch.float64, 200)
        assert rec["bitwise"], rec


def test_nadam_mu_product_in_torch_scalar_dtype():
    """torch keeps the μ-product in its scalar dtype (float32 under the default dtype):
    the flow's unit step rounds it the same way, and completes it from a step count."""
    flow = NAdam()
    p = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    opt = flow.reference_optimizer([p])
    for _ in range(7):
        p.grad = torch.randn_like(p)
        opt.step()
    assert flow.clock_values(7)["mu_product"] == float(opt.state[p]["mu_product"])


# --- continuous time ------------------------------------------------------------------------------
CONT = {"nadam": dict(lr=0.01), "radam": dict(lr=0.001), "adamax": dict(lr=0.01),
        "adadelta": dict(lr=0.01), "asgd": dict(lr=0.001, t0=3.0, lambd=0.5),
        "rprop": dict(lr=0.01)}


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
@pytest.mark.parametrize("problem", ["quadratic", "rosenbrock"])
@pytest.mark.parametrize("name", ZOO)
def test_integrates_from_the_real_start(name, problem, method):
    tr = integrate(make_flow(name, **CONT[name]), problem, T=10, method=method,
                   dtype=torch.float64)
    assert torch.isfinite(tr.W).all()
    p = make_problem(problem, dtype=torch.float64)
    assert float(p.loss(tr.W[-1])) < float(p.loss(tr.W[0]))


def test_radam_declares_its_switching_time():
    flow = RAdam()
    t = flow.switch_time()
    assert flow.rho(t) > 5 >= flow.rho(t - 1e-9)
    assert flow.jump_times(100.0) == [t] and flow.jump_times(1.0) == []
    k = math.floor(t) + 1  # torch rectifies from its step k + 1 (τ = k) on
    assert flow.rho(k) > 5 >= flow.rho(k - 1)
    assert RAdam(betas=(0.9, 0.5)).jump_times(1e6) == []  # ρ∞ = 3: never rectified


def test_nadam_field_is_finite_at_the_start():
    """The look-ahead P·M(τ) keeps 1 - P·M ≥ 1 - μ₁ > 0 where the naive 1 - P is 0."""
    from fluxode.discretize import vector_field

    flow = NAdam()
    W = torch.tensor([1.0, -2.0], dtype=torch.float64)
    g = torch.tensor([0.5, 3.0], dtype=torch.float64)
    dS = vector_field(flow, 0.0, flow.init(W, g), g)
    assert torch.isfinite(dS["W"]).all()
    mu1 = flow.M(0.0)
    # (1-μ₁)/(1 - 1·μ₁) = 1 on g; m(0) = 0; v/c₂ → g²
    assert torch.allclose(dS["W"], -flow.lr * g / (g.abs() + flow.eps), rtol=1e-15)
    assert float(dS["mu_product"]) == pytest.approx(-(1 - mu1))


# --- the rates path -------------------------------------------------------------------------------
SMOOTH = [("nadam", dict(lr=0.01), "rosenbrock"),
          ("radam", dict(lr=0.001), "rosenbrock"),
          ("adadelta", dict(lr=0.5, eps=10.0), "quadratic"),
          ("asgd", dict(lr=0.01, t0=2.0, lambd=0.5), "quadratic")]


def _order_one(s):
    """The fit over all hs is within 0.05 of 1; the 95% interval of the three smallest hs
    (the asymptotic end, where the O(h²) curvature of log e has died down) contains 1."""
    assert abs(s.order - 1) < 0.05, s
    fit = L.fit_order(s.hs[-3:], s.errors[-3:])
    assert fit.ci[0] <= 1.0 <= fit.ci[1], (fit, s.errors)


@pytest.mark.parametrize("name,hp,problem", SMOOTH)
def test_smooth_flows_are_order_one_along_rates(name, hp, problem):
    _order_one(L.sweep(name, problem, 8.0, hs=HS, path="rates", **hp))


@pytest.mark.parametrize("name,hp,problem", [("adamax", dict(lr=0.01), "rosenbrock"),
                                              ("rprop", dict(lr=0.01), "quadratic")])
def test_nonsmooth_flows_measured_along_rates(name, hp, problem):
    """Adamax's relaxed envelope is Lipschitz (a kink, no jump): measured order 1. Rprop's
    field jumps; on the quadratic its entries reach their minima and stop, and the measured
    order is 1 as well (on Rosenbrock the errors scatter with the switching times)."""
    s = L.sweep(name, problem, 8.0, hs=HS, path="rates", **hp)
    assert abs(s.order - 1) < 0.05, s
    assert s.errors[-1] < s.errors[0] / 8


def test_adadelta_start_is_a_family_of_solutions():
    """With ε → 0, q = (a+ε)/(v+ε) is conserved and d = √q·g: the start v = a = 0 is a
    family of solutions. The flow has q ≈ 1 after τ ~ ε/((1-ρ)g²); a discrete run with step h
    sits on q ≈ ε/((1-ρ)h·g²), so runs converge to the flow only for h ≪ ε/((1-ρ)g²)
    (at torch's ε = 1e-6 and |g| ~ 1: h ≪ 1e-5)."""
    flow = make_flow("adadelta")
    g = torch.ones(1, dtype=torch.float64)
    for h in (1.0, 0.1, 0.01):
        S = flow.init(torch.zeros(1, dtype=torch.float64), g)
        from fluxode.discretize import euler_step_

        for k in range(20):
            euler_step_(flow, k * h, S, g, h)
        q = float((S["a"] + flow.eps) / (S["v"] + flow.eps))
        assert 0.3 < q / (flow.eps / ((1 - flow.rho) * h)) < 3, (h, q)


# --- declared limits ------------------------------------------------------------------------
def test_nadam_betas_fixed_limit():
    """β₂ = 0.9 so that v is slaved within the hs used (v's time constant is h/(1-β₂))."""
    flow = make_flow("nadam", lr=0.01, eps=1e-3, betas=(0.8, 0.9))
    lim = flow.limit("betas-fixed")
    assert isinstance(lim, NAdamSignLimit)
    assert lim.gain(0.0) == pytest.approx(1 - flow.M(0.0) + flow.M(1.0))
    s = L.sweep(flow, "quadratic", 8.0, hs=HS, path="betas-fixed")
    assert s.errors[-1] < s.errors[0] / 8
    assert abs(s.order - 1) < 0.05, s


def test_radam_betas_fixed_limit():
    flow = make_flow("radam", lr=0.01, eps=1e-3, betas=(0.8, 0.9))
    lim = flow.limit("betas-fixed")
    assert isinstance(lim, RAdamSignLimit) and lim.jump_times(10.0) == flow.jump_times(10.0)
    s = L.sweep(flow, "quadratic", 8.0, hs=HS, path="betas-fixed")
    assert s.errors[-1] < s.errors[0] / 4
    assert s.order > 0.7, s


def test_adadelta_betas_fixed_limit_is_gradient_flow():
    flow = make_flow("adadelta", lr=0.1, eps=10.0)
    lim = flow.limit("betas-fixed")
    assert isinstance(lim, SGD) and lim.lr == flow.lr and not lim.momentum
    s = L.sweep(flow, "quadratic", 8.0, hs=HS, path="betas-fixed")
    assert s.errors[-1] < s.errors[0] / 4, s


def test_adamax_betas_fixed_limit_against_torch():
    """torch.optim.Adamax with lr·h and β fixed, T/h steps, tends to Ẇ = -lr·g/(|g| + ε)."""
    lr, eps, T = 0.01, 1e-3, 8.0
    flow = Adamax(lr=lr, eps=eps)
    lim = flow.limit("betas-fixed")
    assert isinstance(lim, SignFlow)
    p = make_problem("quadratic", dtype=torch.float64)
    W0 = p.x0().reshape(-1)
    ref = integrate(lim, p, x0=W0, save_at=torch.tensor([0.0, T], dtype=torch.float64),
                    rtol=1e-12, atol=1e-12).W[-1]
    errs = []
    for h in (0.1, 0.05, 0.025, 0.0125):
        W = torch.nn.Parameter(W0.clone())
        opt = torch.optim.Adamax([W], lr=lr * h, eps=eps, foreach=False)
        for _ in range(round(T / h)):
            W.grad = p.grad(W.detach())
            opt.step()
        errs.append(float((W.detach() - ref).norm()))
    fit = L.fit_order([0.1, 0.05, 0.025, 0.0125], errs)
    assert errs[-1] < errs[0] / 4 and fit.order > 0.7, errs


def test_adamax_sqrt_point():
    pt = Adamax(lr=0.01).sqrt_point(0.25)
    assert pt.lr == pytest.approx(0.005) and pt.eps == pytest.approx(2e-8)
    assert pt.betas == pytest.approx((1 - 0.025, 1 - 0.00025)) and pt.noise_scale == 4


def test_sqrt_points_of_nadam_radam_adadelta():
    """Adam's rule for NAdam/RAdam (ψ and a decoupled λ as rates per step); Adadelta's linear
    rule with ε fixed (its preconditioner a/v ≈ ε/((1-ρ)σ²) is set by the start)."""
    from fluxode import paths as P

    pt = NAdam(lr=0.1, betas=(0.9, 0.99), eps=1e-4, momentum_decay=4e-3, weight_decay=0.01,
               decoupled_weight_decay=True).sqrt_point(0.25)
    assert type(pt.flow) is NAdam and pt.noise_scale == 4
    assert pt.lr == pytest.approx(0.05) and pt.eps == pytest.approx(2e-4)
    assert pt.betas == pytest.approx((0.975, 0.9975)) and pt.momentum_decay == pytest.approx(1e-3)
    assert pt.weight_decay == pytest.approx(0.005) and pt.decoupled_weight_decay
    pt = RAdam(lr=0.1, betas=(0.9, 0.99), eps=1e-4, weight_decay=0.01).sqrt_point(4.0)
    assert pt.lr == pytest.approx(0.2) and pt.eps == pytest.approx(5e-5)
    assert pt.betas == pytest.approx((0.6, 0.96)) and pt.weight_decay == 0.01  # coupled: loss
    assert pt.noise_scale == 0.25
    pt = make_flow("adadelta", lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.01).sqrt_point(0.25)
    assert pt.lr == pytest.approx(0.25) and pt.rho == pytest.approx(0.975)
    assert pt.eps == 1e-6 and pt.weight_decay == 0.01 and pt.noise_scale == 4
    for name in ("nadam", "radam", "adadelta"):
        with pytest.raises(ValueError, match="κ·\\(1-β\\)"):
            P.sqrt_point(make_flow(name), 20.0 if name == "adadelta" else 2000.0)


def test_sqrt_points_keep_nadam_and_radam_schedules_on_the_clock():
    """At equal τ: NAdam's μ' - μ = (β₁' - β₁)(1 - ½·0.96^{τψ}) exactly (ψ' = κψ), RAdam's
    rectification agrees to O(1/ρ) (shrinking with τ) and its switch is at the same step."""
    from fluxode.flows.nadam import momentum_schedule

    nadam = NAdam(betas=(0.9, 0.999), momentum_decay=0.05)
    radam = RAdam(betas=(0.9, 0.999))
    for kappa in (0.25, 4.0):
        q = nadam.sqrt_point(kappa).flow
        db = q.betas[0] - nadam.betas[0]
        for t in (1.0, 10.0, 100.0, 1000.0):
            mu_q = momentum_schedule(q.betas[0], q.momentum_decay, t / kappa)
            mu = momentum_schedule(nadam.betas[0], nadam.momentum_decay, t)
            assert mu_q - mu == pytest.approx(db * (1 - 0.5 * 0.96 ** (t * 0.05)), abs=1e-14)
        q = radam.sqrt_point(kappa).flow
        assert math.floor(q.switch_time()) == math.floor(radam.switch_time()) == 4
        gaps = [abs(q.rectification(t / kappa) - radam.rectification(t))
                for t in (200.0, 1000.0, 5000.0)]
        assert gaps[0] < 0.05 * radam.rectification(200.0), gaps
        assert gaps[2] < gaps[1] / 3 < gaps[0] / 9, gaps


def _noisy_moments(flow, sigma, steps, seed, start=0.0, n=2000, drift=0.05):
    """Mean and variance over n independent entries of W after ``steps`` unit steps on the
    gradient drift + σ·ξ (a linear loss with noise), from W = start, in float64."""
    from fluxode.discretize import run_discrete

    gen = torch.Generator().manual_seed(seed)

    def grad(W):
        return drift + sigma * torch.randn(W.shape, generator=gen, dtype=torch.float64)

    W = run_discrete(flow, grad, torch.full((n,), start, dtype=torch.float64), steps)[1][-1]
    return float(W.mean()), float(W.var())


@pytest.mark.parametrize("name,hp,start", [
    ("nadam", dict(lr=1e-3, betas=(0.9, 0.99), momentum_decay=0.05), 0.0),
    # the decoupled decay lr·λ per step (W's mean from 1 is e^{-0.5} at κ = 1; λ unscaled
    # would give e^{-1} at κ = 1/4)
    ("nadam", dict(lr=1e-3, betas=(0.9, 0.99), weight_decay=8.0, decoupled_weight_decay=True),
     1.0),
    ("radam", dict(lr=1e-3, betas=(0.9, 0.99)), 0.0),
    ("adamw", dict(lr=1e-3, betas=(0.9, 0.99), weight_decay=8.0), 1.0),  # Adam's rule, λ·√κ
    ("adadelta", dict(rho=0.95), 0.0)])
def test_sqrt_point_keeps_the_noisy_runs_distribution(name, hp, start):
    """The square-root path's claim, measured: the optimizer at κ with gradient noise σ/√κ,
    after T/κ steps, has W's mean and variance of the optimizer at κ = 1 after T steps
    (noise-dominated: drift 0.05 ≪ σ = 1). A wrong lr rule is off by √κ or κ (Adadelta with
    Adam's √κ or ε/κ: factor 2 and 4 at κ = 1/4); the rule's own error is O(1-β)."""
    flow = make_flow(name, **hp)
    for kappa, steps in ((0.25, 64), (4.0, 256)):
        m0, v0 = _noisy_moments(flow, 1.0, steps, seed=0, start=start)
        m1, v1 = _noisy_moments(flow.sqrt_point(kappa).flow, kappa ** -0.5,
                                round(steps / kappa), seed=1, start=start)
        assert m1 / m0 == pytest.approx(1, abs=0.15) and v1 / v0 == pytest.approx(1, abs=0.15), \
            (kappa, m1 / m0, v1 / v0)


def test_asgd_betas_fixed_path_is_torch_at_lr_h_and_tends_to_the_running_mean():
    """Along betas-fixed the step-h run is torch.optim.ASGD with lr·h (λ, α, t₀ fixed), and
    W and the average ax tend at order 1 to Ẇ = -E(τ)(g + λW), ax = (1/τ)∫₀^τ W."""
    from fluxode.flows.asgd import ASGDMeanLimit
    from fluxode.integrate import run_discrete_trajectory
    from fluxode.paths import discrete_flow

    p = make_problem("quadratic", dtype=torch.float64)
    W0, T, hs = p.x0().reshape(-1), 4.0, [0.25 / 2 ** j for j in range(5)]
    hp = dict(lr=0.1, lambd=0.5, alpha=0.5, t0=2.0, weight_decay=0.01)
    flow = make_flow("asgd", **hp)
    lim = flow.limit("betas-fixed")
    assert isinstance(lim, ASGDMeanLimit) and lim.lambd == 0.5 and lim.alpha == 0.5
    ref = integrate(lim, p, x0=W0, save_at=[0.0, T], rtol=1e-10, atol=1e-10)
    errs = {"W": [], "ax": []}
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # torch keeps η, μ in the default dtype's scalars
    try:
        for h in hs:
            run = run_discrete_trajectory(discrete_flow(flow, h, "betas-fixed"), p,
                                          round(T / h), x0=W0, every=round(T / h))
            for name, e in errs.items():
                e.append(float((run.states[name][-1] - ref.states[name][-1]).norm()))
        W = torch.nn.Parameter(W0.clone())
        opt = torch.optim.ASGD([W], **{**hp, "lr": hp["lr"] * hs[-1]}, foreach=False)
        for _ in range(round(T / hs[-1])):
            W.grad = p.grad(W.detach())
            opt.step()
    finally:
        torch.set_default_dtype(default)
    assert torch.equal(run.W[-1], W.detach())
    assert torch.equal(run.states["ax"][-1], opt.state[W]["ax"])
    for name, e in errs.items():
        fit = L.fit_order(hs, e)
        assert all(b < a for a, b in pairwise(e)) and abs(fit.order - 1) < 0.1, (name, e)


def test_rprop_refuses_a_betas_fixed_limit_and_its_runs_collapse_onto_the_start():
    """The refusal says why, and the measurement behind it: along betas-fixed (torch's Rprop
    with lr·h, bit for bit) the step-clock time to cover half the distance to the minimizer
    shrinks like h·log(1/h) — the runs converge to no flow."""
    from fluxode.discretize import run_discrete
    from fluxode.paths import discrete_flow

    flow = make_flow("rprop", lr=0.01)
    with pytest.raises(ValueError, match="declares no betas-fixed limit: .*collapse onto τ = 0"):
        flow.limit("betas-fixed")
    p = make_problem("quadratic", dtype=torch.float64)
    W0, T, hs = p.x0().reshape(-1), 1.0, [1 / 64, 1 / 128, 1 / 256]
    half, steps = [], []
    for h in hs:
        taus, Ws = run_discrete(discrete_flow(flow, h, "betas-fixed"), p.grad, W0, round(T / h))
        d = (Ws - p.minimizer).norm(dim=1)
        k = int((d < d[0] / 2).nonzero()[0])
        half.append(float(taus[k]))
        steps.append(k)
    W = torch.nn.Parameter(W0.clone())
    opt = torch.optim.Rprop([W], lr=0.01 * hs[-1], foreach=False)
    for _ in range(round(T / hs[-1])):
        W.grad = p.grad(W.detach())
        opt.step()
    assert torch.equal(Ws[-1], W.detach())
    # each halving of h: about log(2)/log(η₊) = 3.8 more steps, so τ nearly halves
    assert all(1.6 < a / b < 2 for a, b in pairwise(half)), half
    assert all(0 < b - a < 5 for a, b in pairwise(steps)), steps


def test_unit_step_of_adamax_envelope_is_torch_max():
    """(f - β₂u)₊ - (1-β₂)u at h = 1 gives max(β₂u, f) in exact arithmetic."""
    from fluxode.flows.adamax import DecayingMax

    u = torch.tensor([0.0, 1.0, 5.0, 2.0], dtype=torch.float64)
    f = torch.tensor([1.0, 0.5, 1.0, 1.999], dtype=torch.float64)
    r = DecayingMax(0.999, f)
    want = torch.maximum(0.999 * u, f)
    assert torch.allclose(u + r.rate(u), want, rtol=1e-15, atol=0)
    x = u.clone()
    r.euler_(x, 1.0)
    assert torch.equal(x, want)
