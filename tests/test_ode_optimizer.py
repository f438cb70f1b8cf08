"""ODEOptimizer: discrete = torch.optim bit for bit; integrated steps against closed-form flows
(float64, convergence orders); schedulers, clipping, param groups, state dicts, errors; and a
real network on digits."""

from __future__ import annotations

import copy
import io
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.linalg import expm
from torch import nn

from fluxode import datasets
from fluxode.flows import make_flow
from fluxode.ode_optimizer import ODEOptimizer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _mlp(dtype, seed=0, device="cpu"):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(7, 9), nn.Tanh(), nn.Linear(9, 3)).to(dtype=dtype,
                                                                         device=device)


def _data(dtype, device="cpu"):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(40, 7, generator=g, dtype=dtype).to(device),
            torch.randint(0, 3, (40,), generator=g).to(device))


def _closure(model, opt, x, y):
    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss
    return closure


# --- discrete = torch.optim ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_discrete_equals_torch_adamw_bitwise(dtype):
    """Two param groups (own lr and weight decay), an LR scheduler and 40 steps."""
    ref, mine = _mlp(dtype), _mlp(dtype)
    x, y = _data(dtype)

    def groups(m):
        return [{"params": m[0].parameters(), "lr": 3e-2, "weight_decay": 0.1},
                {"params": m[2].parameters()}]

    t_opt = torch.optim.AdamW(groups(ref), lr=1e-2, foreach=False)
    f_opt = ODEOptimizer(groups(mine), "adamw", "discrete", lr=1e-2)
    scheds = [torch.optim.lr_scheduler.StepLR(o, 7, 0.5) for o in (t_opt, f_opt)]
    for _ in range(40):
        for m, o in ((ref, t_opt), (mine, f_opt)):
            o.step(_closure(m, o, x, y))
        for s in scheds:
            s.step()
    for p, q in zip(ref.parameters(), mine.parameters()):
        assert torch.equal(p, q)
    assert f_opt.last_nfe == 1


def test_discrete_clipping_and_sgd_equal_torch_bitwise():
    ref, mine = _mlp(torch.float32), _mlp(torch.float32)
    x, y = _data(torch.float32)
    t_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, foreach=False)
    f_opt = ODEOptimizer(mine.parameters(), "sgd", "discrete", lr=0.1, momentum=0.9,
                         max_grad_norm=0.05)
    for _ in range(25):
        t_opt.zero_grad()
        nn.functional.cross_entropy(ref(x), y).backward()
        nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
        t_opt.step()
        f_opt.zero_grad()
        nn.functional.cross_entropy(mine(x), y).backward()
        f_opt.step()  # discrete steps may use the .grad already there, like torch
    for p, q in zip(ref.parameters(), mine.parameters()):
        assert torch.equal(p, q)


# --- integrated steps against closed-form flows (float64) ---------------------------------------

