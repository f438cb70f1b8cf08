"""Central flows (GD, RMSprop), Lanczos with a convergence report, preconditioned sharpness
(float64; closed forms on a toy valley, finite differences of the constraint, dense
eigensolves)."""

import math

import numpy as np
import pytest
import torch

from fluxode import sharpness as Sh
from fluxode.central import (GDCentralFlow, RMSpropCentralFlow, central_flow, solve_lcp,
                             time_average)
from fluxode.flows import make_flow


class Valley:
    """L(x, y) = ½(1 + y)x² - c·y: the sharpness at x = 0 is 1 + y and grows under gradient
    flow (ẏ = η(c - ½x²)); GD at the edge 1 + y = 2/η flips x with x² = 2c, so the central
    flow holds y at 2/η - 1 with σ² = 2c (closed form)."""

    name, dim = "valley", 2

    def __init__(self, c=0.05):
        self.c = c

    def loss(self, W):
        x, y = W[0], W[1]
        return 0.5 * (1 + y) * x * x - self.c * y

    def grad(self, W, tau=0.0):
        x, y = W[0], W[1]
        return torch.stack([(1 + y) * x, 0.5 * x * x - self.c])

    def hessian(self, W):
        return torch.autograd.functional.hessian(self.loss, W)

    def x0(self):
        return torch.tensor([0.1, 0.0], dtype=torch.float64)


# --- Lanczos -----------------------------------------------------------------------------------
def test_lanczos_top_k_matches_a_dense_eigensolve_with_true_residuals():
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(60, 60, generator=g, dtype=torch.float64))
    lam = torch.cat([torch.tensor([5.0, 4.0, 3.5], dtype=torch.float64),
                     torch.linspace(-1, 2, 57, dtype=torch.float64)])
    A = Q @ torch.diag(lam) @ Q.T
    e = Sh.lanczos(lambda v: A @ v, torch.ones(60, dtype=torch.float64), k=3, iters=60,
                   tol=1e-9, check=True)
    assert e.converged and e.values == pytest.approx([5.0, 4.0, 3.5], abs=1e-10)
    for i in range(3):
        u = e.vectors[:, i]
        assert float((A @ u - e.values[i] * u).norm()) == pytest.approx(e.residuals[i], abs=1e-12)
        assert e.residuals[i] <= 1e-9 * 5
    cold = Sh.lanczos(lambda v: A @ v, torch.ones(60, dtype=torch.float64), k=1, tol=1e-8)
    warm = Sh.lanczos(lambda v: A @ v, cold.vectors, k=1, tol=1e-8)
    assert warm.products < cold.products and warm.converged
    few = Sh.lanczos(lambda v: A @ v, torch.ones(60, dtype=torch.float64), k=3, iters=3)
    assert not few.converged and max(few.residuals) > 1e-3


