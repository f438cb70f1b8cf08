"""FlowOptimizer as a drop-in for its torch twins, judged by torch's own optimizer database
(``optim_db``: every CPU configuration and every error input) and by torch's behavioural
tests (state dicts both ways, param groups, hooks, copies, schedulers, complex parameters,
sparse gradients)."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
import torch.testing._internal.common_optimizers as common  # needs expecttest (dev extra)
from torch import nn

from fluxode.flows import FLOWS
from fluxode.optim import FlowOptimizer

OptimizerErrorEnum = common.OptimizerErrorEnum

TWINS = {}  # torch class name → flow name (every registered flow with a torch twin)
for _name, _cls in FLOWS.items():
    if _cls.torch_twin:
        TWINS.setdefault(_cls.torch_twin, _name)
DB = [info for info in common.optim_db if info.optim_cls.__name__ in TWINS]
CONFIGS = [(info.optim_cls, TWINS[info.optim_cls.__name__], i.kwargs, i.desc)
           for info in DB for i in info.optim_inputs_func(device="cpu")]
DTYPES = [torch.float32, torch.float64]


def _model(dtype, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).to(dtype)


def _data(dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(16, 5, generator=g, dtype=dtype),
            torch.randn(16, 3, generator=g, dtype=dtype))


def _step(model, opt, x, y):
    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss
    return opt.step(closure)


def _assert_same(torch_opt, a, flux_opt, b):
    """Parameters and every state tensor torch keeps, bit for bit."""
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
        for key, value in torch_opt.state[p].items():
            if torch.is_tensor(value):
                assert key in flux_opt.state[q], key
                mine = torch.as_tensor(flux_opt.state[q][key]).to(value.dtype)
                assert torch.equal(value, mine), key


def _ids(c):
    return f"{c[0].__name__}-{c[3].replace(' ', '_')}"


# --- optim_db: every CPU configuration, 100 steps, bit for bit ----------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CONFIGS, ids=[_ids(c) for c in CONFIGS])
def test_optim_db_configuration_is_bit_for_bit(case, dtype):
    cls, flow, kwargs, _ = case
    a = _model(dtype)
    b = copy.deepcopy(a)
    x, y = _data(dtype)
    ta, fb = cls(a.parameters(), **kwargs), FlowOptimizer(b.parameters(), flow, **kwargs)
    for _ in range(100):
        _step(a, ta, x, y)
        _step(b, fb, x, y)
    _assert_same(ta, a, fb, b)


ERRORS = [(info.optim_cls, TWINS[info.optim_cls.__name__], e)
          for info in DB for e in info.optim_error_inputs_func(device="cpu", dtype=torch.float32)]


def _outcome(make, err):
    inp = err.optimizer_error_input
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            opt = make(inp.params, **inp.kwargs)
            if err.error_on == OptimizerErrorEnum.STEP_ERROR:
                opt.step()
        except Exception as ex:  # noqa: BLE001 - the type is what is compared
            return type(ex)
    return None


@pytest.mark.parametrize("case", ERRORS,
                         ids=[f"{c[0].__name__}-{c[2].optimizer_error_input.desc}"
                              for c in ERRORS])
def test_optim_db_error_input_raises_what_torch_raises(case):
    cls, flow, err = case
    expected = _outcome(cls, err)
    assert expected is not None and issubclass(expected, err.error_type)
    assert _outcome(lambda p, **k: FlowOptimizer(p, flow, **k), err) is expected


# --- state dicts both ways, mid-run ---------------------------------------------------------------
def _saved(opt) -> dict:
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("direction", ["torch→fluxode", "fluxode→torch"])
@pytest.mark.parametrize("case", CONFIGS, ids=[_ids(c) for c in CONFIGS])
def test_state_dict_moves_between_torch_and_fluxode_mid_run(case, direction):
    cls, flow, kwargs, _ = case
    dtype = torch.float64
    x, y = _data(dtype)
    ref = _model(dtype)
    ref_opt = cls(ref.parameters(), **kwargs)
    for _ in range(40):
        _step(ref, ref_opt, x, y)

    def make(kind, params):
        return cls(params, **kwargs) if kind == "torch" else FlowOptimizer(params, flow, **kwargs)

    first, second = ("torch", "fluxode") if direction == "torch→fluxode" else ("fluxode", "torch")
    m = _model(dtype)
    o = make(first, m.parameters())
    for _ in range(20):
        _step(m, o, x, y)
    o2 = make(second, m.parameters())
    o2.load_state_dict(_saved(o))
    for _ in range(20):
        _step(m, o2, x, y)
    for p, q in zip(ref.parameters(), m.parameters()):
        assert torch.equal(p, q)


def test_a_state_dict_from_another_optimizer_is_refused_before_anything_changes():
    m = _model(torch.float64)
    x, y = _data(torch.float64)
    sgd = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    _step(m, sgd, x, y)
    adam = FlowOptimizer(m.parameters(), "adam")
    with pytest.raises(ValueError, match="another optimizer"):
        adam.load_state_dict(sgd.state_dict())
    assert not adam.state


def test_an_older_state_dict_without_newer_flags_loads():
    m = _model(torch.float64)
    x, y = _data(torch.float64)
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    _step(m, opt, x, y)
    sd = opt.state_dict()
    for group in sd["param_groups"]:
        for key in ("maximize", "foreach", "capturable", "differentiable", "fused",
                    "decoupled_weight_decay"):
            group.pop(key, None)
    mine = FlowOptimizer(m.parameters(), "adam", lr=0.01)
    mine.load_state_dict(sd)
    _step(m, mine, x, y)
    assert mine.param_groups[0]["maximize"] is False


# --- torch's arguments ------------------------------------------------------------------------------
@pytest.mark.parametrize("twin, flow", sorted(TWINS.items()))
def test_defaults_are_the_installed_torch_defaults(twin, flow):
    theirs = getattr(torch.optim, twin)([nn.Parameter(torch.ones(1))]).defaults
    mine = FlowOptimizer([nn.Parameter(torch.ones(1))], flow).defaults
    for key, value in theirs.items():
        if key in mine:
            assert mine[key] == value, key


def test_implementation_flags_are_accepted_and_mean_what_they_mean_in_torch():
    p = [nn.Parameter(torch.ones(3))]
    for flags in ({"foreach": False}, {"foreach": None}, {"fused": None}, {"fused": False},
                  {"differentiable": False}, {"capturable": False}):
        FlowOptimizer(p, "adam", **flags)
    assert FlowOptimizer(p, "adamw", foreach=True).backend == "auto"
    assert FlowOptimizer(p, "adamw", fused=True).backend == "auto"
    for flag in ("differentiable", "capturable"):
        with pytest.raises(NotImplementedError, match=flag):
            FlowOptimizer(p, "adam", **{flag: True})
    with pytest.raises(TypeError, match="capturable"):
        FlowOptimizer(p, "sgd", capturable=False)  # torch's SGD has no such argument


def test_adam_decoupled_weight_decay_is_adamw():
    a, b = _model(torch.float64), _model(torch.float64)
    x, y = _data(torch.float64)
    oa = torch.optim.AdamW(a.parameters(), lr=0.01, weight_decay=0.1)
    ob = FlowOptimizer(b.parameters(), "adam", lr=0.01, weight_decay=0.1,
                       decoupled_weight_decay=True)
    for _ in range(30):
        _step(a, oa, x, y)
        _step(b, ob, x, y)
    _assert_same(oa, a, ob, b)


def test_tensor_hyperparameters_and_unknown_group_keys():
    p = nn.Parameter(torch.ones(3))
    opt = FlowOptimizer([p], "adam", lr=torch.tensor(0.01), betas=(0.9, 0.99))
    p.grad = torch.ones(3)
    opt.step()
    with pytest.raises(ValueError, match="does not take"):
        FlowOptimizer([{"params": [p], "momentum": 0.9}], "adam")
    with pytest.raises(ValueError, match="does not take"):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(2))], "nesterov": True})


# --- behaviour, as torch's own tests check it ---------------------------------------------------
def _pair(flow, twin, dtype=torch.float64, **kw):
    a = _model(dtype)
    b = copy.deepcopy(a)
    return a, getattr(torch.optim, twin)(a.parameters(), **kw), b, FlowOptimizer(
        b.parameters(), flow, **kw)


def test_closure_loss_and_zero_grad_both_ways():
    _, _, b, fb = _pair("sgd", "SGD", lr=0.1)
    x, y = _data(torch.float64)
    loss = _step(b, fb, x, y)
    assert torch.is_tensor(loss) and loss.item() > 0
    fb.zero_grad(set_to_none=False)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in b.parameters())
    fb.zero_grad()
    assert all(p.grad is None for p in b.parameters())


def test_add_param_group_mid_run_and_hooks():
    a, ta, b, fb = _pair("adam", "Adam", lr=0.01)
    x, y = _data(torch.float64)
    calls = []
    fb.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    fb.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    extra_a, extra_b = nn.Parameter(torch.ones(3, dtype=torch.float64)), \
        nn.Parameter(torch.ones(3, dtype=torch.float64))
    for k in range(10):
        if k == 4:
            ta.add_param_group({"params": [extra_a], "lr": 0.05})
            fb.add_param_group({"params": [extra_b], "lr": 0.05})
        for m, o, e in ((a, ta, extra_a), (b, fb, extra_b)):
            o.zero_grad()
            (nn.functional.mse_loss(m(x), y) + e.square().sum()).backward()
            o.step()
    _assert_same(ta, a, fb, b)
    assert torch.equal(extra_a, extra_b)
    assert calls[:2] == ["pre", "post"] and len(calls) == 20


@pytest.mark.parametrize("copier", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))])
def test_deepcopy_and_pickle_round_trips_keep_stepping(copier):
    p = nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    opt = FlowOptimizer([p], "adamw", "rk4", lr=0.01)

    def closure():
        opt.zero_grad()
        loss = p.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    twin = copier(opt)
    assert twin.method == "rk4" and twin.flow_name == "adamw"
    q = twin.param_groups[0]["params"][0]

    def closure2():
        twin.zero_grad()
        loss = q.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    twin.step(closure2)
    assert torch.equal(p, q)


@pytest.mark.parametrize("twin, flow, kw, sched", [
    ("Adam", "adam", {"lr": 0.01}, "onecycle"),
    ("SGD", "sgd", {"lr": 0.01, "momentum": 0.9}, "onecycle"),
    ("RMSprop", "rmsprop", {"lr": 0.01, "momentum": 0.5}, "onecycle"),
    ("AdamW", "adamw", {"lr": 0.01}, "exponential"),
])
def test_schedulers_including_onecycle_changing_momentum_and_betas(twin, flow, kw, sched):
    a, ta, b, fb = _pair(flow, twin, **kw)
    x, y = _data(torch.float64)

    def scheduler(opt):
        if sched == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=40)
        return torch.optim.lr_scheduler.ExponentialLR(opt, 0.95)

    sa, sb = scheduler(ta), scheduler(fb)
    for _ in range(40):
        _step(a, ta, x, y)
        _step(b, fb, x, y)
        sa.step()
        sb.step()
    _assert_same(ta, a, fb, b)


@pytest.mark.parametrize("twin, flow, kw", [
    ("SGD", "sgd", {"lr": 0.01, "momentum": 0.9}), ("Adam", "adam", {"lr": 0.01}),
    ("AdamW", "adamw", {"lr": 0.01, "amsgrad": True}), ("Adagrad", "adagrad", {"lr": 0.1}),
    ("RMSprop", "rmsprop", {"lr": 0.01, "centered": True, "momentum": 0.5}),
])
def test_complex_parameters_step_as_torch_steps_them(twin, flow, kw):
    torch.manual_seed(3)
    A = torch.randn(4, 4, dtype=torch.complex128)
    p = nn.Parameter(torch.randn(4, dtype=torch.complex128))
    q = nn.Parameter(p.detach().clone())
    ta, fb = getattr(torch.optim, twin)([p], **kw), FlowOptimizer([q], flow, **kw)
    for _ in range(25):
        for w, o in ((p, ta), (q, fb)):
            o.zero_grad()
            (A @ w).abs().square().sum().backward()
            o.step()
    assert torch.equal(p, q)


@pytest.mark.parametrize("momentum", [0.0])
def test_sparse_gradients_as_torch_sgd_takes_them(momentum):
    torch.manual_seed(4)
    ea = nn.Embedding(10, 3, sparse=True).double()
    eb = copy.deepcopy(ea)
    ta = torch.optim.SGD(ea.parameters(), lr=0.1, momentum=momentum)
    fb = FlowOptimizer(eb.parameters(), "sgd", lr=0.1, momentum=momentum)
    for k in range(10):
        idx = torch.tensor([k % 10, (3 * k) % 10, 7])
        for e, o in ((ea, ta), (eb, fb)):
            o.zero_grad()
            e(idx).square().sum().backward()
            o.step()
    assert torch.equal(ea.weight, eb.weight)


@pytest.mark.parametrize("flow, kw", [("adam", {}), ("sgd", {"momentum": 0.9})])
def test_sparse_gradients_where_the_flow_has_no_sparse_form_are_refused(flow, kw):
    e = nn.Embedding(10, 3, sparse=True)
    opt = FlowOptimizer(e.parameters(), flow, **kw)
    e(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_momentum_switched_on_mid_run():
    a, ta, b, fb = _pair("sgd", "SGD", lr=0.05)
    x, y = _data(torch.float64)
    for k in range(20):
        if k == 10:
            for o in (ta, fb):
                o.param_groups[0]["momentum"] = 0.9
        _step(a, ta, x, y)
        _step(b, fb, x, y)
    _assert_same(ta, a, fb, b)


def test_sgd_first_momentum_step_is_exactly_the_gradient():
    """torch sets buf = g on the first step; with dampening the Euler step from the
    consistent start b(0) = d·g₀/μ equals g₀ only in exact arithmetic."""
    torch.manual_seed(5)
    p = nn.Parameter(torch.randn(1000, dtype=torch.float64))
    q = nn.Parameter(p.detach().clone())
    ta = torch.optim.SGD([p], lr=0.1, momentum=0.99, dampening=0.5)
    fb = FlowOptimizer([q], "sgd", lr=0.1, momentum=0.99, dampening=0.5)
    g = torch.randn(1000, dtype=torch.float64)
    p.grad, q.grad = g.clone(), g.clone()
    ta.step()
    fb.step()
    assert torch.equal(fb.state[q]["momentum_buffer"], ta.state[p]["momentum_buffer"])


def test_per_parameter_step_counts_in_every_mode():
    a, ta, b, fb = _pair("adam", "Adam", lr=0.01)
    b2 = copy.deepcopy(b)
    fb2 = FlowOptimizer(b2.parameters(), "adam", "discrete", lr=0.01)
    x, y = _data(torch.float64)
    for k in range(12):
        for m, o in ((a, ta), (b, fb), (b2, fb2)):
            o.zero_grad()
            nn.functional.mse_loss(m(x), y).backward()
            if k % 3:
                m[2].bias.grad = None  # this parameter gets no gradient on some steps
            o.step()
    _assert_same(ta, a, fb, b)
    _assert_same(ta, a, fb2, b2)


def test_ode_methods_take_mixed_precision_groups_and_zero_element_parameters():
    w32 = nn.Parameter(torch.ones(3, dtype=torch.float32))
    w64 = nn.Parameter(torch.ones(2, dtype=torch.float64))
    empty = nn.Parameter(torch.ones(0))
    opt = FlowOptimizer([w32, w64, empty], "sgd", "rk4", lr=0.1)

    def closure():
        opt.zero_grad()
        loss = w32.square().sum() + w64.square().sum() + empty.sum()
        loss.backward()
        return loss

    opt.step(closure)
    # rk4 on ẇ = -2·lr·w over one unit interval: w·(1 - 0.2 + 0.02 - 0.0013... ) = w·e^{-0.2}
    expect = 1 - 0.2 + 0.2 ** 2 / 2 - 0.2 ** 3 / 6 + 0.2 ** 4 / 24
    assert abs(float(w64[0]) - expect) < 1e-15 and abs(float(w32[0]) - expect) < 1e-7
    only_empty = FlowOptimizer([nn.Parameter(torch.ones(0))], "adam", "rk4")
    only_empty.step(lambda: torch.zeros(()))
