"""Table-driven tests over the flow registry: every registered flow gets each check."""

from __future__ import annotations

import math

import pytest
import torch

from fluxode.discretize import euler_step_, run_discrete, vector_field
from fluxode.flows import FLOWS, make_flow
from fluxode.flows.rates import Clock

ALL = sorted(FLOWS)
TWINS = sorted(n for n, c in FLOWS.items() if c.torch_twin)


@pytest.mark.parametrize("name", ALL)
def test_default_flow_describes_itself(name):
    flow = make_flow(name)
    text = flow.describe()
    assert name in text
    for state in flow.state_names:
        assert state in text
    assert "Ẇ" in text
    W = torch.zeros(3, 4, dtype=torch.float64)
    S = flow.init(W, torch.ones_like(W))
    shaped_like_W = sum(S[n].shape == W.shape for n in flow.state_names)
    assert len(flow.vectors) <= flow.memory_per_param <= shaped_like_W


@pytest.mark.parametrize("name", ALL)
def test_invalid_hyperparameters_are_refused_by_name(name):
    for bad in FLOWS[name].invalid_options():
        with pytest.raises(ValueError) as err:
            make_flow(name, **bad)
        key = next(iter(bad))
        assert key.split("[")[0] in str(err.value), (bad, str(err.value))


def test_unknown_flow_and_unknown_hyperparameter():
    with pytest.raises(ValueError, match="flow must be one of"):
        make_flow("adamx")
    with pytest.raises(ValueError, match="beta1"):
        make_flow("adam", beta1=0.9)


@pytest.mark.parametrize("name", TWINS)
@pytest.mark.parametrize("opts", [0, -1])
def test_option_grid_is_valid(name, opts):
    """Each grid entry builds a flow that holds exactly those options."""
    options = FLOWS[name].option_grid()[opts]
    hp = make_flow(name, **options).hyperparameters()
    for key, value in options.items():
        assert key in hp, (name, key)
        got = hp[key]
        if isinstance(value, (tuple, list)):
            assert tuple(got) == pytest.approx(tuple(value)), (name, key)
        elif isinstance(value, float):
            assert got == pytest.approx(value), (name, key)
        else:
            assert got == value, (name, key)


def _quadratic(dtype=torch.float64):
    A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=dtype)
    return A, (lambda W: A @ W)


def _start(name):
    """W₀ = (1, -2) as a parameter of a dimension the flow takes (``Flow.param_dims``: a 2×1
    matrix for a flow on matrices); the quadratic's gradient A @ W keeps that shape."""
    dims = FLOWS[name].param_dims
    W0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    return W0 if dims is None or 1 in dims else W0.reshape(2, *[1] * (min(dims) - 1))


def _small_lr(name):
    """A small step (0.05 in W's units), or the flow's default lr where lr is not a length
    (``Flow.lr_is_step_length``)."""
    cls = FLOWS[name]
    return 0.05 if cls.lr_is_step_length else cls.twin_defaults().get("lr", cls.default_lr)


@pytest.mark.parametrize("name", ALL)
def test_discrete_run_decreases_a_convex_quadratic(name):
    A, grad = _quadratic()
    flow = make_flow(name, lr=_small_lr(name))
    W0 = _start(name)
    _, Ws = run_discrete(flow, grad, W0, 400, hess_fn=lambda W: A)
    loss = lambda W: 0.5 * W.reshape(-1) @ A @ W.reshape(-1)  # noqa: E731
    assert loss(Ws[-1]) < 0.5 * loss(W0)


def test_adam_clock_is_the_bias_correction_exactly():
    flow = make_flow("adam", betas=(0.9, 0.999))
    S = flow.init(torch.zeros(3, dtype=torch.float64))
    for k in range(1, 200):
        euler_step_(flow, k - 1, S, torch.ones(3, dtype=torch.float64))
        assert float(S["c1"]) == 1 - 0.9 ** float(k)
        assert float(S["c2"]) == 1 - 0.999 ** float(k)


def test_clock_rate_is_the_ode():
    c = torch.tensor(0.25, dtype=torch.float64)
    assert float(Clock(0.9, 3.0).rate(c)) == pytest.approx(0.1 * 0.75)


def test_adam_field_at_time_zero_is_the_bias_corrected_limit():
    flow = make_flow("adam", lr=0.1, eps=1e-8)
    g = torch.tensor([2.0, -0.5, 0.0], dtype=torch.float64)
    S = flow.init(torch.zeros(3, dtype=torch.float64))
    d = vector_field(flow, 0.0, S, g)
    assert torch.allclose(d["W"], -0.1 * g / (g.abs() + 1e-8))
    assert torch.allclose(d["m"], 0.1 * g) and torch.allclose(d["v"], 0.001 * g * g)
    assert float(d["c1"]) == pytest.approx(0.1) and float(d["c2"]) == pytest.approx(0.001)


def test_amsgrad_envelope_field_tracks_the_running_maximum():
    flow = make_flow("adam", amsgrad=True)
    S = flow.init(torch.zeros(2, dtype=torch.float64))
    S["v"] = torch.tensor([1.0, 1.0], dtype=torch.float64)
    S["vmax"] = torch.tensor([1.0, 2.0], dtype=torch.float64)  # touching / above the envelope
    S["c1"].fill_(0.5), S["c2"].fill_(0.5)
    d = vector_field(flow, 5.0, S, torch.tensor([3.0, 3.0], dtype=torch.float64))
    assert d["v"][0] > 0 and d["vmax"][0] == d["v"][0]  # on the envelope: moves with v
    assert d["vmax"][1] == 0  # v below the running max: the max stays


