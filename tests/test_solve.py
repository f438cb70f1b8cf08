"""The one solve: the fused Runge–Kutta path against plain torchdiffeq, its non-finite
semantics, its host-sync budget, and the torchode backend."""

import math

import pytest
import torch
import torchdiffeq
from _syncs import count_syncs
from torch import nn

from fluxode.engine import ADAPTIVE, IntegrationError, solve
from fluxode.engine.solve import fixed_grid
from fluxode.integrate import integrate
from fluxode.ode_optimizer import ODEOptimizer
from fluxode.problems import Quadratic

torch.manual_seed(0)
A = 0.5 * torch.randn(6, 6, dtype=torch.float64)
Y0 = torch.randn(6, dtype=torch.float64)
TIMES = torch.linspace(0.0, 3.0, 7, dtype=torch.float64)


def _f(t, y):
    """A time-dependent linear field ẏ = sin(t)·Ay - y/10."""
    return torch.sin(torch.as_tensor(t, dtype=torch.float64)) * (A @ y) - 0.1 * y


def _rhs(tau, y, out):
    return torch.mv(A, y, out=out).mul_(math.sin(tau)).sub_(0.1 * y)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_methods_take_torchdiffeqs_steps(method):
    """Same nfe as torchdiffeq.odeint, with a jump; stepping onto the save times, the values
    agree to rounding; with dense output to a tenth of the tolerance (the error estimate
    cancels, so its rounding moves later step sizes by ~1e-7 relative)."""
    rtol = {"dopri5": 1e-6, "adaptive_heun": 1e-3, "fehlberg2": 1e-3}.get(method, 1e-4)  # cheap
    for dense, tol in ((False, 1e-5 * rtol), (True, 0.1 * rtol)):
        sol, st = solve(_rhs, Y0, TIMES, method=method, rtol=rtol, atol=rtol * 1e-2,
                        jumps=[1.3], dense=dense, into=True)
        calls = []
        opts = {"jump_t": torch.tensor([1.3], dtype=torch.float64)}
        if not dense:
            opts["step_t"] = TIMES[1:-1]
        ref = torchdiffeq.odeint(lambda t, y, calls=calls: calls.append(t) or _f(t, y), Y0, TIMES,
                                 method=method, rtol=rtol, atol=rtol * 1e-2, options=opts)
        assert st["nfe"] == len(calls)
        torch.testing.assert_close(sol, ref, rtol=0, atol=tol)


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun2", "heun3", "rk4"])
def test_fixed_methods_equal_torchdiffeq_to_rounding(method):
    sol, st = solve(lambda tau, y: _f(tau, y), Y0, TIMES, method=method, step_size=0.1,
                    jumps=[1.35])
    grid = fixed_grid(TIMES, 0.1, [1.35])
    ref = torchdiffeq.odeint(_f, Y0, TIMES, method=method,
                             options={"grid_constructor": lambda f, y, t: grid, "perturb": True})
    torch.testing.assert_close(sol, ref, rtol=0, atol=1e-14)
    assert st["steps"] == len(grid) - 1


def test_fixed_step_stops_at_the_first_nonfinite_stage_and_names_it():
    def rhs(tau, y):
        return torch.full_like(y, math.nan) if tau > 0.55 else -y

    seen = []
    with pytest.raises(IntegrationError, match="rate blew up at τ=0.567"):
        solve(rhs, Y0, TIMES, method="rk4", step_size=0.1,
              explain=lambda tau, y, dy: seen.append(tau) or f"rate blew up at τ={tau:.3g}")
    assert seen[0] == pytest.approx(0.5 + 0.2 / 3)  # rk4's third stage (3/8 rule) in [0.5, 0.6]


