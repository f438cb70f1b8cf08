"""Stochastic limits: minibatch noise, Li–Tai–E SDE weak orders, RMSprop on the sqrt path."""

import numpy as np
import pytest
import torch
import torchsde

from fluxode import sde
from fluxode.discretize import run_discrete
from fluxode.flows import make_flow



A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
SIGMA = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
X0 = torch.tensor([1.0, -1.0], dtype=torch.float64)


def test_noise_covariance_of_per_example_gradients_and_batches():
    g = torch.randn(5000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    L = torch.tensor([[1.0, 0, 0], [0.5, 1, 0], [0, 0.2, 2]], dtype=torch.float64)
    S = sde.noise_covariance(g @ L.T)
    assert torch.allclose(S, L @ L.T, atol=0.15)
    assert torch.allclose(sde.minibatch_covariance(S, 4), S / 4)
    assert torch.allclose(sde.minibatch_covariance(S, 10, n=10, replacement=False),
                          torch.zeros_like(S))
    with pytest.raises(ValueError, match="batch_size"):
        sde.minibatch_covariance(S, 0)


def test_exact_sgd_moments_match_monte_carlo_of_the_real_discrete_map():
    lr, steps, R = 0.1, 20, 40000
    gen = torch.Generator().manual_seed(1)
    root = torch.linalg.cholesky(SIGMA)

    def grad(W):
        return W @ A + torch.randn(W.shape, generator=gen, dtype=W.dtype) @ root.T

    _, Ws = run_discrete(make_flow("sgd", lr=lr), grad, X0.expand(R, 2).clone(), steps,
                         every=steps)
    m, C = sde.sgd_moments(A, SIGMA, X0, lr, steps)
    W = Ws[-1]
    assert torch.allclose(W.mean(0), m, atol=4 * float(C.diagonal().max().sqrt()) / R ** 0.5)
    assert torch.allclose(torch.cov(W.T), C, rtol=0.05, atol=1e-4)


def test_li_tai_e_weak_orders():
    r = sde.li_tai_e_study(A, SIGMA, X0, T=2.0)
    assert r["order1"]["mean_order"] == pytest.approx(1.0, abs=0.1)
    assert r["order2"]["mean_order"] == pytest.approx(2.0, abs=0.15)
    # the covariance is itself O(η): both SDEs get it to O(η²)
    assert r["order1"]["cov_order"] == pytest.approx(2.0, abs=0.15)
    assert r["order2"]["cov_order"] == pytest.approx(2.0, abs=0.15)
    assert r["order2"]["mean_errors"][-1] < 0.01 * r["order1"]["mean_errors"][-1]


def test_torchsde_integration_of_the_sgd_sde_matches_the_ou_moments():
    lr, T, R = 0.1, 10.0, 20000  # step clock: T = 10 steps (lr-time 1)
    torch.manual_seed(0)
    ys = torchsde.sdeint(sde.SGDSDE(A, SIGMA, lr), X0.expand(R, 2).clone(),
                         torch.tensor([0.0, T], dtype=torch.float64), method="euler", dt=5e-2)
    m, C = sde.sde_moments(A, SIGMA, X0, lr, T)
    m1, C1 = sde.sde_moments(A, SIGMA, X0, lr, 1.0)  # not lr-time: 1 step
    assert not torch.allclose(m, m1)
    assert torch.allclose(ys[-1].mean(0), m, atol=4 * float(C.diagonal().max().sqrt()) / R ** 0.5)
    assert torch.allclose(torch.cov(ys[-1].T), C, rtol=0.06, atol=1e-3)


HP = dict(lr=0.5, alpha=0.9, eps=0.5, a=(1.0, 4.0), sigma=(1.0, 0.5), x0=(1.0, -1.0))


@pytest.mark.slow
def test_torchsde_integration_of_the_rmsprop_sde_matches_its_moment_odes():
    T, R = 2.0, 20000
    torch.manual_seed(0)
    model = sde.RMSpropSDE(HP["a"], HP["sigma"], HP["lr"], HP["alpha"], HP["eps"])
    y0 = torch.tensor([*HP["x0"], 0.0, 0.0], dtype=torch.float64).expand(R, 4).clone()
    ys = torchsde.sdeint(model, y0, torch.tensor([0.0, T], dtype=torch.float64),
                         method="euler", dt=5e-3)
    m, v = sde.rmsprop_sqrt_moments(HP["a"], HP["sigma"], HP["x0"], HP["lr"], HP["alpha"],
                                    HP["eps"], T)
    th = ys[-1][:, :2].numpy()
    assert np.allclose(th.mean(0), m, atol=4 * np.sqrt(v.max() / R))
    assert np.allclose(th.var(0), v, rtol=0.05)


def test_rmsprop_moments_on_the_sqrt_path_converge_to_the_sde():
    s = sde.sqrt_path_study(hs=[0.5, 0.25, 1 / 32], replicas=40000, **HP)
    big, small = s["rows"][0], s["rows"][-1]
    # the weak error is O(√h) (Malladi et al.'s O(η) with h = η²): a detectable bias at
    # h = 0.5 that has shrunk below the Monte Carlo resolution (40000 replicas) at h = 1/32
    assert big["var_err"] > 4 * big["var_se"]
    assert small["var_err"] < 3 * small["var_se"]
    assert small["mean_err"] < 3 * small["mean_se"]
    assert s["rows"][1]["var_err"] < big["var_err"]


ADAM = dict(lr=0.5, betas=(0.8, 0.9), eps=0.5, a=(1.0, 4.0), sigma=(1.0, 2.0), x0=(1.0, -1.0))


def _adam_moments(**kw):
    hp = {**ADAM, **kw}
    return sde.adam_sqrt_moments(hp["a"], hp["sigma"], hp["x0"], hp["lr"], hp["betas"],
                                 hp["eps"], 2.0, **{k: v for k, v in kw.items() if k == "tau0"})


def test_adam_moment_odes_are_insensitive_to_the_start_at_tau0():
    # leading-order start at τ₀: the moments at T move by O(τ₀²) (the 0/0 of m/c₁ handled),
    # down to the solver's tolerance (rtol 1e-11) by τ₀ = 1e-7
    m9, v9 = _adam_moments(tau0=1e-9)
    m5, v5 = _adam_moments(tau0=1e-5)
    m7, v7 = _adam_moments(tau0=1e-7)
    e5 = max(np.abs(m5 - m9).max(), np.abs(v5 - v9).max())
    e7 = max(np.abs(m7 - m9).max(), np.abs(v7 - v9).max())
    assert 0 < e5 < 1e-9 and e7 < 1e-12 and e7 < 1e-2 * e5
    assert np.all(v9 > 0) and np.all(np.isfinite(m9))


def test_adam_sqrt_path_rejects_bad_inputs():
    with pytest.raises(ValueError, match="betas"):
        sde.adam_sqrt_moments((1.0,), (1.0,), (1.0,), 0.5, (1.0, 0.9), 0.5, 2.0)
    with pytest.raises(ValueError, match="sigma"):
        sde.adam_sqrt_moments((1.0,), (-1.0,), (1.0,), 0.5, (0.8, 0.9), 0.5, 2.0)
    with pytest.raises(ValueError, match="eps"):
        sde.adam_sqrt_discrete((1.0,), (1.0,), (1.0,), 0.5, (0.8, 0.9), 0.0, 2.0, 0.5)
    with pytest.raises(ValueError, match="T/h"):
        sde.adam_sqrt_discrete((1.0,), (1.0,), (1.0,), 0.5, (0.8, 0.9), 0.5, 2.0, 0.3)


def test_adam_moments_on_the_sqrt_path_converge_to_the_sde():
    s = sde.adam_sqrt_path_study(hs=[0.5, 1 / 8, 1 / 256], replicas=20000, **ADAM)
    big, mid, small = s["rows"]
    # the real Adam flow (m, v, c₁, c₂ clocks) at step h: its bias-corrected v/c₂ averages
    # only ~τ/h samples early on, so the weak error decays slowly (~h·log(1/h)); by h = 1/256
    # it is below the Monte Carlo resolution of 20000 replicas
    assert big["var_err"] > 20 * big["var_se"] and big["mean_err"] > 20 * big["mean_se"]
    assert small["var_err"] < 3 * small["var_se"]
    assert small["mean_err"] < 3 * small["mean_se"]
    assert big["var_err"] > mid["var_err"] > small["var_err"]
    assert big["mean_err"] > mid["mean_err"] > small["mean_err"]


@pytest.mark.slow
def test_torchsde_integration_of_the_adam_sde_matches_its_moment_odes():
    """The torchsde model and the moment ODEs describe the same SDE (Euler–Maruyama, dt small
    enough that its bias is below the Monte Carlo resolution)."""
    T, R = 2.0, 20000
    torch.manual_seed(0)
    model = sde.AdamSDE(ADAM["a"], ADAM["sigma"], ADAM["lr"], ADAM["betas"], ADAM["eps"])
    y0 = torch.tensor([*ADAM["x0"], 0.0, 0.0], dtype=torch.float64).expand(R, 4).clone()
    ys = torchsde.sdeint(model, y0, torch.tensor([0.0, T], dtype=torch.float64),
                         method="euler", dt=1 / 512)
    m, v = sde.adam_sqrt_moments(ADAM["a"], ADAM["sigma"], ADAM["x0"], ADAM["lr"],
                                 ADAM["betas"], ADAM["eps"], T)
    th = ys[-1][:, :2].numpy()
    se_mean = np.sqrt(v / R)
    se_var = v * np.sqrt(2 / (R - 1))
    assert np.all(np.abs(th.mean(0) - m) < 4 * se_mean), (th.mean(0), m)
    assert np.all(np.abs(th.var(0) - v) < 4 * se_var), (th.var(0), v)


def test_sqrt_points_are_stated_by_the_flows():
    from fluxode import paths as P
    pt = P.sqrt_point(make_flow("rmsprop", lr=0.1, alpha=0.9, eps=1e-4), 0.25)
    assert pt.flow.name == "rmsprop" and pt.noise_scale == pytest.approx(4.0)
    assert pt.lr == pytest.approx(0.05) and pt.alpha == pytest.approx(0.975)
    assert pt.eps == pytest.approx(2e-4)
    with pytest.raises(AttributeError, match="betas"):
        pt.betas
    with pytest.raises(ValueError, match="flow 'adagrad' declares no sqrt path"):
        P.sqrt_point(make_flow("adagrad"), 0.5)


# --- SMEs for any problem or model ----------------------------------------------------------
def _tiny_net():
    from fluxode.problems import classification

    return classification("digits", hidden=(4,), max_samples=40)


def test_per_example_gradients_match_autograd_one_by_one():
    net = _tiny_net()
    W = net.x0()
    G = sde.per_example_gradients(net, W)
    x, y = net.batches[0]
    for i in (0, 7, 39):
        Wr = W.clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(net.batch_loss(Wr, (x[i:i + 1], y[i:i + 1])), Wr)
        torch.testing.assert_close(G[i], gi, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(G.mean(0), net.grad(W), rtol=1e-10, atol=1e-13)


def test_sme_drift_is_the_flow_and_diffusion_the_measured_covariance():
    from fluxode import make_flow

    net = _tiny_net()
    lr, B = 0.3, 4
    m = sde.SME(net, make_flow("sgd", lr=lr), batch_size=B, examples=None)
    W = net.x0().expand(2, -1).clone()
    torch.testing.assert_close(m.f(0.0, W)[0], -lr * net.grad(net.x0()), rtol=1e-10,
                               atol=1e-13)
    D = m.g(0.0, W)[0]  # (n, N)
    Sigma = sde.noise_covariance(sde.per_example_gradients(net, net.x0()))
    torch.testing.assert_close(D @ D.T, lr * lr * Sigma / B, rtol=1e-10, atol=1e-14)
    d = sde.SME(net, make_flow("sgd", lr=lr), batch_size=B, examples=None, noise="diagonal")
    torch.testing.assert_close(d.g(0.0, W)[0] ** 2, lr * lr * Sigma.diagonal() / B,
                               rtol=1e-10, atol=1e-14)
    m2 = sde.SME(net, make_flow("sgd", lr=lr), batch_size=B, order=2)  # -η∇(L + η/4‖∇L‖²)
    g = net.grad(net.x0())
    Hg = net.hessian(net.x0()) @ g
    torch.testing.assert_close(m2.f(0.0, W)[0], -lr * (g + lr / 2 * Hg), rtol=1e-9,
                               atol=1e-12)
    with pytest.raises(ValueError, match="momentum"):
        sde.SME(net, make_flow("sgd", momentum=0.9), batch_size=B)
    with pytest.raises(ValueError, match="example_losses"):
        sde.SME(sde.__dict__.get("nothing", object()), "sgd")


def test_sme_paths_are_reproducible_from_the_seed():
    """The Brownian motion is seeded: one seed gives the same paths, another seed others."""
    net = _tiny_net()
    kw = dict(batch_size=2, steps=4, every=2, paths=3, dt=1.0, examples=8)
    a = sde.sme_loss(net, "sgd", seed=1, **kw)["losses"]
    b = sde.sme_loss(net, "sgd", seed=1, **kw)["losses"]
    c = sde.sme_loss(net, "sgd", seed=2, **kw)["losses"]
    assert torch.equal(a, b)
    assert not torch.equal(a[1:], c[1:])
