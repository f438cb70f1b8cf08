"""Check the discretizer against the installed torch.optim, case by case.

Every registered flow with a reference (torch.optim's twin, an installed reference package's,
or one the flow reaches itself: Muon) runs through each of its option combinations
(``Flow.option_grid``), plus LR schedules and gradient clipping (against ``clip_grad_norm_``), on a small
``nn.Module`` with odd shapes and a parameter that never gets a gradient, its parameters
stored in shapes the flow takes (``Flow.param_dims``: matrices for Muon). fluxode's side is
``FlowOptimizer`` at h = 1; the reference side is ``Flow.reference_optimizer`` (torch's
single-tensor implementation, ``foreach=False``). ``maximize`` cases maximize the negated
loss, so both sides stay bounded. Parameters and every state tensor the twin keeps (under its
own names: ``exp_avg``, ``momentum_buffer``, …) are compared.

Schedules: torch's schedulers update the lr recursively, which differs from the closed form
η(τ) in the last bits, and such differences can grow along a trajectory. So a schedule case
drives *both* optimizers with the same torch scheduler (FlowOptimizer reads ``group["lr"]``
as η on that step) and separately checks that the flow's own η(k) equals the lr torch used at
every step k (``schedule_max_rel_err``, within 1e-12).

Cost: the net has 62 numbers, so each case runs single-threaded (``fluxode.threads``), and
``verify`` spreads the cases over worker processes when there is enough work.
About half of a case's time is torch's own side (forward, backward, the reference step).
"""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from . import schedules, threads
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


def has_reference(cls) -> bool:
    """True when the flow's ``reference_optimizer`` can be built, on a parameter of a shape the
    flow takes (``Flow.param_dims``): a torch.optim twin, an installed reference package, or a
    reference the flow reaches itself (Muon: torch.optim.Muon, 2-D parameters only)."""
    probe = nn.Parameter(torch.zeros(stored_shape((2,), cls.param_dims)))
    try:  # configured as verify's first case of this flow
        cls(lr=LR, **cls.option_grid()[0]).reference_optimizer([probe])
    except (ValueError, ImportError):
        return False
    return True


def references() -> list[str]:
    """Names of the registered flows with a reference to verify against."""
    return [name for name, cls in FLOWS.items() if has_reference(cls)]


def cases() -> list[Case]:
    out = []
    for name in references():
        cls = FLOWS[name]
        out += [Case(name, opts) for opts in cls.option_grid()]
        out += [Case(name, {}, schedule=s) for s in SCHEDULES]
        out.append(Case(name, {}, max_grad_norm=0.05))
    return out


# the verify net's parameters, in registration order: name → shape (as torch's layers make them)
SHAPES = {"w1": (5, 6), "b1": (5,), "scale": (1, 5, 1), "w2": (3, 5), "b2": (3,),
          "unused": (2, 2)}
NET_SIZE = sum(math.prod(s) for s in SHAPES.values())  # 62 numbers: runs single-threaded


def stored_shape(shape: tuple[int, ...], dims: tuple[int, ...] | None) -> tuple[int, ...]:
    """``shape`` as a flow that takes only ``dims``-dimensional parameters (``Flow.param_dims``,
    None: any) can hold it: unchanged if allowed, else the same numbers in the nearest allowed
    number of dimensions (leading sizes merged, or 1s prepended)."""
    if dims is None or len(shape) in dims:
        return tuple(shape)
    allowed = [d for d in dims if d >= 1]
    if not allowed:
        raise ValueError(f"param_dims must allow a number of dimensions ≥ 1, got {dims!r}")
    d = min(allowed, key=lambda d: (abs(d - len(shape)), -d))
    if d > len(shape):
        return (1,) * (d - len(shape)) + tuple(shape)
    cut = len(shape) - d + 1
    return (math.prod(shape[:cut]), *shape[cut:])


class _Net(nn.Module):
    """y = W₂·(tanh(W₁x + b₁) ⊙ scale) + b₂: odd shapes, a 3-D parameter (``scale``), and
    ``unused``, which never receives a gradient. Each parameter is stored in a shape the flow
    takes (``stored_shape`` of ``Flow.param_dims``: Muon gets matrices only) and viewed back
    in ``forward``; the values are torch's ``nn.Linear`` initialization either way."""

    def __init__(self, dims: tuple[int, ...] | None = None):
        super().__init__()
        l1, l2 = nn.Linear(6, 5), nn.Linear(5, 3)
        values = {"w1": l1.weight, "b1": l1.bias, "scale": torch.linspace(0.5, 1.5, 5),
                  "w2": l2.weight, "b2": l2.bias, "unused": torch.ones(2, 2)}
        self.views = {}
        for name, shape in SHAPES.items():
            stored = stored_shape(shape, dims)
            self.register_parameter(name, nn.Parameter(values[name].detach().reshape(stored)))
            if stored != shape:
                self.views[name] = shape

    def _p(self, name: str):
        p = getattr(self, name)
        return p.view(self.views[name]) if name in self.views else p

    def forward(self, x):
        h = torch.tanh(F.linear(x, self._p("w1"), self._p("b1"))).unsqueeze(-1)
        h = h * self._p("scale")
        return F.linear(h.squeeze(-1), self._p("w2"), self._p("b2"))


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