def test_preconditioned_sharpness_is_the_top_eigenvalue_of_PH():
    p = Sh.tanh_mlp(n=20, hidden=6)
    W = p.x0()
    P = torch.rand(p.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    lam, _ = Sh.sharpness(p.loss, W, iters=80, precond=P)
    H = p.hessian(W)
    dense = torch.linalg.eigvals(torch.diag(P) @ H).real.max()
    assert lam == pytest.approx(float(dense), rel=1e-8)


def test_track_measures_rmsprops_preconditioned_sharpness_against_two_over_lr():
    p = Sh.tanh_mlp(n=30, hidden=8)
    r = Sh.track("rmsprop", p, 40, every=20, lr=1e-3, alpha=0.99)
    assert r["threshold"] == pytest.approx(2 / 1e-3) and r["preconditioned"]
    assert r["sharpness_steps"] == [20, 40]
    adam = Sh.track("adam", p, 20, every=10, lr=1e-3, betas=(0.9, 0.999))
    assert adam["threshold"] == pytest.approx(38 / 1e-3) and adam["preconditioned"]
    gd = Sh.track("sgd", p, 20, every=10, lr=0.1)
    assert not gd["preconditioned"] and gd["sharpness_steps"] == [0, 10, 20]


def test_flows_state_their_preconditioner():
    rms = make_flow("rmsprop", lr=0.01, eps=1e-3)
    S = {"W": torch.zeros(2, dtype=torch.float64), "v": torch.tensor([4.0, 0.25],
                                                                     dtype=torch.float64)}
    assert torch.allclose(rms.preconditioner(S), 1 / (torch.tensor([2.0, 0.5]) + 1e-3).double())
    adam = make_flow("adam", lr=0.01, betas=(0.9, 0.99), eps=1e-3)
    S = {"W": S["W"], "m": S["W"], "v": S["v"], "c1": torch.tensor(0.5, dtype=torch.float64),
         "c2": torch.tensor(0.25, dtype=torch.float64)}
    want = 1 / (0.5 * (torch.sqrt(S["v"] / 0.25) + 1e-3))
    assert torch.allclose(adam.preconditioner(S), want)
    assert adam.max_stable_sharpness() == pytest.approx(38 / 0.01)
    assert make_flow("sgd").preconditioner(S) is None


# --- the complementarity problem ---------------------------------------------------------------
def test_solve_lcp_solves_small_complementarity_problems():
    M = np.array([[2.0, 0.5], [0.5, 1.0]])
    for c in ([-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-3.0, 2.0]):
        c = np.array(c)
        x = solve_lcp(M, c)
        w = M @ x + c
        assert (x >= 0).all() and (w >= -1e-12).all() and abs(x @ w) < 1e-12


# --- GD central flow: closed forms on the valley -------------------------------------------
def test_gd_central_flow_at_the_edge_has_the_closed_form_sigma2_and_stands_still():
    lr, c = 0.5, 0.05
    cf = GDCentralFlow(lr)
    W = torch.tensor([0.0, 2 / lr - 1], dtype=torch.float64)  # S = 1 + y = 2/η
    pt = cf.point(Valley(c), W)
    assert pt.eig.values[0] == pytest.approx(2 / lr, abs=1e-10) and pt.eig.converged
    assert pt.sigma2[0] == pytest.approx(2 * c, rel=1e-10)  # max(0, -2⟨∇S,∇L⟩/‖∇S‖²)
    assert float(pt.dstate.norm()) < 1e-10
    assert pt.predicted_loss == pytest.approx(-c * (2 / lr - 1) + 0.5 * 2 * c * 2 / lr)
    below = cf.point(Valley(c), torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert below.sigma2[0] == 0 and torch.allclose(below.dstate, torch.tensor([0.0, lr * c],
                                                                              dtype=torch.float64))


def test_the_constraint_relaxes_at_rate_kappa_finite_differences():
    """Wherever σ² > 0, dSᵢ/dτ = -κ(Sᵢ - 2/η) along the field (S from a fresh eigensolve)."""
    p = Sh.tanh_mlp(n=30, hidden=8, out_scale=1.0)
    W = p.x0()
    S0 = Sh.sharpness(p.loss, W, iters=80)[0]
    for cf, y in [(GDCentralFlow(2 / (0.98 * S0), kappa=0.7, lanczos_tol=1e-10), W),
                  (None, None)]:
        if cf is None:
            g = p.grad(W)
            v = g * g + 1e-4
            P = 1 / (v.sqrt() + 1e-8)
            Sp = Sh.sharpness(p.loss, W, iters=80, precond=P)[0]
            cf = RMSpropCentralFlow(2 / (0.98 * Sp), alpha=0.9, kappa=0.7, lanczos_tol=1e-10)
            y = torch.cat([W, v])
        pt = cf.point(p, y)
        assert pt.sigma2[0] > 0
        d = 1e-5

        def S(yy):
            return Sh.top_eigenpairs(p.loss, yy[:p.dim], precond=cf.preconditioner(yy),
                                     iters=100, tol=1e-11).values[0]

        rate = (S(y + d * pt.dstate) - S(y - d * pt.dstate)) / (2 * d)
        assert rate == pytest.approx(-0.7 * (pt.eig.values[0] - cf.threshold), rel=1e-4)


def test_adam_has_no_central_flow_and_says_why():
    with pytest.raises(ValueError, match="through m"):
        central_flow("adam", 0.01)
    assert isinstance(central_flow("rmsprop", 1e-3, alpha=0.9), RMSpropCentralFlow)


def test_time_average_is_a_centered_window_mean():
    x = np.array([0.0, 2.0, 0.0, 2.0, 0.0, 2.0])
    assert time_average(x, 2)[1:-1] == pytest.approx([1.0] * 4)
    assert time_average(x, 1) == pytest.approx(x)


def test_central_module_does_not_import_the_ode_library():
    import fluxode.central as C

    src = open(C.__file__).read()
    assert "torchdiffeq" not in src.replace("ODE library", "")
    assert math.isfinite(GDCentralFlow(0.1).threshold)
