"""FlowOptimizer as a drop-in torch.optim.Optimizer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fluxode.optim import FlowOptimizer
from fluxode import schedules


def _net(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).to(dtype)


def _data(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 4, generator=g, dtype=dtype), torch.randn(16, 2, generator=g,
                                                                      dtype=dtype)


def _train(net, opt, steps, x, y, closure=False):
    for _ in range(steps):
        def loss_fn():
            opt.zero_grad()
            loss = nn.functional.mse_loss(net(x), y)
            loss.backward()
            return loss
        if closure:
            opt.step(loss_fn)
        else:
            loss_fn()
            opt.step()


def test_param_groups_match_torch():
    x, y = _data()
    a, b = _net(), _net()
    groups = lambda n: [{"params": n[0].parameters(), "lr": 0.05, "weight_decay": 0.1},  # noqa
                        {"params": n[2].parameters()}]
    ta = torch.optim.AdamW(groups(a), lr=0.01, betas=(0.8, 0.99), foreach=False)
    fb = FlowOptimizer(groups(b), "adamw", lr=0.01, betas=(0.8, 0.99))
    _train(a, ta, 50, x, y)
    _train(b, fb, 50, x, y, closure=True)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_closure_loss_is_returned():
    x, y = _data()
    net = _net()
    opt = FlowOptimizer(net.parameters(), "sgd", lr=0.1)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(net(x), y)
        loss.backward()
        return loss
    loss0 = opt.step(closure)
    loss1 = opt.step(closure)
    assert loss1 < loss0


@pytest.mark.parametrize("flow,hp", [("adam", {"amsgrad": True}), ("sgd", {"momentum": 0.9}),
                                     ("rmsprop", {"centered": True, "momentum": 0.5}),
                                     ("adagrad", {"lr_decay": 0.01})])
def test_state_dict_round_trip_continues_bit_for_bit(flow, hp):
    x, y = _data(torch.float32)
    a, b = _net(dtype=torch.float32), _net(dtype=torch.float32)
    oa = FlowOptimizer(a.parameters(), flow, lr=0.01, **hp)
    ob = FlowOptimizer(b.parameters(), flow, lr=0.01, **hp)
    _train(a, oa, 10, x, y)
    _train(b, ob, 10, x, y)
    saved = ob.state_dict()
    ob2 = FlowOptimizer(b.parameters(), flow, lr=0.01, **hp)
    ob2.load_state_dict(saved)
    _train(a, oa, 10, x, y)
    _train(b, ob2, 10, x, y)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_lr_scheduler_drives_the_flow_like_torch():
    x, y = _data()
    a, b = _net(), _net()
    ta = torch.optim.Adam(a.parameters(), lr=0.02, foreach=False)
    fb = FlowOptimizer(b.parameters(), "adam", lr=0.02)
    sa = torch.optim.lr_scheduler.CosineAnnealingLR(ta, 30)
    sb = torch.optim.lr_scheduler.CosineAnnealingLR(fb, 30)
    for _ in range(40):
        _train(a, ta, 1, x, y)
        _train(b, fb, 1, x, y)
        sa.step()
        sb.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_params_without_gradients_are_left_alone():
    x, y = _data()
    net = _net()
    frozen = nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = FlowOptimizer([*net.parameters(), frozen], "adamw", lr=0.1, weight_decay=0.5)
    _train(net, opt, 5, x, y)
    assert torch.equal(frozen, torch.ones(3, dtype=torch.float64))
    assert frozen not in opt.state


def test_bad_construction_is_refused():
    net = _net()
    with pytest.raises(ValueError, match="flow must be one of"):
        FlowOptimizer(net.parameters(), "adamm")
    with pytest.raises(ValueError, match="Hessian"):
        FlowOptimizer(net.parameters(), "newton")
    with pytest.raises(ValueError, match="h must be"):
        FlowOptimizer(net.parameters(), "sgd", h=0.0)
    with pytest.raises(ValueError, match="betas"):
        FlowOptimizer(net.parameters(), "adam", betas=(0.9, 1.0))


def test_step_h_scales_the_rates_path():
    """FlowOptimizer with step h is torch's optimizer with lr·h and (1-β)·h (the rates path)."""
    x, y = _data()
    a, b = _net(), _net()
    h = 0.25
    ta = torch.optim.SGD(a.parameters(), lr=0.1 * h, momentum=1 - h * (1 - 0.9), foreach=False,
                         dampening=1 - h)
    fb = FlowOptimizer(b.parameters(), "sgd", lr=0.1, momentum=0.9, h=h)
    # torch's first step sets buf = g; the flow starts from b(0) = 0 and gives b₁ = h·g, so
    # its first move is exactly h times torch's: W₁ - W₀ = -lr·h·(h·g) vs -lr·h·g.
    w0 = [p.detach().clone() for p in a.parameters()]
    _train(a, ta, 1, x, y)
    _train(b, fb, 1, x, y)
    for p, q, w in zip(a.parameters(), b.parameters(), w0):
        assert float((p.detach() - w).abs().max()) > 1e-4  # torch moved
        torch.testing.assert_close(q - w, h * (p - w), rtol=1e-12, atol=1e-15)
    for opt in (ta,):
        for st in opt.state.values():
            st["momentum_buffer"].mul_(h)  # align the buffers to the flow's start
    for p, q in zip(a.parameters(), b.parameters()):
        q.data.copy_(p.data)
    _train(a, ta, 30, x, y)
    _train(b, fb, 30, x, y)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-13)


@pytest.mark.parametrize("spec", ["linear:40:0.1", "cosine:25:0.001", "warmup:10:cosine:30",
                                  "warmup:5:linear:20"])
def test_schedule_closed_forms_equal_torch_schedulers(spec):
    from fluxode.verify import torch_scheduler

    sched = schedules.parse(spec)
    p = [nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(p, lr=0.3)
    ts = torch_scheduler(sched, opt)
    for k in range(80):
        assert sched(0.3, k) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        opt.step()
        ts.step()


@pytest.mark.parametrize("spec,err", [("cosine", "cosine"), ("linear:0", "total_steps"),
                                      ("warmup:-3", "warmup_steps"), ("cosine:10:-1", "eta_min"),
                                      ("step:3", "schedule must be one of")])
def test_bad_schedules_are_refused(spec, err):
    with pytest.raises(ValueError, match=err):
        schedules.parse(spec)