def _quadratic(n=4, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = Q @ np.diag(np.linspace(0.5, 2.0, n)) @ Q.T
    return A, rng.standard_normal(n), rng.standard_normal(n)  # A, w*, W0


def _run_quadratic(A, wstar, W0, steps=1, **kw):
    """ODEOptimizer on L = ½(W - w*)ᵀA(W - w*) in float64; returns (W, optimizer)."""
    At, ws = torch.tensor(A), torch.tensor(wstar)
    W = nn.Parameter(torch.tensor(W0))
    opt = ODEOptimizer([W], **kw)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (W - ws) @ At @ (W - ws)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return W.detach().numpy(), opt


def _rk4_propagator(M, s, steps):
    """What any 4-stage, order-4 explicit Runge-Kutta method does to ż = Mz with s substeps per
    unit interval: z ← R(M/s)^(s·steps) z, R(Z) = I + Z + Z²/2 + Z³/6 + Z⁴/24."""
    Z = M / s
    I = np.eye(len(M))
    R = I + Z + Z @ Z / 2 + Z @ Z @ Z / 6 + Z @ Z @ Z @ Z / 24
    return np.linalg.matrix_power(R, s * steps)


def _order(errors, substeps):
    return -np.polyfit(np.log(substeps), np.log(errors), 1)[0]


def test_gradient_flow_convergence_orders_rk4_vs_euler():
    """sgd flow Ẇ = -η∇L on a quadratic: W(1) = w* + exp(-ηA)(W0 - w*); euler is order 1,
    rk4 order 4 as substeps grow."""
    A, ws, W0 = _quadratic()
    eta = 0.7
    exact = ws + expm(-eta * A) @ (W0 - ws)
    subs = [4, 8, 16, 32]
    for method, order in (("euler", 1), ("rk4", 4)):
        errs = [np.linalg.norm(_run_quadratic(A, ws, W0, flow="sgd", method=method, lr=eta,
                                              substeps=s)[0] - exact) for s in subs]
        assert all(e2 < e1 for e1, e2 in itertools.pairwise(errs))
        assert abs(_order(errs, subs) - order) < 0.15, (method, errs)
    _W, opt = _run_quadratic(A, ws, W0, flow="sgd", method="rk4", lr=eta, substeps=16)
    assert opt.last_nfe == 4 * 16


def test_heavy_ball_flow_over_several_steps_matches_matrix_exponential():
    """Momentum flow ḃ = ∇L - (1-μ)b, Ẇ = -ηb: a linear system in (b, W - w*); three optimizer
    steps (state carried across steps) equal exp(3M) z0, and rk4 converges at order 4."""
    A, ws, W0 = _quadratic(seed=1)
    n, eta, mu = len(ws), 0.3, 0.8
    M = np.block([[-(1 - mu) * np.eye(n), A], [-eta * np.eye(n), np.zeros((n, n))]])
    z = expm(3 * M) @ np.concatenate([np.zeros(n), W0 - ws])
    exact = ws + z[n:]
    subs = [8, 16, 32]
    Ws = [_run_quadratic(A, ws, W0, steps=3, flow="sgd", method="rk4", lr=eta, momentum=mu,
                         substeps=s)[0] for s in subs]
    errs = [np.linalg.norm(W - exact) for W in Ws]
    assert abs(_order(errs, subs) - 4) < 0.15, errs
    z0 = np.concatenate([np.zeros(n), W0 - ws])
    rk = ws + (_rk4_propagator(M, 32, 3) @ z0)[n:]
    np.testing.assert_allclose(Ws[-1], rk, rtol=1e-12, atol=1e-14)


def test_adaptive_dopri5_meets_its_tolerance():
    A, ws, W0 = _quadratic(seed=2)
    eta = 1.5
    exact = ws + expm(-eta * A) @ (W0 - ws)
    errs = []
    for rtol in (1e-4, 1e-8):
        W, opt = _run_quadratic(A, ws, W0, flow="sgd", method="dopri5", lr=eta, rtol=rtol,
                                atol=rtol * 1e-2)
        errs.append(np.linalg.norm(W - exact))
        assert opt.last_nfe >= 6
    assert errs[1] < errs[0] and errs[1] < 1e-6, errs


def test_lr_scheduler_sets_eta_per_interval():
    """StepLR halves lr after every step: W(2) = w* + exp(-η/2·A) exp(-ηA)(W0 - w*)."""
    A, ws, W0 = _quadratic(seed=3)
    At, wst = torch.tensor(A), torch.tensor(ws)
    W = nn.Parameter(torch.tensor(W0))
    opt = ODEOptimizer([W], "sgd", "rk4", lr=0.6, substeps=64)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)

    def closure():
        opt.zero_grad()
        (0.5 * (W - wst) @ At @ (W - wst)).backward()

    for _ in range(2):
        opt.step(closure)
        sched.step()
    W = W.detach().numpy()
    rk = ws + _rk4_propagator(-0.3 * A, 64, 1) @ _rk4_propagator(-0.6 * A, 64, 1) @ (W0 - ws)
    np.testing.assert_allclose(W, rk, rtol=1e-13, atol=1e-15)
    exact = ws + expm(-0.3 * A) @ expm(-0.6 * A) @ (W0 - ws)
    assert np.linalg.norm(W - exact) < 1e-9  # rk4's truncation error at 64 substeps


