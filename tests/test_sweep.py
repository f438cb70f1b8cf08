"""Batched sweeps equal the per-point runs (run_discrete / integrate), closed forms, errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fluxode import sweep as SW
from fluxode.discretize import run_discrete
from fluxode.flows import make_flow
from fluxode.integrate import integrate
from fluxode.paths import discrete_flow
from fluxode.problems import make_problem

# (flow, problem, grid, fixed hyperparameters, step sizes): lr/β-type grids over the flows with
# torch twins (h = 1), and h = 0.5 where test_h_sweep_* does not already step that flow at h ≠ 1
BITWISE = [
    ("sgd", "ravine", {"lr": [0.01, 0.02, 0.005], "momentum": [0.5, 0.9]}, {}, [1.0]),
    ("sgd", "rosenbrock", {"lr": [1e-3, 2e-3], "dampening": [0.1, 0.3]},
     {"momentum": 0.9, "weight_decay": 0.01}, [1.0, 0.5]),
    ("adamw", "rosenbrock", {"lr": [1e-2, 3e-2],  # per-row clocks: one batch
                             "betas": [(0.9, 0.999), (0.8, 0.99), (0.5, 0.9)]}, {}, [1.0, 0.5]),
    ("adam", "ravine", {"lr": [1e-2, 3e-2], "eps": [1e-8, 1e-3]},
     {"weight_decay": 0.01, "amsgrad": True}, [1.0, 0.5]),
    ("rmsprop", "ravine", {"lr": [1e-2, 3e-2], "alpha": [0.9, 0.99]},
     {"momentum": 0.5, "centered": True}, [1.0, 0.5]),
    ("adagrad", "rosenbrock", {"lr": [1e-2, 3e-2], "lr_decay": [0.0, 1e-3]}, {}, [1.0]),
    ("sgd", "ravine", {"lr": [0.01, 0.02]}, {"momentum": 0.9, "max_grad_norm": 0.5}, [1.0, 0.5]),
]
BITWISE_H = [(*c[:4], h) for c in BITWISE for h in c[4]]


@pytest.mark.parametrize("flow,problem,grid,fixed,h", BITWISE_H,
                         ids=[f"{c[4]}-{c[0]}-{'x'.join(c[2])}" for c in BITWISE_H])
def test_discrete_sweep_equals_run_discrete_bit_for_bit(flow, problem, grid, fixed, h):
    prob = make_problem(problem)
    res = SW.sweep_discrete(flow, prob, grid, steps=25, h=h, **fixed)
    points = SW.grid_points(grid)
    assert res.points == points and res.W.shape == (len(points), 26, prob.dim)
    for i, p in enumerate(points):
        _, Ws = run_discrete(make_flow(flow, **fixed, **p), prob.grad, prob.x0(), 25, h=h)
        assert torch.equal(res.W[i], Ws), p
    assert len({tuple(r[-1].tolist()) for r in res.W}) == len(points)  # points really differ
    assert res.stats["batches"] == 1  # betas too: per-row clocks


def test_swept_clipping_and_model_problems_agree_to_float64_rounding():
    """Swept max_grad_norm (row norms) and an MLP (vmapped autograd) are not bitwise: ≤ 1e-12."""
    for flow, problem, grid, fixed in [
            ("sgd", "ravine", {"lr": [0.01, 0.02], "max_grad_norm": [0.5, 5.0]},
             {"momentum": 0.9, "dampening": 0.1}),
            ("adam", "mlp-digits", {"lr": [1e-3, 3e-3]}, {})]:
        prob = make_problem(problem)
        res = SW.sweep_discrete(flow, prob, grid, steps=10, **fixed)
        ref = SW.sequential_discrete(flow, prob, grid, steps=10, **fixed)
        assert float((res.W - ref).abs().max() / ref.abs().max()) <= 1e-12


# h sweeps: SGD's exact first momentum step (h = 1 rows only), Adam's clocks per (β, h),
# Adagrad's step-count decay through each row's own η(τ)
H_SWEEPS = [("sgd", {"h": [1.0, 0.5, 0.3], "lr": [0.01, 0.02]}, {"momentum": 0.9}),
            ("adam", {"h": [0.4, 1.0], "betas": [(0.9, 0.999), (0.8, 0.99)]}, {"lr": 1e-2}),
            ("adagrad", {"h": [0.25, 0.7], "lr_decay": [0.0, 1e-2]}, {"lr": 0.1})]


@pytest.mark.parametrize("flow,grid,fixed", H_SWEEPS, ids=[c[0] for c in H_SWEEPS])
def test_h_sweep_rows_equal_their_own_discrete_flow_bit_for_bit(flow, grid, fixed):
    """Row j = run_discrete(discrete_flow(flow_j, h_j)) for ⌊T/h_j⌋ steps, then frozen."""
    prob = make_problem("rosenbrock")
    res = SW.sweep_discrete(flow, prob, grid, T=3.0, **fixed)
    points = SW.grid_points(grid)
    counts = [math.floor(3.0 / p["h"] + 1e-9) for p in points]
    assert res.W.shape == (len(points), max(counts) + 1, prob.dim)
    assert res.times.shape == res.W.shape[:2] and res.stats["steps"] == counts
    for i, (p, n) in enumerate(zip(points, counts)):
        f = discrete_flow(make_flow(flow, **fixed, **{k: v for k, v in p.items() if k != "h"}),
                          p["h"])
        taus, Ws = run_discrete(f, prob.grad, prob.x0(), n)
        assert torch.equal(res.W[i, :n + 1], Ws) and bool((res.W[i, n:] == Ws[-1]).all()), p
        assert torch.equal(res.times[i, :n + 1], taus) and bool((res.times[i, n:] == taus[-1]).all())
    assert len({tuple(r[-1].tolist()) for r in res.W}) == len(points)
    same = SW.sweep_discrete(flow, prob, grid, steps=4, **fixed)  # a count for every row
    assert torch.equal(same.times[:, -1], torch.tensor([4 * p["h"] for p in points],
                                                       dtype=torch.float64))


@pytest.mark.parametrize("flow,grid,method", [
    ("sgd", {"lr": [0.01, 0.02], "momentum": [0.5, 0.9]}, "rk4"),
    ("adam", {"lr": [1e-2, 3e-2], "betas": [(0.9, 0.999), (0.8, 0.99)]}, "rk4"),
    ("adadelta", {"lr": [0.5, 1.0], "rho": [0.9, 0.99]}, "midpoint")])
def test_continuous_sweep_fixed_step_equals_integrate_bit_for_bit(flow, grid, method):
    prob = make_problem("ravine")
    res = SW.sweep_continuous(flow, prob, grid, T=4.0, method=method, step_size=0.25)
    for i, p in enumerate(SW.grid_points(grid)):
        ref = integrate(make_flow(flow, **p), prob, T=4.0, method=method, step_size=0.25)
        assert torch.equal(res.W[i], ref.W), p
        assert torch.equal(res.times, ref.times)


def test_continuous_sweep_refuses_fixed_steps_from_a_singular_start():
    """RMSprop from v = 0 (Ẇ ~ 1/√τ, ``Flow.singular_start``): a fixed-step sweep would
    evaluate |Ẇ| = η|g|/ε at τ = 0 for every point; it is refused, dopri5 runs."""
    prob = make_problem("ravine")
    grid = {"lr": [1e-2, 3e-2]}
    with pytest.raises(ValueError, match=r"method 'midpoint'.*'rmsprop'.*singular.*dopri5"):
        SW.sweep_continuous("rmsprop", prob, grid, T=4.0, method="midpoint", step_size=0.25)
    res = SW.sweep_continuous("rmsprop", prob, grid, T=4.0, method="dopri5")
    assert bool(torch.isfinite(res.W).all()) and float(res.W.abs().max()) < 10


def test_continuous_sweep_adaptive_meets_the_closed_form():
    """Gradient flow Ẇ = -lr·∇L on the ravine for 6 learning rates in one dopri5 solve (the
    error is controlled for all points together): W(τ) = W* + e^{-lr·Aτ}(W₀ - W*)."""
    prob = make_problem("ravine")
    lrs = [0.002, 0.004, 0.006, 0.008, 0.01, 0.012]
    res = SW.sweep_continuous("sgd", prob, {"lr": lrs}, T=20.0, method="dopri5", rtol=1e-10,
                              atol=1e-12)
    for i, lr in enumerate(lrs):
        exact = prob.gradient_flow_solution(res.times, lr=lr)
        assert float((res.W[i] - exact).abs().max()) <= 1e-8
    assert res.final_error is not None and bool((res.final_error[1:] < res.final_error[:-1]).all())


def test_heavy_ball_sweep_matches_closed_form_at_order_one():
    """Discrete heavy ball → its flow as h → 0 (rates path), per point of a momentum sweep."""
    prob = make_problem("ravine")
    grid = {"momentum": [0.5, 0.8]}
    errs = []
    for h in (0.25, 0.125, 0.0625):
        res = SW.sweep_discrete("sgd", prob, grid, steps=round(4 / h), h=h, lr=0.01,
                                every=round(4 / h))
        exact = torch.stack([prob.heavy_ball_solution(4.0, lr=0.01, momentum=m, b0=torch.zeros(2))
                             for m in grid["momentum"]])
        errs.append(torch.linalg.vector_norm(res.W[:, -1] - exact, dim=1))
    for a, b in itertools.pairwise(errs):
        ratio = a / b
        assert bool(((ratio > 1.8) & (ratio < 2.2)).all()), ratio  # first order: halves


def test_column_semantics():
    c = SW.Column([0.9, 0.8])
    assert (1 - c).values == (1 - 0.9, 1 - 0.8)
    assert (c / 2 ** 0.5).values == (0.9 / 2 ** 0.5, 0.8 / 2 ** 0.5)
    assert bool(c) and c != 0 and c < 1
    x = torch.ones(2, 3, dtype=torch.float64)
    assert torch.equal(x * c, torch.tensor([[0.9] * 3, [0.8] * 3], dtype=torch.float64))
    assert torch.equal(x.add(c), torch.tensor([[1.9] * 3, [1.8] * 3], dtype=torch.float64))
    with pytest.raises(SW.NotUniform, match="differs across the points"):
        float(c)
    with pytest.raises(SW.NotUniform):
        bool(SW.Column([0.0, 0.5]))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="grid must be a non-empty dict"):
        SW.sweep_discrete("sgd", "ravine", {}, steps=3)
    with pytest.raises(ValueError, match=r"grid\['lr'\] must be a non-empty list"):
        SW.sweep_discrete("sgd", "ravine", {"lr": []}, steps=3)
    with pytest.raises(ValueError, match="lr must be"):
        SW.sweep_discrete("sgd", "ravine", {"lr": [0.1, -1.0]}, steps=3)
    with pytest.raises(ValueError, match="steps must be an integer"):
        SW.sweep_discrete("sgd", "ravine", {"lr": [0.1]}, steps=-1)
    with pytest.raises(ValueError, match="given both in grid and as fixed"):
        SW.sweep_discrete("sgd", "ravine", {"lr": [0.1]}, steps=3, lr=0.2)
    with pytest.raises(ValueError, match="changes the flow's structure"):
        SW.sweep_discrete("sgd", "ravine", {"momentum": [0.0, 0.9]}, steps=3)
    with pytest.raises(ValueError, match="changes the flow's structure"):
        SW.sweep_discrete("adam", "ravine", {"amsgrad": [False, True]}, steps=3)
    with pytest.raises(ValueError, match="method must be one of"):
        SW.sweep_continuous("sgd", "ravine", {"lr": [0.1]}, T=1.0, method="bogus")
    with pytest.raises(ValueError, match="step_size must be"):
        SW.sweep_continuous("sgd", "ravine", {"lr": [0.1]}, T=1.0, step_size=math.nan)
    with pytest.raises(ValueError, match="needs a Hessian"):
        SW.sweep_discrete("newton", "ravine", {"lr": [0.1, 0.2]}, steps=3)
    with pytest.raises(ValueError, match="exactly one of them"):
        SW.sweep_discrete("sgd", "ravine", {"lr": [0.1]}, steps=3, T=3.0)
    with pytest.raises(ValueError, match="T must be in"):
        SW.sweep_discrete("sgd", "ravine", {"h": [0.5]}, T=-1.0)
    with pytest.raises(ValueError, match="h given both"):
        SW.sweep_discrete("sgd", "ravine", {"h": [0.5]}, steps=3, h=0.5)
    with pytest.raises(ValueError, match=r"h must be in \(0, 1\]"):
        SW.sweep_discrete("sgd", "ravine", {"h": [0.5, 2.0]}, T=4.0)
    with pytest.raises(ValueError, match="sweep it with sweep_discrete"):
        SW.sweep_continuous("sgd", "ravine", {"h": [0.5, 1.0]}, T=1.0)


def test_flows_that_refuse_one_batch_run_per_group_and_the_rest_says_so():
    """RAdam reads its clocks as numbers (betas) and NAdam's rates have no per-row step (h):
    one batch per group of equal clock rates and h, each row still its own run bit for bit.
    A branch on a swept value inside a group (SGD's weight_decay != 0) is refused, named."""
    prob = make_problem("rosenbrock")
    grid = {"lr": [1e-2, 3e-2], "betas": [(0.9, 0.999), (0.8, 0.99)]}
    res = SW.sweep_discrete("radam", prob, grid, steps=8)
    assert res.stats["batches"] == 2
    for i, p in enumerate(SW.grid_points(grid)):
        assert torch.equal(res.W[i], run_discrete(make_flow("radam", **p), prob.grad,
                                                  prob.x0(), 8)[1]), p
    res = SW.sweep_continuous("adamax", prob, grid, T=1.0, method="rk4", step_size=0.25)
    assert res.stats["batches"] == 2
    for i, p in enumerate(SW.grid_points(grid)):
        ref = integrate(make_flow("adamax", **p), prob, T=1.0, method="rk4", step_size=0.25)
        assert torch.equal(res.W[i], ref.W), p
    res = SW.sweep_discrete("nadam", prob, {"h": [1.0, 0.5]}, T=2.0)
    assert res.stats["batches"] == 2
    for i, hj in enumerate([1.0, 0.5]):
        Ws = run_discrete(discrete_flow(make_flow("nadam"), hj), prob.grad, prob.x0(),
                          round(2.0 / hj))[1]
        assert torch.equal(res.W[i, :len(Ws)], Ws)
    with pytest.raises(SW.NotUniform, match="ne differs across the points"):
        SW.sweep_discrete("sgd", "ravine", {"weight_decay": [0.0, 0.01]}, steps=3)
    with pytest.raises(SW.NotUniform, match="ne differs across the points"):
        SW.sweep_continuous("sgd", "ravine", {"weight_decay": [0.0, 0.01]}, T=1.0)


def test_demo_sweep_writes_its_outputs(tmp_path):
    rec = SW.demo_sweep(tmp_path)
    assert len(rec["points"]) == 64 and len(rec["final_loss"]) == 64
    assert (tmp_path / "sweep_heavy_ball.png").stat().st_size > 0
    assert (tmp_path / "sweep_heavy_ball.json").stat().st_size > 0
