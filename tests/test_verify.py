"""The discretizer at h = 1 against each installed reference twin (torch.optim or a reference
package), every flow and option."""

from __future__ import annotations

import json

import pytest
import torch

from fluxode import cli, threads
from fluxode.flows import FLOWS
from fluxode.verify import cases, references, verify

TWINS = sorted(references())
# The long horizon for the five classic twins; the other twins run 300 steps here (their whole
# option grids, both dtypes), so the suite stays inside its time budget on 2 cores. The CLI
# (`fluxode verify --steps 1000`) runs every twin at 1000 steps.
CLASSIC = ("sgd", "adagrad", "rmsprop", "adam", "adamw")


def _steps(flow: str, long: int) -> int:
    return long if flow in CLASSIC else min(long, 300)


def test_case_table_covers_every_twin_and_is_large():
    cs = cases()
    assert {c.flow for c in cs} == set(TWINS)
    assert len(cs) >= 40
    # Muon (2-D parameters only, Flow.param_dims) is verified on a net of matrices
    assert "muon" in TWINS and FLOWS["muon"].param_dims == (2,)


def test_verify_net_holds_only_the_shapes_a_flow_takes():
    """Every parameter of Muon's net is a matrix with the numbers of the usual net, and
    torch.optim.Muon itself steps it; other flows keep the 1-D and 3-D parameters."""
    import fluxode.verify as v

    torch.manual_seed(0)
    usual = v._Net()
    torch.manual_seed(0)
    matrices = v._Net(FLOWS["muon"].param_dims)
    assert {p.dim() for p in usual.parameters()} == {1, 2, 3}
    assert {p.dim() for p in matrices.parameters()} == {2}
    for a, b in zip(usual.parameters(), matrices.parameters()):
        assert torch.equal(a.reshape(-1), b.reshape(-1))
    x = torch.randn(4, 6)
    assert torch.equal(usual(x), matrices(x))
    FLOWS["muon"]().reference_optimizer(matrices.parameters())  # torch accepts it
    assert v.stored_shape((1, 5, 1), (2,)) == (5, 1)
    assert v.stored_shape((5,), (2,)) == (1, 5)
    assert v.stored_shape((5,), (1, 3)) == (5,)


@pytest.mark.slow
def test_parallel_verify_gives_the_serial_records_in_order():
    """Two worker processes (spawned, single-threaded) against this process, 3 steps (the
    workers' start, importing torch and torch._dynamo, is most of the time)."""
    flows = ["rprop", "adamax"]
    serial = verify("float64", 3, flows=flows, workers=1)
    assert verify("float64", 3, flows=flows, workers=2) == serial
    assert [(r["flow"], r["options"]) for r in serial] == \
        [(c.flow, c.label()) for c in cases() if c.flow in flows]


def test_a_failing_case_is_named_in_the_error():
    """The worker's entry point (also run in this process here) names the case that raised."""
    import fluxode.verify as v

    case = v.Case("sgd", {"momentum": -1.0})
    with pytest.raises(v.CaseError, match=r"case sgd \[momentum=-1.0\] failed: ValueError"):
        v._worker_run((case, FLOWS["sgd"], "float64", 1))
    with pytest.raises(ValueError, match="workers"):
        verify("float64", 1, flows=["sgd"], workers=0)


def test_small_problems_run_single_threaded_and_the_count_is_restored():
    torch.set_num_threads(2)
    with threads.for_size(10) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), threads.for_size(10):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == 2
    with threads.for_size(threads.SMALL) as n:
        assert n == 2 == torch.get_num_threads()
    with pytest.raises(ValueError, match="numel"), threads.for_size(-1):
        pass


@pytest.mark.slow
@pytest.mark.parametrize("flow", TWINS)
def test_float64_within_1e12_after_a_long_run(flow):
    records = verify("float64", _steps(flow, 1000), flows=[flow])
    worst = max(records, key=lambda r: r["max_rel_err"])
    assert all(r["ok"] for r in records), worst
    assert worst["max_rel_err"] <= 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("flow", TWINS)
def test_float32_is_bit_for_bit(flow):
    """The rate expressions apply torch's own ops in torch's order, and the bias-correction
    clocks are evaluated as torch does, so every float32 case is bitwise identical."""
    records = verify("float32", _steps(flow, 200), flows=[flow])
    assert [r["options"] for r in records if not r["bitwise"]] == []


