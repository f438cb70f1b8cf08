"""Host-sync budget of the hot paths, counted on CPU by call site (tests/_syncs.py)."""

import pytest
import torch
from _syncs import count_syncs

from fluxode import engine
from fluxode.discretize import vector_field
from fluxode.flows import make_flow
from fluxode.optim import FlowOptimizer


# --- the counter itself ---------------------------------------------------------------------------
def test_counter_counts_each_kind_of_sync_at_its_call_site():
    t, v = torch.tensor(2.0), torch.arange(4.0)
    with count_syncs() as syncs:
        float(t)
        int(t)
        t.item()
        v.tolist()
        if (v > 1).any():
            pass
        torch.equal(v, v)
        v.nonzero()
        v[v > 1]
        [0, 1, 2][t.long()]
    assert syncs.total == 9, syncs.report()
    assert len(syncs.by_site) == 9  # one line each: the site names this file and line
    assert all("test_syncs.py:" in s for s in syncs.by_site)
    kinds = {k for c in syncs.kinds.values() for k in c}
    assert kinds == {"__float__", "__int__", "item", "tolist", "__bool__", "equal", "nonzero",
                     "__getitem__[mask]", "__index__"}


def test_counter_ignores_device_side_work_and_reports_where_a_budget_fails():
    t = torch.randn(5)
    with count_syncs() as syncs:
        u = torch.maximum(t, torch.zeros(())).clamp(max=1.0) * 2
        torch.where(u > 0, u, -u)
        u[1:3] += 1
    assert syncs.total == 0, syncs.report()
    with count_syncs() as syncs:
        for _ in range(3):
            float(t.sum())  # a deliberate sync, three times on one line
    assert syncs.total == 3 and len(syncs.by_site) == 1
    with pytest.raises(AssertionError, match=r"3 host syncs, budget 1[\s\S]*test_syncs.py:\d+"):
        syncs.assert_at_most(1, "the loop")


# --- the budget: at most one host sync per optimizer step, none per field evaluation ---------------

FLOWS = {"adam": dict(weight_decay=0.01, amsgrad=True), "adamw": {},
         "rmsprop": dict(momentum=0.9, centered=True), "sgd": dict(momentum=0.9, nesterov=True)}
STEPS = 3


def _model(seed=0):
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in ((5,), (3, 4), (7,), (2,))]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen)
    return ps


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("name", FLOWS)
def test_optimizer_step_syncs_at_most_once(name, backend):
    """FlowOptimizer's discrete step, steady state, two param groups (lr and momentum ...
    differ): at most one host sync per step (SGD has no fused kernel: 'auto' there)."""
    ps = _model()
    if name == "sgd" and backend == "fused":
        backend = "auto"
    opt = FlowOptimizer([{"params": ps[:3]}, {"params": ps[3:], "lr": 0.5}], name,
                        backend=backend, **FLOWS[name])
    opt.step()  # the state is created here
    with count_syncs() as syncs:
        for _ in range(STEPS):
            opt.step()
    syncs.assert_at_most(STEPS, f"{STEPS} steps of FlowOptimizer({name!r}, {backend!r})")


@pytest.mark.parametrize("name", FLOWS)
def test_engine_step_and_run_sync_at_most_once_per_step(name):
    flow = make_flow(name, **FLOWS[name])
    oracle = engine.Oracle(lambda W, tau: W * W - 1.0)
    for backend in ("reference", "auto"):
        S = flow.init(torch.randn(6, dtype=torch.float32))
        with count_syncs() as syncs:
            for k in range(STEPS):
                engine.step_(flow, S, oracle.grad(S["W"]), float(k), 1.0, backend=backend)
        syncs.assert_at_most(STEPS, f"{STEPS} engine.step_ of {name!r} ({backend!r})")
    with count_syncs() as syncs:
        engine.run(flow, oracle, S, STEPS)
    syncs.assert_at_most(STEPS, f"engine.run of {name!r}, {STEPS} steps")


def test_adam_along_betas_fixed_keeps_its_clocks_on_the_host():
    """The betas-fixed path rebuilds Adam's clock rates ÷ h; they still report their values to
    the position block, so its step reads nothing back either."""
    from fluxode.paths import discrete_flow

    flow = discrete_flow(make_flow("adam"), 0.25, "betas-fixed")
    oracle = engine.Oracle(lambda W, tau: W * W - 1.0)
    S = flow.init(torch.randn(6, dtype=torch.float32))
    with count_syncs() as syncs:
        engine.run(flow, oracle, S, STEPS, h=0.25)
    syncs.assert_at_most(STEPS, f"engine.run of Adam along betas-fixed, {STEPS} steps")


