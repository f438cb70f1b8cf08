"""Problems: oracles against autograd, the registry, and minibatch h = 1 == torch.optim."""

import math

import pytest
import torch
from torch import nn

from fluxode import make_flow
from fluxode.integrate import run_discrete_trajectory
from fluxode.plotting import contour_grid
from fluxode.problems import (PROBLEMS, ModuleProblem, Problem, Rosenbrock, classification,
                              make_problem, ravine)


@pytest.mark.parametrize("name", ["quadratic", "ravine", "rosenbrock", "linear"])
def test_analytic_gradients_and_hessians_match_autograd(name):
    p = make_problem(name)
    W = p.x0() + torch.tensor([0.3, -0.2], dtype=torch.float64)
    assert torch.allclose(p.grad(W), Problem.grad(p, W), rtol=1e-12, atol=1e-12)
    assert torch.allclose(p.hessian(W), Problem.hessian(p, W), rtol=1e-12, atol=1e-12)


def test_ravine_is_ill_conditioned_and_rotated():
    p = ravine(condition=100.0, angle=math.pi / 6)
    assert torch.allclose(p.eigenvalues, torch.tensor([1.0, 100.0], dtype=torch.float64))
    assert p.A[0, 1].abs() > 1  # not axis-aligned


def test_closed_forms_start_at_x0():
    p = make_problem("quadratic")
    for W in (p.gradient_flow_solution(0.0, 0.1), p.heavy_ball_solution(0.0, 0.1, 0.9),
              p.nesterov_ode_solution(0.0, 0.01)):
        assert torch.allclose(W, p.x0().double(), atol=1e-15)


def test_registry_and_contours():
    assert {"quadratic", "ravine", "rosenbrock", "linear", "logreg-digits",
            "mlp-digits"} <= set(PROBLEMS)
    with pytest.raises(ValueError, match="problem must be one of"):
        make_problem("banana")
    X, Y, Z = contour_grid(Rosenbrock(), 20)
    assert Z.shape == (20, 20) and Z.min() >= 0
    with pytest.raises(ValueError, match="2-D"):
        contour_grid(make_problem("logreg-digits"), 5)


def test_module_problem_gradient_matches_module_backward():
    p = classification("digits", hidden=(16,), max_samples=200)
    W = p.x0()
    g = p.grad(W)
    x, y = p.batches[0]
    p.model.zero_grad()
    nn.functional.cross_entropy(p.model(x), y).backward()
    ref = torch.cat([q.grad.reshape(-1) for q in p.model.parameters()])
    assert torch.allclose(g, ref, rtol=1e-12, atol=1e-14)


def test_module_problem_refuses_mismatched_data():
    model = nn.Linear(3, 1).double()
    with pytest.raises(ValueError, match="mismatched"):
        ModuleProblem(model, nn.functional.mse_loss, data=(torch.zeros(4, 3), torch.zeros(4, 1)))
    with pytest.raises(ValueError, match="exactly one"):
        ModuleProblem(model, nn.functional.mse_loss)


@pytest.mark.parametrize("name,hp", [
    ("sgd", dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=1e-3)),
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("adam", dict(lr=1e-2, betas=(0.8, 0.99))),
    ("adamw", dict(lr=1e-2, weight_decay=0.1)),
    ("rmsprop", dict(lr=1e-2, momentum=0.5, centered=True)),
])
def test_minibatch_h1_discretization_equals_torch_optim(name, hp):
    """Batch k on τ ∈ [k, k+1): the h = 1 map is torch.optim over the same batch sequence."""
    p = classification("digits", hidden=(16,), batch_size=64, max_samples=320)
    steps = 12  # cycles through the 5 batches more than twice
    flow = make_flow(name, **hp)
    tr = run_discrete_trajectory(flow, p, steps)

    model = p.model
    p.load_into(p.x0())
    opt = getattr(torch.optim, flow.torch_twin)(model.parameters(), foreach=False,
                                                **flow.torch_kwargs())
    for k in range(steps):
        x, y = p.batches[k % len(p.batches)]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        Wt = torch.cat([q.detach().reshape(-1) for q in model.parameters()])
        assert torch.allclose(tr.W[k + 1], Wt, rtol=1e-12, atol=1e-13), f"step {k + 1}"
    # and the batches really differ: a full-batch run ends elsewhere
    full = classification("digits", hidden=(16,), max_samples=320)
    assert (run_discrete_trajectory(flow, full, steps).W[-1] - tr.W[-1]).abs().max() > 1e-4
