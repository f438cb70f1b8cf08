"""The engine and the general state model: declared state variables (any initial value, any
shape relative to W), one discrete loop, one solve, runs from any state at any τ."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from fluxode import engine
from fluxode.flows import Block, Flow, Var, make_flow
from fluxode.flows.rates import Linear, Term, Toward
from fluxode.integrate import integrate, run_discrete_trajectory
from fluxode.optim import FlowOptimizer
from fluxode.problems import make_problem

ROOT = Path(__file__).resolve().parents[1] / "fluxode"


class DecayingStep(Flow):
    """A step whose size decays geometrically: ṗ = -(1-ρ)·p, p(0) = 1 (a float64 scalar);
    Ẇ = -η·p·g. Its Euler iterates are p_k = ρᵏ, so the discrete map is W ← W - η·ρᵏ⁺¹·g."""

    name = "decaying-step"
    summary = "gradient descent with a geometrically decaying step (test flow)"

    def __init__(self, lr=0.1, rho=0.9, *, weight_decay=0.0, maximize=False, schedule=None,
                 max_grad_norm=None):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule,
                         max_grad_norm=max_grad_norm)
        self.rho = rho

    def variables(self):
        return (Var("p", "scalar", init=1.0, dtype="float64"),)

    def blocks(self):
        rho = self.rho
        return [Block(("p",), lambda tau, S, g: (Linear((), decay=1 - rho, keep=rho),)),
                Block(("W",), lambda tau, S, g: (
                    Linear((Term(-self.eta(tau) * float(S["p"]), g),)),))]

    def equations(self):
        return ["ṗ = -(1-ρ)·p,  p(0) = 1", "Ẇ = -η·p·g"]

    def hyperparameters(self):
        return {**super().hyperparameters(), "rho": self.rho}


class RowScaled(Flow):
    """A tensorwise flow with a factored ("rows") state: r = running mean over each row of g²,
    Ẇ = -η·g/(√r + ε) broadcast along the row (a one-sided Adafactor without bias correction)."""

    name = "row-scaled"
    summary = "row-factored second moment (test flow)"
    tensorwise = True

    def __init__(self, lr=0.01, beta=0.9, eps=1e-8, *, weight_decay=0.0, maximize=False,
                 schedule=None, max_grad_norm=None):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule,
                         max_grad_norm=max_grad_norm)
        self.beta, self.eps = beta, eps

    def variables(self):
        return (Var("r", "rows", init=lambda W, g0: g0.square().mean(-1)),)

    def blocks(self):
        def rows(tau, S, g):
            return (Toward(1 - self.beta, g.square().mean(-1)),)

        def position(tau, S, g):
            denom = S["r"].sqrt().add_(self.eps).unsqueeze(-1)
            return (Linear((Term(-self.eta(tau), g, denom, "div"),)),)

        return [Block(("r",), rows), Block(("W",), position)]

    def equations(self):
        return ["ṙ = (1-β)(rowmean(g²) - r),  r(0) = rowmean(g₀²)", "Ẇ = -η·g/(√r + ε)"]

    def hyperparameters(self):
        return {**super().hyperparameters(), "beta": self.beta, "eps": self.eps}


def _quadratic_closure(W, opt, A):
    def closure():
        opt.zero_grad()
        loss = 0.5 * (W * (A @ W.reshape(-1)).reshape(W.shape)).sum()
        loss.backward()
        return loss
    return closure


# --- state model --------------------------------------------------------------------------------
def test_flow_optimizer_keeps_a_scalar_state_that_starts_at_one_exactly():
    torch.manual_seed(0)
    W = nn.Parameter(torch.randn(5, dtype=torch.float64))
    A = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
    opt = FlowOptimizer([W], DecayingStep, lr=0.1, rho=0.9)
    Wref, p = W.detach().clone(), 1.0
    for k in range(50):
        opt.step(_quadratic_closure(W, opt, A))
        p *= 0.9
        Wref.add_(A @ Wref, alpha=-0.1 * p)
        assert opt.state[W]["p"] == p
    assert torch.equal(W.detach(), Wref)


def test_a_flow_instance_and_a_flow_class_are_accepted():
    W = nn.Parameter(torch.ones(3, dtype=torch.float64))
    by_instance = FlowOptimizer([W], DecayingStep(lr=0.2, rho=0.5))
    assert by_instance.param_groups[0]["lr"] == 0.2 and by_instance.param_groups[0]["rho"] == 0.5
    assert FlowOptimizer([W], DecayingStep(lr=0.2), lr=0.3).param_groups[0]["lr"] == 0.3
    with pytest.raises(ValueError, match="flow must be one of"):
        FlowOptimizer([W], "no-such-flow")


def test_var_declarations_are_checked():
    with pytest.raises(ValueError, match="shape must be"):
        Var("x", "diagonal")
    with pytest.raises(ValueError, match="dtype must be"):
        Var("x", dtype="float16")
    with pytest.raises(ValueError, match="other than 'W'"):
        Var("W")
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        Var("r", "rows").shape_for((4,))
    assert Var("r", "rows").shape_for((3, 4, 5)) == (3, 4)
    assert Var("c", "cols").shape_for((3, 4, 5)) == (3, 5)
    assert Var("M", lambda s: (s[0], s[0])).shape_for((3, 4)) == (3, 3)
    bad = Var("r", "rows", init=lambda W, g0: torch.zeros(7))
    with pytest.raises(ValueError, match="init returned shape"):
        bad.initial(torch.zeros(2, 3), None)


def _row_scaled_reference(W0, A, steps, lr=0.01, beta=0.9, eps=1e-8):
    W = W0.clone()
    r = None
    for _ in range(steps):
        g = (A @ W.reshape(-1)).reshape(W.shape)
        r = g.square().mean(-1) if r is None else r
        r = r.lerp(g.square().mean(-1), 1 - beta)
        W.addcdiv_(g, r.sqrt().add_(eps).unsqueeze(-1), value=-lr)
    return W, r


def test_factored_state_lives_per_tensor_with_its_shape():
    torch.manual_seed(1)
    W = nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    A = torch.diag(torch.linspace(0.5, 3.0, 12, dtype=torch.float64))
    W0 = W.detach().clone()
    opt = FlowOptimizer([W], RowScaled, lr=0.01)
    for _ in range(20):
        opt.step(_quadratic_closure(W, opt, A))
    Wref, rref = _row_scaled_reference(W0, A, 20)
    assert opt.state[W]["r"].shape == (3,)
    assert torch.equal(W.detach(), Wref) and torch.equal(opt.state[W]["r"], rref)

    # the same flow integrated by rk4 through the optimizer: shapes kept, the run converges to
    # the discrete one as the substeps shrink the gap between flow and map
    V = nn.Parameter(W0.clone())
    ode = FlowOptimizer([V], RowScaled, "rk4", lr=0.01, substeps=4)
    for _ in range(20):
        ode.step(_quadratic_closure(V, ode, A))
    assert ode.state[V]["r"].shape == (3,) and int(ode.state[V]["step"]) == 20
    assert (V.detach() - Wref).abs().max() < 0.05 * (W0 - Wref).abs().max()

    sd = ode.state_dict()
    other = nn.Parameter(torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"keeps 'r' of shape \(4,\)"):
        FlowOptimizer([other], RowScaled, "rk4", lr=0.01).load_state_dict(sd)


def test_state_dict_round_trip_continues_bit_for_bit_with_any_state():
    torch.manual_seed(2)
    A = torch.diag(torch.linspace(0.5, 3.0, 12, dtype=torch.float64))
    W = nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    V = nn.Parameter(W.detach().clone())
    a = FlowOptimizer([W], RowScaled, lr=0.01)
    for _ in range(5):
        a.step(_quadratic_closure(W, a, A))
    V.data.copy_(W.detach())
    b = FlowOptimizer([V], RowScaled, lr=0.01)
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # as saved: state_dict() holds references
    for _ in range(5):
        a.step(_quadratic_closure(W, a, A))
        b.step(_quadratic_closure(V, b, A))
    assert torch.equal(W, V)


def test_scheduler_does_not_grow_a_flow_cache():
    W = nn.Parameter(torch.ones(2))
    opt = FlowOptimizer([W], "sgd", lr=1.0)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.99)
    for _ in range(300):
        W.grad = torch.ones(2)
        opt.step()
        sched.step()
    assert len(opt._flows) == 1


def test_per_parameter_step_counts_in_ode_mode():
    """A parameter without a gradient is skipped (state and step count stay put), in the
    ODE methods as in the discrete map."""
    a = nn.Parameter(torch.ones(2, dtype=torch.float64))
    b = nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = FlowOptimizer([a, b], "adam", "rk4", lr=0.1)
    for k in range(4):
        use_b = k % 2 == 0

        def closure(use_b=use_b):
            opt.zero_grad()
            loss = a.square().sum() + (b.square().sum() if use_b else 0.0)
            loss.backward()
            return loss

        before = b.detach().clone()
        opt.step(closure)
        if not use_b:
            assert torch.equal(b.detach(), before)
    assert int(opt.state[a]["step"]) == 4 and int(opt.state[b]["step"]) == 2


# --- one discrete loop, runs from any state at any τ ----------------------------------------------
@pytest.mark.parametrize("name, hp", [("adam", {"lr": 0.05}),
                                      ("sgd", {"lr": 1e-3, "momentum": 0.9})])
def test_a_discrete_run_continues_from_any_state_at_any_tau_bit_for_bit(name, hp):
    p = make_problem("rosenbrock", dtype=torch.float64)
    flow = make_flow(name, **hp)
    full = run_discrete_trajectory(flow, p, 40)
    head = run_discrete_trajectory(flow, p, 15)
    S = {n: v[-1] for n, v in head.states.items()}
    tail = run_discrete_trajectory(flow, p, 25, state=S, tau0=15.0)
    assert torch.equal(tail.times, full.times[15:])
    for n in full.states:
        assert torch.equal(tail.states[n], full.states[n][15:]), n


def test_a_continuous_run_continues_from_a_given_state():
    p = make_problem("quadratic", dtype=torch.float64)
    flow = make_flow("adam", lr=0.05)
    full = integrate(flow, p, save_at=[0.0, 5.0, 10.0], rtol=1e-11, atol=1e-12)
    S = {n: v[1] for n, v in full.states.items()}
    tail = integrate(flow, p, state=S, tau0=5.0, save_at=[5.0, 10.0], rtol=1e-11, atol=1e-12)
    assert (tail.W[-1] - full.W[-1]).abs().max() < 1e-8
    with pytest.raises(ValueError, match="state lacks 'm'"):
        integrate(flow, p, state={"W": S["W"]}, T=6.0, tau0=5.0)


def test_solve_refuses_bad_input_clearly():
    y0 = torch.ones(2, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="method must be one of"):
        engine.solve(lambda tau, y: -y, y0, t, method="leapfrog")
    with pytest.raises(ValueError, match="needs step_size"):
        engine.solve(lambda tau, y: -y, y0, t, method="rk4")
    with pytest.raises(ValueError, match="max_steps"):
        engine.solve(lambda tau, y: -y, y0, t, max_steps=0)
    sol, stats = engine.solve(lambda tau, y: -y, y0, t, method="rk4", step_size=0.01)
    assert abs(float(sol[-1, 0]) - float(torch.exp(torch.tensor(-1.0, dtype=torch.float64)))) \
        < 1e-9 and stats["steps"] == 100


def test_solve_stops_a_stiff_run_at_max_steps():
    y0 = torch.ones(1, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(engine.IntegrationError, match="max_steps=50"):
        engine.solve(lambda tau, y: -1e6 * y, y0, t, rtol=1e-10, atol=1e-12, max_steps=50)


# --- one engine: the source says so --------------------------------------------------------------
def _sources():
    return {p: p.read_text() for p in ROOT.rglob("*.py")}


def test_torchdiffeq_is_imported_in_exactly_one_module():
    users = [p.relative_to(ROOT).as_posix() for p, s in _sources().items()
             if re.search(r"^\s*(import torchdiffeq|from torchdiffeq)", s, re.MULTILINE)]
    assert users == ["engine/solve.py"]


def test_no_flow_name_dispatch_outside_flows():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p, s in _sources().items()
            if "flows" not in p.relative_to(ROOT).parts
            for i, line in enumerate(s.splitlines(), 1)
            if re.search(r"flow\.name *(==|in )|name in \(\"adam", line)]
    assert hits == []
