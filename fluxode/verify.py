"""Check the discretizer against the installed torch.optim, case by case.

Every registered flow with a reference twin (torch.optim's, or an installed reference package's)
runs through each of its option combinations
(``Flow.option_grid``), plus LR schedules and gradient clipping (against ``clip_grad_norm_``), on a small
``nn.Module`` with odd shapes and a parameter that never gets a gradient. fluxode's side is
``FlowOptimizer`` at h = 1; the reference side is ``Flow.reference_optimizer`` (torch's
single-tensor implementation, ``foreach=False``). ``maximize`` cases maximize the negated
loss, so both sides stay bounded. Parameters and every state tensor the twin keeps (under its
own names: ``exp_avg``, ``momentum_buffer``, …) are compared.

Schedules: torch's schedulers update the lr recursively, which differs from the closed form
η(τ) in the last bits, and such differences can grow along a trajectory. So a schedule case
drives *both* optimizers with the same torch scheduler (FlowOptimizer reads ``group["lr"]``
as η on that step) and separately checks that the flow's own η(k) equals the lr torch used at
every step k (``schedule_max_rel_err``, within 1e-12).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from . import schedules
from .flows import FLOWS
from .optim import FlowOptimizer

DTYPES = {"float32": torch.float32, "float64": torch.float64}
LR = 1e-2


@dataclass(frozen=True)
class Case:
    flow: str
    options: dict = field(default_factory=dict)
    schedule: str | None = None
    max_grad_norm: float | None = None

    def label(self) -> str:
        parts = [f"{k}={v}" for k, v in self.options.items()]
        if self.schedule:
            parts.append(f"schedule={self.schedule}")
        if self.max_grad_norm is not None:
            parts.append(f"max_grad_norm={self.max_grad_norm}")
        return ", ".join(parts) or "defaults"


SCHEDULES = ("linear:400:0.1", "cosine:500:0.001", "warmup:50:cosine:500")


def cases() -> list[Case]:
    out = []
    for name, cls in FLOWS.items():
        if cls.twin() is None:
            continue
        out += [Case(name, opts) for opts in cls.option_grid()]
        out += [Case(name, {}, schedule=s) for s in SCHEDULES]
        out.append(Case(name, {}, max_grad_norm=0.05))
    return out


class _Net(nn.Module):
    """Odd shapes, a 3-D parameter, and ``unused`` which never receives a gradient."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(6, 5)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 5).reshape(1, 5, 1))
        self.l2 = nn.Linear(5, 3)
        self.unused = nn.Parameter(torch.ones(2, 2))

    def forward(self, x):
        h = torch.tanh(self.l1(x)).unsqueeze(-1) * self.scale
        return self.l2(h.squeeze(-1))


def torch_scheduler(schedule: schedules.Schedule, opt: torch.optim.Optimizer):
    """The torch.optim.lr_scheduler that matches a fluxode schedule (None for constant)."""
    S = torch.optim.lr_scheduler
    if isinstance(schedule, schedules.Constant):
        return None
    if isinstance(schedule, schedules.Linear):
        return S.LinearLR(opt, schedule.start_factor, schedule.end_factor, schedule.total_steps)
    if isinstance(schedule, schedules.Cosine):
        return S.CosineAnnealingLR(opt, schedule.total_steps, schedule.eta_min)
    if isinstance(schedule, schedules.Warmup):
        warm = S.LinearLR(opt, schedule.start_factor, 1.0, schedule.warmup_steps)
        after = torch_scheduler(schedule.after, opt) or S.ConstantLR(opt, 1.0, 0)
        return S.SequentialLR(opt, [warm, after], milestones=[schedule.warmup_steps])
    raise ValueError(f"no torch scheduler for {schedule!r}")


def run_case(case: Case, dtype: torch.dtype, steps: int, seed: int = 0) -> dict:
    """Run torch and fluxode side by side; return the comparison record."""
    torch.manual_seed(seed)
    x = torch.randn(64, 6, dtype=dtype)
    y = torch.randn(64, 3, dtype=dtype)
    ref, mine = _Net().to(dtype), _Net().to(dtype)
    mine.load_state_dict(ref.state_dict())
    torch_opt = FLOWS[case.flow](lr=LR, **case.options).reference_optimizer(ref.parameters())
    eta = schedules.parse(case.schedule)
    sched = torch_scheduler(eta, torch_opt)
    flux_opt = FlowOptimizer(mine.parameters(), case.flow, lr=LR,
                             max_grad_norm=case.max_grad_norm, **case.options)
    flux_sched = torch_scheduler(eta, flux_opt)
    sign = -1.0 if case.options.get("maximize") else 1.0
    sched_err = 0.0
    for k in range(steps):
        for net, opt in ((ref, torch_opt), (mine, flux_opt)):
            opt.zero_grad()
            (sign * nn.functional.mse_loss(net(x), y)).backward()
        if case.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(ref.parameters(), case.max_grad_norm)
        used = torch_opt.param_groups[0]["lr"]
        sched_err = max(sched_err, abs(eta(LR, k) - used) / LR)
        torch_opt.step()
        flux_opt.step()
        if sched is not None:
            sched.step()
            flux_sched.step()
    abs_err, rel_err, bitwise = 0.0, 0.0, True
    pairs = list(zip(ref.parameters(), mine.parameters()))
    for a, b in list(pairs):  # the optimizer states too, under the twin's own names
        theirs, ours = torch_opt.state.get(a, {}), flux_opt.state.get(b, {})
        if not ours and a.grad is None:
            continue  # never stepped (torch's Adagrad fills its state up front)
        pairs += [(x, ours.get(k)) for k, x in theirs.items()
                  if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() > 0]
    for a, b in pairs:
        if b is None or a.shape != b.shape:
            abs_err = rel_err = float("inf")
            bitwise = False
            continue
        d = (a - b).abs().max().item()
        abs_err = max(abs_err, d)
        rel_err = max(rel_err, d / max(a.abs().max().item(), torch.finfo(dtype).tiny))
        bitwise &= torch.equal(a, b)
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            abs_err = rel_err = float("inf")
    rec = {"flow": case.flow, "options": case.label(), "dtype": str(dtype).removeprefix("torch."),
           "steps": steps, "max_abs_err": abs_err, "max_rel_err": rel_err, "bitwise": bitwise}
    if case.schedule:
        rec["schedule_max_rel_err"] = sched_err
    return rec


def tolerance(dtype: torch.dtype) -> float:
    """Relative error allowed after the run: 1e-12 in float64, a few hundred ulps in float32."""
    return 1e-12 if dtype == torch.float64 else 1e-4


def verify(dtype: str = "float64", steps: int = 1000, flows: list[str] | None = None,
           progress=None) -> list[dict]:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if steps < 1:
        raise ValueError(f"steps must be in [1, inf), got {steps}")
    if flows is not None:
        twins = sorted(n for n, c in FLOWS.items() if c.twin() is not None)
        for name in flows:
            if name not in FLOWS:
                raise ValueError(f"flow must be one of {sorted(FLOWS)}, got {name!r}")
            if name not in twins:
                raise ValueError(f"flow {name!r} names no installed reference twin to "
                                 f"verify against; flows with one: {', '.join(twins)}")
    todo = [c for c in cases() if flows is None or c.flow in flows]
    records = []
    for case in todo:
        rec = run_case(case, DTYPES[dtype], steps)
        rec["ok"] = (rec["max_rel_err"] <= tolerance(DTYPES[dtype])
                     and rec.get("schedule_max_rel_err", 0.0) <= 1e-12)
        records.append(rec)
        if progress:
            progress(rec)
    return records
