"""Integration against closed forms (float64), convergence orders, statistics, errors."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from fluxode import make_flow
from fluxode.integrate import (FIXED, IntegrationError, integrate, run_discrete_trajectory)
from fluxode.problems import ModuleProblem, Problem, Quadratic, Rosenbrock, ravine

TIGHT = dict(rtol=1e-12, atol=1e-12)


def spd3():
    A = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.5]], dtype=torch.float64)
    return Quadratic(A, W_star=(0.1, -0.2, 0.3), start=(1.0, 1.0, -1.0))


@pytest.mark.parametrize("method", ["dopri5", "dopri8"])
@pytest.mark.parametrize("problem", [spd3(), ravine()], ids=["spd3", "ravine"])
def test_gradient_flow_matches_matrix_exponential(method, problem):
    lr = 0.01 if problem.name == "ravine" else 0.3
    # dopri8's dense output is 4th order in torchdiffeq: step onto the save times instead
    tr = integrate(make_flow("sgd", lr=lr), problem, T=30, method=method,
                   dense=method != "dopri8", **TIGHT)
    exact = problem.gradient_flow_solution(tr.times, lr)
    assert (tr.W - exact).abs().max() < 1e-8
    assert tr.stats["nfe"] > 0 and tr.stats["accepted"] + tr.stats["rejected"] == tr.stats["steps"]


@pytest.mark.parametrize("momentum,dampening,lr", [(0.9, 0.0, 0.05), (0.9, 0.3, 0.05),
                                                   (0.5, 0.0, 0.01)])
def test_heavy_ball_matches_damped_oscillator(momentum, dampening, lr):
    p = spd3()
    flow = make_flow("sgd", lr=lr, momentum=momentum, dampening=dampening)
    tr = integrate(flow, p, T=40, **TIGHT)
    b0 = tr.states["b"][0]
    if dampening:  # consistent start b(0) = d·g₀/μ
        assert torch.allclose(b0, p.grad(p.x0()) * dampening / momentum, rtol=0, atol=1e-15)
    exact = p.heavy_ball_solution(tr.times, lr, momentum, dampening, b0=b0)
    assert (tr.W - exact).abs().max() < 1e-8
    # the motion is genuinely oscillatory for μ = 0.9 (W overshoots W* along some direction)
    if momentum == 0.9:
        z = (tr.W - p.minimizer) @ p.Q
        assert (z[1:] * z[:-1] < 0).any()


def test_newton_flow_decays_gradient_exponentially_on_rosenbrock():
    p = Rosenbrock(start=(0.8, 0.6))
    lr = 0.7
    tr = integrate(make_flow("newton", lr=lr), p, T=10, **TIGHT)
    g0 = p.grad(p.x0())
    for tau, W in zip(tr.times, tr.W):
        expected = math.exp(-lr * float(tau)) * g0
        assert (p.grad(W) - expected).abs().max() < 1e-8 * max(1.0, float(g0.abs().max()))
    assert (tr.W[-1] - p.minimizer).abs().max() < 1e-2


def test_nesterov_ode_matches_bessel_solution():
    pytest.importorskip("scipy")
    p = spd3()
    s = 0.02
    tr = integrate(make_flow("nesterov-ode", lr=s), p, T=60, **TIGHT)
    exact = p.nesterov_ode_solution(tr.times, s)
    assert (tr.W - exact).abs().max() < 1e-8


def _slope(hs, errs):
    return np.polyfit(np.log(hs), np.log(errs), 1)[0]


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("heun2", 2),
                                          ("heun3", 3), ("rk4", 4)])
def test_fixed_step_order_of_convergence(method, order):
    p, lr, T = spd3(), 0.5, 4.0
    exact = p.gradient_flow_solution(T, lr)
    hs = [0.5, 0.25, 0.125, 0.0625]
    errs = [float((integrate(make_flow("sgd", lr=lr), p, save_at=[0, T], method=method,
                             step_size=h).W[-1] - exact).norm()) for h in hs]
    assert abs(_slope(hs, errs) - order) < 0.3


@pytest.mark.filterwarnings("ignore:Functional iteration")
@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
def test_adams_methods_converge_at_high_order(method):
    p, lr, T = spd3(), 0.5, 4.0
    exact = p.gradient_flow_solution(T, lr)
    hs = [0.125, 0.0625, 0.03125]
    errs = [float((integrate(make_flow("sgd", lr=lr), p, save_at=[0, T], method=method,
                             step_size=h).W[-1] - exact).norm()) for h in hs]
    assert _slope(hs, errs) > 3.5


def test_fixed_grid_hits_save_times_exactly():
    p, lr = spd3(), 0.5
    tr = integrate(make_flow("sgd", lr=lr), p, save_at=[0.0, 0.3, 1.7], method="euler",
                   step_size=0.25)
    assert tr.times.tolist() == [0.0, 0.3, 1.7]
    assert tr.stats["steps"] == len({0.25 * k for k in range(1, 7)} | {0.3, 1.7})


def test_float32_run():
    p = ravine(dtype=torch.float32)
    tr = integrate(make_flow("adam", lr=0.05), p, T=20, rtol=1e-5, atol=1e-6)
    p64 = ravine()
    ref = integrate(make_flow("adam", lr=0.05), p64, T=20, rtol=1e-9, atol=1e-10)
    assert tr.W.dtype == torch.float32
    assert (tr.W.double() - ref.W).abs().max() < 1e-3


# --- minibatches -------------------------------------------------------------------------------
def _batches(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, generator=gen, dtype=dtype),
             torch.randn(8, 1, generator=gen, dtype=dtype)) for _ in range(3)]


def _model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()


@pytest.mark.parametrize("method,kw", [("dopri5", dict(rtol=1e-10, atol=1e-12)),
                                       ("rk4", dict(step_size=0.125))])
def test_minibatch_field_switches_batches_at_integers(method, kw):
    """Integrating over the batch sequence = chaining one integration per batch."""
    batches = _batches()
    full = ModuleProblem(_model(), nn.functional.mse_loss, batches=batches)
    flow = make_flow("sgd", lr=0.3, momentum=0.5)
    tr = integrate(flow, full, save_at=[0.0, 1.0, 2.0, 3.0], method=method, **kw)
    # chain: S(k) → S(k+1) under batch k alone; the state is carried through x0 and b
    W = full.x0()
    S_prev = None
    for k, b in enumerate(batches):
        single = ModuleProblem(_model(), nn.functional.mse_loss, data=b)
        piece = integrate(flow, single, x0=W, save_at=[0.0, 1.0], method=method, **kw) \
            if S_prev is None else None
        if S_prev is not None:
            piece = _integrate_from_state(flow, single, S_prev, method, kw)
        W, S_prev = piece.W[-1].clone(), {n: v[-1].clone() for n, v in piece.states.items()}
        assert (tr.W[k + 1] - W).abs().max() < (1e-8 if method == "dopri5" else 1e-12)


def _integrate_from_state(flow, problem, S, method, kw):
    """Continue from a full state S (τ' = τ - k is irrelevant for sgd)."""
    return integrate(flow, problem, state=S, save_at=[0.0, 1.0], method=method, **kw)


def test_minibatch_jumps_reach_the_solver():
    full = ModuleProblem(_model(), nn.functional.mse_loss, batches=_batches())
    assert full.jump_times(3.0) == [1.0, 2.0]
    tr = integrate(make_flow("sgd", lr=0.3), full, T=3.0, rtol=1e-6, atol=1e-8)
    assert tr.stats["nfe"] > 0 and tr.times[-1] == 3.0


# --- discrete runs ----------------------------------------------------------------------------
def test_discrete_trajectory_matches_run_discrete_and_is_aligned():
    from fluxode.discretize import run_discrete

    p = spd3()
    flow = make_flow("adam", lr=0.05)
    tr = run_discrete_trajectory(flow, p, 25, h=0.5)
    taus, Ws = run_discrete(flow, p.grad, p.x0(), 25, h=0.5)
    assert torch.equal(tr.W, Ws) and torch.allclose(tr.times, taus)
    assert tr.times[-1] == 12.5 and tr.losses.shape == (26,)


def test_gd_distance_to_gradient_flow_is_first_order_in_h():
    p, lr, T = spd3(), 0.5, 4.0
    exact = p.gradient_flow_solution(T, lr)
    hs = [0.5, 0.25, 0.125, 0.0625]
    errs = [float((run_discrete_trajectory(make_flow("sgd", lr=lr), p, int(T / h), h=h).W[-1]
                   - exact).norm()) for h in hs]
    assert abs(_slope(hs, errs) - 1) < 0.15


# --- bad input and failures -------------------------------------------------------------------
def test_bad_inputs_are_refused_clearly():
    p, flow = spd3(), make_flow("sgd", lr=0.1)
    with pytest.raises(ValueError, match="method must be one of"):
        integrate(flow, p, T=1, method="rk45")
    with pytest.raises(ValueError, match="mismatched dtypes"):
        integrate(flow, p, x0=p.x0().float(), T=1)
    with pytest.raises(ValueError, match="mismatched dtypes"):
        integrate(flow, p, T=1, dtype=torch.float32)
    with pytest.raises(ValueError, match="mismatched devices"):
        integrate(flow, p, x0=torch.zeros(3, dtype=torch.float64, device="meta"), T=1)
    with pytest.raises(ValueError, match="mismatched devices"):
        integrate(flow, p, T=1, device="cuda")
    with pytest.raises(ValueError, match="strictly increasing"):
        integrate(flow, p, save_at=[0.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="x0 must be finite"):
        integrate(flow, p, x0=torch.tensor([1.0, math.nan, 0.0], dtype=torch.float64), T=1)
    with pytest.raises(ValueError, match="rtol"):
        integrate(flow, p, T=1, rtol=-1e-3)
    with pytest.raises(ValueError, match="step_size applies to fixed-grid"):
        integrate(flow, p, T=1, step_size=0.1)
    with pytest.raises(ValueError, match="shape"):
        integrate(flow, p, x0=torch.zeros(2, dtype=torch.float64), T=1)
    with pytest.raises(ValueError, match="steps"):
        run_discrete_trajectory(flow, p, -1)
    with pytest.raises(ValueError, match="initial state"):
        integrate(make_flow("sgd", lr=0.1, momentum=0.9, dampening=0.5),
                  Quadratic(torch.eye(3, dtype=torch.float64) * 1e308,
                            start=(1e10, 1e10, 1e10)), T=1)


class Quartic(Problem):
    """L(W) = -Σ W⁴/4: gradient flow Ẇ = W³ blows up at τ* = 1/(2·W₀²)."""

    name, dim, dtype = "quartic", 1, torch.float64

    def loss(self, W):
        return -(W ** 4).sum() / 4

    def grad(self, W, tau=0.0):
        return -W ** 3

    def x0(self):
        return torch.ones(1, dtype=torch.float64)


def test_blowup_stops_fixed_step_solver_with_named_component():
    with pytest.raises(IntegrationError, match=r"non-finite .* at τ="):
        integrate(make_flow("sgd", lr=1.0), Quartic(), T=10, method="euler", step_size=0.25)


def test_blowup_reports_collapsing_step_for_adaptive_solver():
    with pytest.raises(IntegrationError, match="step size collapsed|non-finite"):
        integrate(make_flow("sgd", lr=1.0), Quartic(), T=2, rtol=1e-8, atol=1e-10)


def test_nonfinite_state_component_is_named():
    from fluxode.problems import Linear

    huge = Linear(c=(1e200, 1.0))  # g is finite, but Adam's v̇ = (1-β₂)(g² - v) overflows
    with pytest.raises(IntegrationError, match=r"non-finite rate dv/dτ at τ=0"):
        integrate(make_flow("adam", lr=0.1), huge, T=3, method="euler", step_size=0.5)


def test_max_steps_stops_the_solver():
    with pytest.raises(IntegrationError, match="max_steps"):
        integrate(make_flow("sgd", lr=0.5), spd3(), T=100, max_steps=5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    p = ravine(device="cuda")
    tr = integrate(make_flow("adam", lr=0.05), p, T=20, **TIGHT)
    ref = integrate(make_flow("adam", lr=0.05), ravine(), T=20, **TIGHT)
    assert (tr.W.cpu() - ref.W).abs().max() < 1e-8


def test_every_fixed_method_runs():
    for m in FIXED:
        tr = integrate(make_flow("adam", lr=0.05), ravine(), T=5, method=m, step_size=0.5)
        assert torch.isfinite(tr.W).all()


class _ConstantGradient(Problem):
    """L(W) = c·W: the gradient is c everywhere."""

    name, dtype = "constant-gradient", torch.float64

    def __init__(self, c):
        self.c, self.dim = c, c.numel()

    def loss(self, W):
        return (self.c * W).sum()

    def grad(self, W, tau=0.0):
        return self.c.clone()

    def x0(self):
        return torch.zeros_like(self.c)


@pytest.mark.parametrize("name", ["rmsprop", "adagrad"])
def test_singular_start_is_refused_for_fixed_steps_and_resolved_by_dopri5(name):
    """Under a constant gradient c from the declared start (accumulator 0), as ε → 0:
    RMSprop v = (1-e^{-kτ})c², k = 1-α, W = W₀ - (2η/k)·sign(c)·artanh(√(1-e^{-kτ}));
    Adagrad s = c²τ, W = W₀ - 2η·sign(c)·√τ. Ẇ ~ 1/√τ at the start: every fixed-step method
    is refused there (it would evaluate |Ẇ| = η|c|/ε at τ = 0), dopri5 meets the closed form,
    and a fixed-step method started past τ = 0 runs."""
    eta, T = 0.01, 5.0
    flow = make_flow(name, lr=eta, eps=1e-12)
    c = torch.tensor([3.0, -0.5, 1e-3], dtype=torch.float64)
    problem = _ConstantGradient(c)
    for method in sorted(FIXED):
        with pytest.raises(ValueError, match=rf"method '{method}'.*singular.*dopri5"):
            integrate(flow, problem, T=T, method=method)
    traj = integrate(flow, problem, T=T, method="dopri5", rtol=1e-10, atol=1e-12)
    tau = traj.times
    if name == "rmsprop":
        k = 1 - flow.alpha
        exact = -(2 * eta / k) * torch.atanh(torch.sqrt(-torch.expm1(-k * tau)))
    else:
        exact = -2 * eta * torch.sqrt(tau)
    expected = exact[:, None] * torch.sign(c)
    torch.testing.assert_close(traj.W, expected, rtol=1e-6, atol=1e-9)
    past = {n: traj.states[n][1] for n in traj.states}
    rk4 = integrate(flow, problem, T=T, method="rk4", state=past, tau0=float(tau[1]),
                    step_size=0.01)
    torch.testing.assert_close(rk4.W[-1], expected[-1], rtol=1e-6, atol=0)