def test_clipping_acts_inside_every_field_evaluation():
    """L = c·W has the constant gradient c: with clipping the flow moves W by -η·c·m/(‖c‖+1e-6)
    over one interval (any method); without it by -η·c."""
    c = torch.tensor([3.0, -4.0], dtype=torch.float64)  # ‖c‖ = 5
    for max_norm, scale in ((0.5, 0.5 / (5 + 1e-6)), (None, 1.0)):
        for method in ("rk4", "dopri5", "euler"):
            W = nn.Parameter(torch.zeros(2, dtype=torch.float64))
            opt = ODEOptimizer([W], "sgd", method, lr=0.2, max_grad_norm=max_norm)

            def closure(W=W, opt=opt):
                opt.zero_grad()
                (c @ W).backward()

            opt.step(closure)
            torch.testing.assert_close(W.detach(), -0.2 * scale * c, rtol=1e-12, atol=1e-15)


def test_param_groups_are_integrated_as_one_system_with_their_own_rates():
    """L = ½‖W‖² over two groups with lr 0.5 and 2: each decays as exp(-ητ), and after two
    steps equals rk4's propagator R(-η/64)^128 to rounding."""
    a = nn.Parameter(torch.ones(3, dtype=torch.float64))
    b = nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = ODEOptimizer([{"params": [a], "lr": 0.5}, {"params": [b]}], "sgd", "rk4", lr=2.0,
                       substeps=64)

    def closure():
        opt.zero_grad()
        (0.5 * (a.square().sum() + b.square().sum())).backward()

    opt.step(closure)
    opt.step(closure)
    for p, eta in ((a, 0.5), (b, 2.0)):
        rk = float(_rk4_propagator(np.array([[-eta]]), 64, 2)[0, 0])
        np.testing.assert_allclose(p.detach().numpy(), rk, rtol=1e-13)
        np.testing.assert_allclose(p.detach().numpy(), math.exp(-2 * eta), rtol=1e-7)


@pytest.mark.parametrize("method,substeps,nfe", [("rk4", 3, 12), ("euler", 5, 5),
                                                 ("midpoint", 2, 4)])
def test_nfe_per_step_of_fixed_methods(method, substeps, nfe):
    model = _mlp(torch.float32)
    x, y = _data(torch.float32)
    opt = ODEOptimizer(model.parameters(), "adamw", method, lr=1e-2, substeps=substeps)
    for _ in range(2):
        opt.step(_closure(model, opt, x, y))
        assert opt.last_nfe == nfe


def test_grad_after_step_is_the_closures_gradient_at_the_start():
    model = _mlp(torch.float64)
    x, y = _data(torch.float64)
    opt = ODEOptimizer(model.parameters(), "adamw", "rk4", lr=1e-2)
    _closure(model, opt, x, y)()
    g0 = [p.grad.clone() for p in model.parameters()]
    opt.step(_closure(model, opt, x, y))
    for p, g in zip(model.parameters(), g0):
        assert torch.equal(p.grad, g)


# --- Adam's singular start ----------------------------------------------------------------------

def test_admissible_projection_of_the_flows():
    """Stages outside the invariant set are projected; states inside are left alone."""
    t = lambda *x: torch.tensor(x, dtype=torch.float64)
    adam = make_flow("adam", amsgrad=True)
    S = {"W": t(0.0, 0.0), "m": t(0.0, 0.0), "v": t(-1.0, 2.0), "vmax": t(-0.5, 2.0),
         "c1": t(0.0)[0], "c2": t(0.0)[0]}
    P = adam.admissible(S)
    assert P["v"].tolist() == [0.0, 2.0] and P["vmax"].tolist() == [0.0, 2.0]
    assert S["v"].tolist() == [-1.0, 2.0]  # a copy, not in place
    assert make_flow("adagrad", initial_accumulator_value=0.1).admissible(
        {"W": t(0.0), "s": t(0.05)})["s"].tolist() == [0.1]
    rms = make_flow("rmsprop", centered=True)
    P = rms.admissible({"W": t(0.0), "v": t(0.5), "gbar": t(1.0)})
    assert P["v"].tolist() == [1.0]
    S = {"W": t(0.0), "b": t(-3.0)}
    assert make_flow("sgd", momentum=0.9).admissible(S) is S