def reference_side(case: Case, dtype: torch.dtype, seed: int = 0):
    """The reference half of a case: the verify net (seeded, with the data drawn first), the
    twin optimizer on it, the torch scheduler of the case's schedule (None for constant), the
    schedule η itself, and the case's loss ±MSE(net(x), y) (``maximize`` cases maximize the
    negated loss, so both sides stay bounded)."""
    cls = FLOWS[case.flow]
    torch.manual_seed(seed)
    x = torch.randn(64, 6, dtype=dtype)
    y = torch.randn(64, 3, dtype=dtype)
    ref = _Net(cls.param_dims).to(dtype)
    torch_opt = cls(lr=LR, **case.options).reference_optimizer(ref.parameters())
    eta = schedules.parse(case.schedule)
    sign = -1.0 if case.options.get("maximize") else 1.0

    def loss(net):
        return sign * F.mse_loss(net.forward(x), y)

    return ref, torch_opt, torch_scheduler(eta, torch_opt), eta, loss


def run_case(case: Case, dtype: torch.dtype, steps: int, seed: int = 0) -> dict:
    """Run torch and fluxode side by side; return the comparison record.

    Each step both optimizers get the gradient of (±) the MSE at their own parameters. While
    the two nets' parameters are bit for bit equal, their gradients are too (the same
    deterministic computation on the same numbers), so it is computed once and copied; from
    the first step they differ on, both losses go through one backward pass
    (d(L₁ + L₂)/dθ₁ = dL₁/dθ₁, exactly; no more comparisons). The gradients are cleared as
    both optimizers' ``zero_grad()`` does (set to None)."""
    ref, torch_opt, sched, eta, loss = reference_side(case, dtype, seed)
    mine = _Net(FLOWS[case.flow].param_dims).to(dtype)
    mine.load_state_dict(ref.state_dict())
    flux_opt = FlowOptimizer(mine.parameters(), case.flow, lr=LR,
                             max_grad_norm=case.max_grad_norm, **case.options)
    flux_sched = torch_scheduler(eta, flux_opt)
    ref_params, my_params = list(ref.parameters()), list(mine.parameters())

    sched_err, same = 0.0, True
    both = ref_params + my_params
    for k in range(steps):
        for p in both:
            p.grad = None
        same = same and all(map(torch.equal, ref_params, my_params))
        if same:
            loss(ref).backward()
            for a, b in zip(ref_params, my_params):
                b.grad = None if a.grad is None else a.grad.clone()
        else:
            (loss(ref) + loss(mine)).backward()
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


# Parallel runs: a spawned worker imports torch and fluxode (≈ 2-3 s of one core), and a case
# step costs ≈ 0.5-2 ms on one core, so processes pay off from about 10⁴ case-steps.
PARALLEL_MIN_WORK = 10_000  # cases × steps


class CaseError(RuntimeError):
    """A verify case that raised; the message names the case."""


def _run(case: Case, dtype: str, steps: int) -> dict:
    try:
        rec = run_case(case, DTYPES[dtype], steps)
    except Exception as err:
        raise CaseError(f"case {case.flow} [{case.label()}] failed: {type(err).__name__}: "
                        f"{err}") from err
    rec["ok"] = (rec["max_rel_err"] <= tolerance(DTYPES[dtype])
                 and rec.get("schedule_max_rel_err", 0.0) <= 1e-12)
    return rec


def _worker_run(task) -> dict:
    """One case in a worker process (single-threaded). The flow class travels with the case,
    so a flow registered at run time (not by an import) is known to the worker too."""
    case, cls, dtype, steps = task
    if FLOWS.get(case.flow) is not cls:
        FLOWS.register(cls, case.flow, replace=True)
    return _run(case, dtype, steps)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (macOS, Windows)
        return os.cpu_count() or 1


def _picklable(obj) -> bool:
    try:
        pickle.dumps(obj)
    except (pickle.PicklingError, AttributeError, TypeError):  # e.g. a class made in a function
        return False
    return True


def verify(dtype: str = "float64", steps: int = 1000, flows: list[str] | None = None,
           progress=None, workers: int | None = None) -> list[dict]:
    """Every case (of ``flows``, default all with a reference) for ``steps`` steps; one record
    per case, in ``cases()`` order, with ``ok`` set against ``tolerance``.

    ``workers``: processes to run the cases in (each single-threaded; the records are the
    same as a serial run's). None: the available cores when the work (cases × steps) is at
    least ``PARALLEL_MIN_WORK`` and every flow class can be sent to a worker, else 1 (in this
    process, single-threaded as ``threads.for_size`` decides). ``progress(rec)`` is called in
    order as records arrive."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer in [1, inf), got {steps!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ValueError(f"workers must be an integer in [1, inf) or None, got {workers!r}")
    if flows is not None:
        twins = references()
        for name in flows:
            if name not in FLOWS:
                raise ValueError(f"flow must be one of {sorted(FLOWS)}, got {name!r}")
            if name not in twins:
                raise ValueError(f"flow {name!r} names no installed reference twin to "
                                 f"verify against; flows with one: {', '.join(twins)}")
    todo = [c for c in cases() if flows is None or c.flow in flows]
    classes = {c.flow: FLOWS[c.flow] for c in todo}
    if workers is None:
        big = len(todo) * steps >= PARALLEL_MIN_WORK
        workers = available_cores() if big and _picklable(list(classes.values())) else 1
    workers = min(workers, len(todo)) or 1
    if workers == 1:
        records = []
        with threads.for_size(NET_SIZE):
            for case in todo:
                records.append(_run(case, dtype, steps))
                if progress:
                    progress(records[-1])
        return records
    return _parallel(todo, classes, dtype, steps, workers, progress)


def _parallel(todo, classes, dtype, steps, workers, progress) -> list[dict]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=threads.single)
    records = []
    try:
        tasks = [(c, classes[c.flow], dtype, steps) for c in todo]
        for rec in pool.map(_worker_run, tasks):
            records.append(rec)
            if progress:
                progress(rec)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return records
