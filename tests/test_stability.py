"""Stability thresholds on quadratics, sharpness by Lanczos, and the edge of stability."""

import numpy as np
import pytest
import torch

from fluxode import sharpness as Sh
from fluxode import stability as St
from fluxode.flows import make_flow



CASES = [("sgd", {}, lambda lam, v: 2 / lam),
         ("sgd", dict(momentum=0.9), lambda lam, v: 3.8 / lam),
         ("sgd", dict(momentum=0.5, dampening=0.5), lambda lam, v: 3.0 / (0.5 * lam)),
         ("sgd", dict(momentum=0.9, nesterov=True), lambda lam, v: 3.8 / (2.8 * lam)),
         ("rmsprop", dict(eps=1e-8), lambda lam, v: 2 * (v ** 0.5 + 1e-8) / lam),
         ("rmsprop", dict(momentum=0.5, eps=1e-8), lambda lam, v: 3 * (v ** 0.5 + 1e-8) / lam),
         ("adam", dict(betas=(0.9, 0.999), eps=1e-8),
          lambda lam, v: 3.8 * (v ** 0.5 + 1e-8) / (0.1 * lam))]


@pytest.mark.parametrize("name, hp, exact", CASES)
@pytest.mark.parametrize("lam", [0.5, 30.0])
def test_bisection_threshold_matches_the_formula_within_one_percent(name, hp, exact, lam):
    v = 4e-2
    num = St.max_stable_lr(name, lam, v=v, **hp)
    assert num == pytest.approx(exact(lam, v), rel=1e-2)
    assert St.formula_lr(name, lam, v=v, **hp) == pytest.approx(exact(lam, v), rel=1e-12)


@pytest.mark.parametrize("name, hp, _", CASES)
def test_the_real_map_diverges_just_above_and_not_just_below(name, hp, _):
    lam, v = 10.0, 4e-2
    lr = St.formula_lr(name, lam, v=v, **hp)
    assert St.diverges(name, lam, 1.01 * lr, v=v, **hp)
    assert not St.diverges(name, lam, 0.99 * lr, v=v, **hp)


def test_one_step_matrix_of_heavy_ball():
    M = St.one_step_matrix(make_flow("sgd", lr=0.1, momentum=0.9), 2.0)
    # z = (W, b):  b' = μb + λW,  W' = W - lr·b'
    assert np.allclose(M, [[1 - 0.1 * 2.0, -0.1 * 0.9], [2.0, 0.9]], atol=1e-15)


def test_stability_refuses_bad_input():
    with pytest.raises(ValueError, match="lam"):
        St.max_stable_lr("sgd", -1.0)
    with pytest.raises(ValueError, match="supports"):
        St.formula_lr("adagrad", 1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        St.formula_lr("sgd", 1.0, weight_decay=0.1)


def test_lanczos_finds_the_top_eigenvalue_of_a_known_matrix():
    g = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(50, 50, generator=g, dtype=torch.float64))
    evals = torch.linspace(-3, 7, 50, dtype=torch.float64)
    A = Q @ torch.diag(evals) @ Q.T
    lam, v = Sh.lanczos_top(lambda u: A @ u, torch.ones(50, dtype=torch.float64), iters=50)
    assert lam == pytest.approx(7.0, rel=1e-10)
    assert torch.allclose(A @ v, 7.0 * v, atol=1e-8)


def test_sharpness_matches_the_dense_hessian_of_the_mlp():
    p = Sh.tanh_mlp(n=20, hidden=4)
    W = p.x0()
    lam, _ = Sh.sharpness(p.loss, W, iters=40)
    dense = torch.linalg.eigvalsh(p.hessian(W)).max()
    assert lam == pytest.approx(float(dense), rel=1e-8)


def test_edge_of_stability_and_a_run_below_it():
    p = Sh.tanh_mlp()
    eos = Sh.track("sgd", p, 1000, every=25, lr=0.5)
    assert eos["threshold"] == pytest.approx(4.0)
    s0 = eos["sharpness"][0] / eos["threshold"]
    assert s0 < 0.7                                   # starts well below 2/η ...
    lo, hi = Sh.last_quarter_ratio(eos)
    assert 0.9 <= lo and hi <= 1.1                    # ... rises and hovers at 2/η
    assert eos["loss"][-1] < 0.05 * eos["loss"][0]
    below = Sh.track("sgd", p, 600, every=25, lr=0.1)
    ratios = np.array(below["sharpness"]) / below["threshold"]
    assert ratios.max() < 0.5                         # never reaches 2/η = 20
    assert np.all(np.diff(below["loss"]) < 0)         # monotone descent below the edge


# --- capabilities: thresholds come from the flow, for a registered name or a flow instance ---
def test_stability_takes_a_flow_instance_and_asks_it():
    flow = make_flow("sgd", lr=0.3, momentum=0.9)
    assert St.formula_lr(flow, 2.0) == pytest.approx(3.8 / 2.0, rel=1e-12)
    assert St.max_stable_lr(flow, 2.0) == pytest.approx(3.8 / 2.0, rel=1e-8)
    assert St.diverges(flow, 2.0, 1.01 * 1.9) and not St.diverges(flow, 2.0, 0.99 * 1.9)
    assert St.max_stable_sharpness(flow) == pytest.approx(3.8 / 0.3)
    adamw = make_flow("adamw", weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    assert St.formula_lr(adamw, 10.0, v=4e-2) == St.formula_lr("adam", 10.0, v=4e-2)


def test_flows_without_a_threshold_refuse_by_name():
    with pytest.raises(ValueError, match="flow 'adagrad' declares no maximal stable sharpness"):
        St.max_stable_sharpness(make_flow("adagrad"))
    with pytest.raises(ValueError, match="flow 'newton' declares none"):
        St.max_stable_lr("newton", 1.0)
    with pytest.raises(ValueError, match="amsgrad"):
        St.one_step_matrix(make_flow("adam", amsgrad=True), 1.0)