def test_moment_floor_holds_on_an_exact_adam_trajectory():
    """Along an accurately integrated AdamW flow (gradients of changing sign) v stays above
    (1-β₂)/(1-β₁)·m²/c₁, the bound the optimizer projects solver stages onto."""
    flow = make_flow("adam", lr=0.05, betas=(0.8, 0.99))
    W = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    opt = ODEOptimizer([W], "adam", "rk4", lr=0.05, betas=(0.8, 0.99), substeps=8)

    def closure():
        opt.zero_grad()
        (torch.sin(3 * W).sum() + 0.5 * W.square().sum()).backward()

    for _ in range(30):
        opt.step(closure)
        st = opt.state[W]
        S = {"m": st["exp_avg"], "v": st["exp_avg_sq"], "c1": torch.as_tensor(st["c1"], dtype=torch.float64)}
        floor = flow.moment_floor(S)
        assert bool((S["v"] >= floor * (1 - 1e-6)).all())


@pytest.mark.parametrize("flow", ["adamw", "nadam"])
def test_rk4_first_step_of_adamw_is_bounded(flow):
    """From the singular start (m = v = c = 0) rk4's 3/8-rule stages leave the flow's invariant
    set; the step must still move each weight by about lr, as the exact flow does (NAdam: the
    same moment floor, its c₁ read off c₂)."""
    model = _mlp(torch.float32)
    x, y = _data(torch.float32)
    W0 = [p.detach().clone() for p in model.parameters()]
    opt = ODEOptimizer(model.parameters(), flow, "rk4", lr=1e-2)
    opt.step(_closure(model, opt, x, y))
    moved = max(float((p.detach() - w).abs().max()) for p, w in zip(model.parameters(), W0))
    assert 0.5e-2 < moved < 2e-2


# --- state dicts and errors ---------------------------------------------------------------------