def test_sgd_dampening_initial_condition_reproduces_torch_first_step():
    flow = make_flow("sgd", lr=0.1, momentum=0.9, dampening=0.3)
    g0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    S = flow.init(torch.zeros(2, dtype=torch.float64), g0)
    euler_step_(flow, 0.0, S, g0)
    assert torch.allclose(S["b"], g0, rtol=0, atol=1e-15)  # torch: buf = g on step 1


def test_partitioned_not_simultaneous_euler_is_torch():
    """DESIGN §2: plain (simultaneous) Euler does not reproduce torch's Adam; partitioned does."""
    A, grad = _quadratic()
    W = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([W], lr=0.1, foreach=False)
    flow = make_flow("adam", lr=0.1)
    S_part = flow.init(W.detach().clone())
    S_simul = flow.init(W.detach().clone())
    for k in range(20):
        opt.zero_grad()
        W.grad = grad(W.detach())
        opt.step()
        euler_step_(flow, k, S_part, grad(S_part["W"]))
        d = vector_field(flow, k, S_simul, grad(S_simul["W"]))
        S_simul = {n: S_simul[n] + d[n] for n in S_simul}
    assert torch.equal(S_part["W"], W.detach())
    assert (S_simul["W"] - W.detach()).abs().max() > 1e-3


def test_newton_flow_refuses_big_problems_and_needs_a_hessian():
    flow = make_flow("newton", max_dim=4)
    with pytest.raises(ValueError, match="max_dim"):
        flow.effective_gradient(torch.zeros(5), torch.zeros(5), torch.eye(5))
    with pytest.raises(ValueError, match="Hessian"):
        flow.effective_gradient(torch.zeros(3), torch.zeros(3))


def test_newton_step_one_solves_a_quadratic():
    A, grad = _quadratic()
    _, Ws = run_discrete(make_flow("newton", lr=1.0), grad, torch.tensor([1.0, 2.0],
                         dtype=torch.float64), 1, hess_fn=lambda W: A)
    assert Ws[-1].abs().max() < 1e-14


def test_nesterov_ode_field_at_zero_is_the_ode_limit():
    flow = make_flow("nesterov-ode", lr=0.04)
    S = flow.init(torch.ones(2, dtype=torch.float64))
    g = torch.tensor([1.0, 2.0], dtype=torch.float64)
    d = vector_field(flow, 0.0, S, g)
    assert torch.allclose(d["V"], -math.sqrt(0.04) * g / 4)
    assert torch.equal(d["W"], torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("name", ALL)
def test_field_written_in_place_equals_the_returned_field(name):
    """Layout.field_into writes rates straight into the solver's buffer: same bits as
    vector_field's fresh tensors."""
    from fluxode.engine import Layout

    A, grad = _quadratic()
    flow = make_flow(name, lr=_small_lr(name))
    W = _start(name)
    S = flow.init(W.clone(), flow.effective_gradient(W, grad(W), A))
    for k in range(3):  # move away from the start so every term is non-trivial
        euler_step_(flow, k, S, grad(S["W"]), H=A)
    layout = Layout(flow, [tuple(W.shape)])
    y = layout.pack([S])
    g = grad(S["W"])
    out = layout.field_into(3.0, y, [g], torch.full_like(y, float("nan")), A)
    fresh = vector_field(flow, 3.0, layout.views(y)[0], g, A)
    for n, view in layout.views(out)[0].items():
        assert torch.equal(view, fresh[n].reshape(view.shape)), n


# --- capabilities: a flow states what it knows, and refuses the rest by name ------------------
@pytest.mark.parametrize("capability, call, match", [
    ("betas-fixed limit", lambda f: f.limit("betas-fixed"), "declares no betas-fixed limit"),
    ("sqrt path", lambda f: f.sqrt_point(0.5), "declares no sqrt path"),
    ("modified flow", lambda f: f.modified(0.5, "rates"), "declares no modified flow"),
    ("stability", lambda f: f.frozen_states(), "declares none"),
    ("threshold", lambda f: f.stable_lr(1.0), "declares no closed-form stability"),
    ("sharpness", lambda f: f.max_stable_sharpness(), "declares no maximal stable sharpness"),
    ("fused step", lambda f: f.fused_step_(0.0, {}, None, backend="fused"), "no fused step"),
    ("fused field", lambda f: f.fused_field_into(0.0, {}, None, {}, backend="fused"),
     "no fused field"),
])
def test_a_flow_without_a_capability_refuses_it_by_name(capability, call, match):
    flow = make_flow("adagrad")
    with pytest.raises(ValueError, match=match) as err:
        call(flow)
    assert "'adagrad'" in str(err.value), capability


def test_default_capabilities_that_are_none():
    flow = make_flow("adagrad")
    assert flow.limit("rates") is flow
    assert flow.jump_times(10.0) == []
    assert flow.fused_step_(0.0, {}, None) is False            # backend "auto": no kernel
    assert flow.fused_field_into(0.0, {}, None, {}) is False
    with pytest.raises(ValueError, match="SDE"):
        flow.limit("sqrt")


def test_declared_capabilities_of_the_classic_flows():
    sgd = make_flow("sgd", lr=0.1, momentum=0.9)
    assert sgd.frozen_states() == () and sgd.stable_lr(2.0) == pytest.approx(3.8 / 2.0)
    assert sgd.max_stable_sharpness() == pytest.approx(38.0)
    assert make_flow("adam").frozen_states() == ("v",)
    assert make_flow("rmsprop").frozen_states() == ("v",)
    adam = make_flow("adam", lr=0.1, betas=(0.9, 0.99), eps=1e-4, weight_decay=0.01)
    pt = adam.sqrt_point(0.25)
    assert type(pt.flow) is type(adam) and pt.flow.weight_decay == 0.01
    assert pt.lr == pytest.approx(0.05) and pt.betas == pytest.approx((0.975, 0.9975))