def test_verify_cli_json(capsys):
    assert cli.main(["verify", "--dtype", "float64", "--steps", "3", "--json",
                     "--flow", "sgd", "--flow", "muon"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) >= 40
    for r in records:
        assert {"flow", "options", "dtype", "steps", "max_abs_err", "max_rel_err",
                "bitwise"} <= set(r)
        assert r["dtype"] == "float64" and r["steps"] == 3


def test_verify_cli_fails_on_mismatch(monkeypatch, capsys):
    import fluxode.verify as v

    real = v.run_case

    def broken(case, dtype, steps, seed=0):
        rec = real(case, dtype, steps, seed)
        if case.flow == "sgd":
            rec["max_rel_err"] = 1.0
        return rec
    monkeypatch.setattr(v, "run_case", broken)
    assert cli.main(["verify", "--steps", "2", "--flow", "sgd", "--flow", "adam"]) == 1
    out = capsys.readouterr()
    assert "BAD" in out.out and "beyond tolerance" in out.err


def test_verify_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dtype"):
        verify("float16", 10)
    with pytest.raises(ValueError, match="steps"):
        verify("float64", 0)


def test_run_case_detects_a_real_difference(monkeypatch):
    """A fluxode side that is off by one part in 1e9 in lr must fail (the check is not vacuous)."""
    import fluxode.verify as v
    from fluxode.optim import FlowOptimizer

    def off(params, flow, lr, **kw):
        return FlowOptimizer(params, flow, lr=lr * (1 + 1e-9), **kw)
    case = v.Case("adam", {})
    assert v.run_case(case, torch.float64, 50)["bitwise"]
    monkeypatch.setattr(v, "FlowOptimizer", off)
    rec = v.run_case(case, torch.float64, 50)
    assert not rec["bitwise"] and rec["max_rel_err"] > 1e-12


def test_a_clock_kept_as_a_number_steps_as_a_tensor_clock_does():
    """The generic Euler step moves a clock held as a Python number to the value
    (``rates.Clock.euler``, c = 1 - βᵏ) that a 0-d tensor clock gets in place, and every
    other state the same, bit for bit (Adam, float64, two tensors sharing one ``blocks()``,
    as ``FlowOptimizer`` steps a group)."""
    from fluxode.discretize import euler_step_

    flow = FLOWS["adam"](lr=1e-2)
    clocks = [v.name for v in flow.variables() if v.is_clock]
    assert clocks == ["c1", "c2"]
    torch.manual_seed(0)
    Ws = [torch.randn(3, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    tensors = [flow.init(W.clone()) for W in Ws]
    numbers = [{n: float(x) if n in clocks else x.clone() for n, x in S.items()}
               for S in tensors]
    blocks = flow.blocks()
    for k in range(4):
        for St, Sn in zip(tensors, numbers):
            g = torch.randn_like(St["W"])
            euler_step_(flow, float(k), St, g)
            euler_step_(flow, float(k), Sn, g, blocks=blocks)
            for n in clocks:
                assert type(Sn[n]) is float and Sn[n] == float(St[n]) == 1 - flow.betas[
                    clocks.index(n)] ** (k + 1)
            assert all(torch.equal(St[n], Sn[n]) for n in St if n not in clocks)
            assert not torch.equal(St["W"], Ws[0] if St is tensors[0] else Ws[1])


@pytest.mark.parametrize("flow", ["adam", "nadam", "asgd"])
def test_a_discrete_step_creates_no_clock_tensors_after_the_first(flow, monkeypatch):
    """The group's step dicts are built once (``_Book.steppers``): closed-form clocks (Adam's
    c₁, c₂) are Python numbers, others (NAdam's μ-product, ASGD's η, μ) float64 0-d tensors
    kept and refilled, so a later step makes no float64 scalar tensor (the flows' own rates
    still round through torch's float32 scalar dtype, as torch does); the steps stay
    torch's."""
    from torch import nn

    from fluxode.optim import FlowOptimizer

    torch.manual_seed(0)
    nets = [nn.Linear(3, 2).double() for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [FLOWS[flow](lr=1e-2).reference_optimizer(nets[0].parameters()),
            FlowOptimizer(nets[1].parameters(), flow, lr=1e-2)]
    x = torch.randn(4, 3, dtype=torch.float64)

    made, real = [], torch.tensor

    def step(count: bool):
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            net(x).square().sum().backward()
            if count and opt is opts[1]:  # fluxode's step only
                monkeypatch.setattr(torch, "tensor",
                                    lambda *a, **k: made.append(k.get("dtype")) or real(*a, **k))
            opt.step()
            monkeypatch.setattr(torch, "tensor", real)
    step(False)
    for _ in range(5):
        step(True)
    assert torch.float64 not in made
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b)