@pytest.mark.parametrize("method", ["rk4", "dopri5", "discrete"])
def test_state_dict_round_trip_continues_bit_identically(method):
    x, y = _data(torch.float32)
    model = _mlp(torch.float32)
    opt = ODEOptimizer(model.parameters(), "adamw", method, lr=1e-2)
    for _ in range(4):
        opt.step(_closure(model, opt, x, y))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    model2 = _mlp(torch.float32, seed=5)
    model2.load_state_dict(ck["model"])
    opt2 = ODEOptimizer(model2.parameters(), "adamw", method, lr=1e-2)
    opt2.load_state_dict(ck["opt"])
    for _ in range(4):
        opt.step(_closure(model, opt, x, y))
        opt2.step(_closure(model2, opt2, x, y))
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_load_state_dict_refuses_other_flows_and_shapes():
    x, y = _data(torch.float32)
    model = _mlp(torch.float32)
    opt = ODEOptimizer(model.parameters(), "adamw", "rk4")
    opt.step(_closure(model, opt, x, y))
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="flow 'adamw'"):
        ODEOptimizer(model.parameters(), "rmsprop", "rk4").load_state_dict(sd)
    with pytest.raises(ValueError, match="from another optimizer"):
        ODEOptimizer(model.parameters(), "adamw").load_state_dict(
            torch.optim.SGD(model.parameters(), momentum=0.9).state_dict())
    other = nn.Linear(7, 3)
    fresh = ODEOptimizer(other.parameters(), "adamw", "rk4")
    with pytest.raises(ValueError, match="does not fit"):
        fresh.load_state_dict(sd)
    assert not any(fresh.state.values())  # left untouched


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "leapfrog"}, "method must be one of"),
    ({"flow": "no-such-flow"}, "flow must be one of"),
    ({"flow": "newton"}, "Hessian"),
    ({"substeps": 0}, "substeps"),
    ({"rtol": -1.0}, "rtol"),
    ({"atol": float("nan")}, "atol"),
    ({"h": 0.0}, "h must be"),
    ({"lr": -1.0}, "lr"),
    ({"options": "fast"}, "options"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ODEOptimizer(nn.Linear(2, 2).parameters(), **kwargs)


def test_ode_step_without_closure_is_refused():
    model = _mlp(torch.float32)
    opt = ODEOptimizer(model.parameters(), "adamw", "rk4")
    with pytest.raises(ValueError, match="needs a closure"):
        opt.step()


def test_non_finite_state_raises_and_restores_the_parameters():
    W = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    opt = ODEOptimizer([W], "sgd", "rk4", lr=1e200)

    def closure():
        opt.zero_grad()
        (W.square().sum() * 1e200).backward()

    with pytest.raises(FloatingPointError, match=r"non-finite .* at τ="):
        opt.step(closure)
    assert W.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_and_devices(device, dtype):
    model = _mlp(dtype, device=device)
    x, y = _data(dtype, device)
    opt = ODEOptimizer(model.parameters(), "adamw", "rk4", lr=1e-2)
    loss0 = float(_closure(model, opt, x, y)().detach())
    for _ in range(5):
        opt.step(_closure(model, opt, x, y))
    assert opt.state[next(model.parameters())]["exp_avg"].dtype == dtype
    assert float(_closure(model, opt, x, y)().detach()) < loss0


# --- a real network -----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["rk4"])  # dopri5's step: tolerance and sync tests
def test_mlp_on_digits_reaches_95_percent(method):
    data = datasets.load("digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    opt = ODEOptimizer(model.parameters(), "adamw", method, lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for idx in torch.randperm(len(data.y_train), generator=gen).split(64):
            opt.step(_closure(model, opt, data.x_train[idx], data.y_train[idx]))
    with torch.no_grad():
        acc = float((model(data.x_test).argmax(1) == data.y_test).double().mean())
    assert acc >= 0.95, acc


@pytest.mark.parametrize("method", ["rk4", "dopri5", "discrete"])
def test_parameters_without_gradients_stay_put_like_torch(method):
    """A parameter the loss does not use keeps its value under AdamW's decay (torch skips it);
    the others move."""
    x, y = _data(torch.float64)
    model = _mlp(torch.float64)
    unused = nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = ODEOptimizer([*model.parameters(), unused], "adamw", method, lr=1e-2,
                       weight_decay=0.5)
    W0 = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        opt.step(_closure(model, opt, x, y))
    assert torch.equal(unused.detach(), torch.ones(4, dtype=torch.float64))
    assert all(not torch.equal(p, w) for p, w in zip(model.parameters(), W0))


def test_state_kept_as_views_of_the_flat_buffer_behaves_like_separate_tensors():
    """Between ODE steps the flow's variables are views of the solver's last state (no gather
    next step). The same run with the state dict reloaded into a fresh optimizer before every
    step (separate tensors, gathered) and with an in-place edit of the state is bit for bit
    the same."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)

    def run(reload: bool):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1)).double()
        opt = ODEOptimizer(model.parameters(), "adamw", method="rk4", lr=1e-2)

        def closure():
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        for k in range(4):
            if reload and k:
                sd = copy.deepcopy(opt.state_dict())
                opt = ODEOptimizer(model.parameters(), "adamw", method="rk4", lr=1e-2)
                opt.load_state_dict(sd)
            if k == 2:
                opt.state[model[0].weight]["exp_avg"].mul_(0.5)  # seen by the next step
            opt.step(closure)
        return [p.detach().clone() for p in model.parameters()], opt, closure

    kept, opt, closure = run(False)
    fresh, _, _ = run(True)
    for a, b in zip(kept, fresh):
        assert torch.equal(a, b)
    W = next(iter(opt.state))
    assert opt.state[W]["exp_avg"].untyped_storage().data_ptr() == \
        opt._ode_flat[1].untyped_storage().data_ptr()
    m = opt.state[W]["exp_avg"]  # once a view, the same live tensor from step to step
    before = m.clone()
    opt.step(closure)
    assert opt.state[W]["exp_avg"] is m and not torch.equal(m, before)


@pytest.mark.parametrize("name", ["rmsprop", "adagrad"])
def test_fixed_steps_from_a_singular_start_are_refused_and_run_past_it(name):
    """RMSprop/Adagrad start with the accumulator at 0, where Ẇ ~ 1/√τ (``singular_start``):
    rk4 from a fresh state is refused with the model untouched; after a few discrete steps
    (torch.optim's update: accumulator > 0) rk4 trains, the remedy the error names."""
    model = _mlp(torch.float64)
    x, y = _data(torch.float64)
    before = [p.detach().clone() for p in model.parameters()]
    opt = ODEOptimizer(model.parameters(), name, "rk4", lr=1e-2)
    with pytest.raises(ValueError, match=r"method 'rk4'.*singular.*method='discrete'"):
        opt.step(_closure(model, opt, x, y))
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    opt.method = "discrete"
    first = [float(opt.step(_closure(model, opt, x, y))) for _ in range(5)][-1]
    opt.method = "rk4"
    losses = [float(opt.step(_closure(model, opt, x, y))) for _ in range(20)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < first