def test_adaptive_rejects_a_step_with_a_nonfinite_stage_and_recovers():
    """ẏ = -y, undefined (NaN) for y < 0: a first step of 10 overshoots into y < 0, the error
    norm reads +∞, the step is rejected and shrinks; the solution is e^{-τ}."""
    def rhs(tau, y):
        return torch.where(y < 0, math.nan, -y)

    y0 = torch.ones(3, dtype=torch.float64)
    sol, st = solve(rhs, y0, TIMES, method="dopri5", rtol=1e-8, atol=1e-10,
                    options={"first_step": 10.0})
    assert st["rejected"] >= 1
    torch.testing.assert_close(sol[:, 0], torch.exp(-TIMES), rtol=1e-6, atol=1e-9)


def test_integrate_reads_the_device_at_most_once_per_step():
    """No host read per field evaluation: a dopri5 run costs (steps + a setup constant)."""
    lam = torch.linspace(1.0, 5.0, 50, dtype=torch.float64)
    p = Quadratic(torch.diag(lam))
    integrate("sgd", p, T=2.0, method="dopri5", rtol=1e-8, atol=1e-10)  # warm caches
    with count_syncs() as syncs:
        tr = integrate("sgd", p, T=2.0, method="dopri5", rtol=1e-8, atol=1e-10)
    st = tr.stats
    assert st["nfe"] >= 6 * st["steps"]
    # setup (validation, first step size, the saved rows) is a constant: 14 here
    syncs.assert_at_most(st["steps"] + 14, f"integrate, {st['steps']} steps, {st['nfe']} nfe")


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_ode_optimizer_step_syncs_do_not_grow_with_evaluations(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    opt = ODEOptimizer(model.parameters(), "adamw", method=method, lr=1e-3)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    with count_syncs() as syncs:
        opt.step(closure)
    # step counts, the interval's ends, clocks written back (one read each), one per solver
    # step (rk4: one step of 4 evaluations; dopri5: 6 evaluations a step after the first,
    # and its end state's finiteness)
    steps = 1 if method == "rk4" else (opt.last_nfe - 2 + 5) // 6 + 1
    syncs.assert_at_most(3 + steps, f"ODEOptimizer {method} step ({opt.last_nfe} evaluations)")


def test_torchode_backend_solves_rows_with_their_own_step_sizes():
    pytest.importorskip("torchode")
    a = torch.tensor([1.0, 3.0], dtype=torch.float64)
    times = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    one, st = solve(lambda tau, y: -a * y, torch.ones(2, dtype=torch.float64), times,
                    solver="torchode", rtol=1e-8, atol=1e-10)
    exact = torch.exp(-times[:, None] * a)
    torch.testing.assert_close(one, exact, rtol=1e-6, atol=1e-9)
    rates = torch.tensor([[1.0], [20.0]], dtype=torch.float64)  # a stiff-ish and a slow row
    rows, st = solve(lambda tau, y: -rates * y, torch.ones(2, 1, dtype=torch.float64), times,
                     solver="torchode", rtol=1e-8, atol=1e-10)
    assert rows.shape == (3, 2, 1)
    torch.testing.assert_close(rows[..., 0], torch.exp(-times[:, None] * rates[:, 0]),
                               rtol=1e-6, atol=1e-9)
    assert st["steps"][1] > st["steps"][0]  # each row its own step sizes
    with pytest.raises(ValueError, match="does not stop at jumps"):
        solve(lambda tau, y: -y, Y0, TIMES, solver="torchode", jumps=[1.0])
    with pytest.raises(ValueError, match="solver='torchode' runs method in"):
        solve(lambda tau, y: -y, Y0, TIMES, solver="torchode", method="bosh3")
    with pytest.raises(ValueError, match="solver must be one of"):
        solve(lambda tau, y: -y, Y0, TIMES, solver="scipy")


def test_torchode_missing_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchode", None)
    with pytest.raises(ImportError, match=r"pip install 'fluxode\[torchode\]'"):
        solve(lambda tau, y: -y, Y0, TIMES, solver="torchode")