@pytest.mark.parametrize("name", FLOWS)
def test_continuous_field_reads_nothing_back(name):
    """Layout.field_into as integrate calls it (two units, reference and fused field), from
    the singular start τ = 0 (Adam's c = 0) and at τ > 0: no host sync at all."""
    flow = make_flow(name, **FLOWS[name])
    gen = torch.Generator().manual_seed(1)
    shapes = [(5,), (9,)]
    for backend in ("reference", "auto"):
        layout = engine.Layout(flow, shapes, backend)
        y = layout.pack([flow.init(torch.randn(s, generator=gen)) for s in shapes])
        gs = [torch.randn(s, generator=gen) for s in shapes]
        out = torch.empty_like(y)
        with count_syncs() as syncs:
            layout.field_into([0.0, 0.0], y, gs, out)
            y1 = y + 0.1 * out
            layout.field_into([0.1, 0.1], y1, gs, out)
        syncs.assert_at_most(0, f"two field evaluations of {name!r} ({backend!r})")
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_field_on_device_clocks_is_the_field_on_numbers(amsgrad):
    """The sync-free field (clocks as 0-d tensors, limits chosen by torch.where) equals the
    field with the clocks as Python numbers (host branches), float64, at c = 0 and c > 0 and
    with a state below the moment floor (the projection acts)."""
    flow = make_flow("adamw", lr=0.1, betas=(0.8, 0.95), amsgrad=amsgrad)
    gen = torch.Generator().manual_seed(2)
    r = lambda: torch.randn(50, generator=gen, dtype=torch.float64)
    for c1, c2 in ((0.0, 0.0), (0.3, 0.05)):
        W, m, g = r(), r(), r()
        v = m.square() * 0.01 * r().abs()  # partly below the floor (1-β₂)/(1-β₁)·m²/c₁
        S = {"W": W, "m": m if c1 else torch.zeros_like(m), "v": v if c1 else torch.zeros_like(v)}
        if amsgrad:
            S["vmax"] = S["v"].clone()
        on_device = vector_field(flow, 0.5, {**S, "c1": torch.tensor(c1, dtype=torch.float64),
                                             "c2": torch.tensor(c2, dtype=torch.float64)}, g)
        numbers = vector_field(flow, 0.5, {**S, "c1": c1, "c2": c2}, g)
        for n in ("W", "m", "v"):
            torch.testing.assert_close(on_device[n], numbers[n], rtol=1e-15, atol=0)


def test_step_counts_per_tensor_survive_skips_and_state_dicts():
    """The counts kept as Python numbers stay torch's: a parameter without a gradient keeps
    its count, the state dict loads into torch.optim.AdamW mid-run and both continue bit for
    bit; a loaded state is read once, then the step is sync-free again."""
    a, b = _model(3), _model(3)
    ta = torch.optim.AdamW(a, lr=0.05, fused=True)
    fb = FlowOptimizer(b, "adamw", lr=0.05, fused=True)
    for k in range(5):
        for ps in (a, b):
            ps[1].grad = None if k % 2 else torch.full(ps[1].shape, 0.5)
        ta.step()
        fb.step()
    for p, q in zip(a, b):
        assert torch.equal(p, q)
        assert torch.equal(ta.state[p]["step"], fb.state[q]["step"])
    assert float(fb.state[b[1]]["step"]) == 3 and float(fb.state[b[0]]["step"]) == 5
    tb = torch.optim.AdamW(b, lr=0.05, fused=True)
    tb.load_state_dict(fb.state_dict())
    fa = FlowOptimizer(a, "adamw", lr=0.05, fused=True)
    fa.load_state_dict(ta.state_dict())
    a[1].grad = torch.ones(a[1].shape)
    b[1].grad = torch.ones(b[1].shape)
    fa.step()
    tb.step()
    with count_syncs() as syncs:
        fa.step()
    tb.step()
    syncs.assert_at_most(0, "a step after the loaded one")
    for p, q in zip(a, b):
        assert torch.equal(p, q)
        assert torch.equal(fa.state[p]["step"], tb.state[q]["step"])


@pytest.mark.parametrize("name", FLOWS)
def test_ode_optimizer_rk4_step_syncs_at_most_once(name):
    """ODEOptimizer rk4 (one solver step per optimizer step), steady state, on a small MLP
    that continues from torch's own optimizer (its state dict: step tensors read once, at the
    first step; RMSprop's v = 0 start is singular for a method that evaluates at τ = 0):
    the step counts are known as numbers, the save times are numbers, the clocks stay 0-d
    views of the flat state; only the once-per-step finiteness flag is read."""
    from fluxode.ode_optimizer import ODEOptimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    twin = getattr(torch.optim, make_flow(name).torch_twin)
    opt = twin(model.parameters(), lr=1e-3, **FLOWS[name])

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    state = opt.state_dict()
    opt = ODEOptimizer(model.parameters(), name, method="rk4", lr=1e-3, **FLOWS[name])
    opt.load_state_dict(state)
    opt.step(closure)
    with count_syncs() as syncs:
        for _ in range(STEPS):
            opt.step(closure)
    syncs.assert_at_most(STEPS, f"{STEPS} rk4 steps of ODEOptimizer({name!r})")


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
@pytest.mark.parametrize("name", FLOWS)
def test_integrate_syncs_at_most_once_per_solver_step(name, method):
    """integrate: a fixed setup cost, then at most one sync per solver step (the fixed
    methods' finiteness flag; the adaptive ones' error ratio): the marginal count between a
    short and a long run is at most the marginal number of steps."""
    from fluxode.integrate import integrate

    flow, kw = make_flow(name, **FLOWS[name]), {}
    if method in engine.FIXED and flow.singular_start():  # start past τ = 0 (RMSprop: v = 0)
        past = integrate(flow, "quadratic", T=1.0, method="dopri5")
        kw = dict(state={n: x[-1] for n, x in past.states.items()}, tau0=1.0)
    counts = []
    for T in (4.0, 16.0):
        with count_syncs() as syncs:
            traj = integrate(flow, "quadratic", T=T, method=method, backend="auto", **kw)
        counts.append((syncs.total, traj.stats["steps"]))
    (s0, n0), (s1, n1) = counts
    assert n1 > n0
    assert s1 - s0 <= n1 - n0, (counts, syncs.report())
