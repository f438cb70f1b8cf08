"""The solve path against its peers, and the ODE optimizer against its gradient evaluations.

Solve. Gradient flow Ẇ = -η∇L on a diagonal quadratic L = ½Σ aᵢWᵢ² (float64, aᵢ ∈ [1, 10],
η = 0.1, τ ∈ [0, 20], dopri5, rtol 1e-6, atol 1e-8) at N = 10³, 10⁵, 10⁶, three ways:

    fluxode    fluxode.integrate(flow="sgd", problem) — the default solver path
    torchode   torchode 1.0.1 Dopri5 + IntegralController on the field f(t, y) = -η a⊙y
    naive      torchdiffeq.odeint on the same field, called as a user would (this peer is
               in benchmarks/bench_solve.py: the package imports torchdiffeq in one module)

Cost per evaluation = wall time / NFE (the three take about the same NFE; each is printed).
Rounds are interleaved and the median kept (the machine is shared). Ratio = fluxode / peer.

ODE optimizer. An MLP 784→512→512→10 (float32, batch 128, random data, cross-entropy),
``ODEOptimizer`` (AdamW flow) with rk4 (one step = 4 gradient evaluations) and dopri5, each
with the reference field (``backend="reference"``, the default) and the fused one
(``backend="auto"``: ``fluxode.kernels.adam_field``), in the same rounds; ratio =
step time / (NFE × one gradient evaluation: closure with zero_grad and backward). Extra
memory: the peak of tensor bytes allocated during the step above the peak of one closure
call, counted by a TorchDispatchMode that follows every storage an op allocates until it
is freed (CPU has no allocator statistics), in units of the state (W and the flow's
variables) — target ≤ (stages + 2) × state; the step measured starts without the stage
buffers an optimizer keeps between steps (``keep_stage_buffers``), which are printed
separately with the copy of W in the flat state. The floor printed beside the ratio is the
ratio an ideal step would reach that only streams the bytes the method must move, its field
fused with the stage combination after it (``traffic_floor``), at this machine's copy
bandwidth, measured in the same run.

    OMP_NUM_THREADS=1 python benchmarks/bench_solve.py [--rounds 5] [--sizes 3 5 6]
    OMP_NUM_THREADS=1 fluxode bench --solve [--rounds 5]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..integrate import integrate
from ..problems import Problem

ETA, T, RTOL, ATOL = 0.1, 20.0, 1e-6, 1e-8


class DiagonalQuadratic(Problem):
    """L(W) = ½ Σ aᵢ Wᵢ², aᵢ evenly spaced in [1, 10], W₀ = 1."""

    name = "diagonal-quadratic"

    def __init__(self, n: int):
        self.dim, self.dtype = n, torch.float64
        self.a = torch.linspace(1.0, 10.0, n, dtype=torch.float64)

    def loss(self, W):
        return 0.5 * (self.a * W * W).sum()

    def grad(self, W, tau=0.0):
        return self.a * W

    def x0(self):
        return torch.ones(self.dim, dtype=torch.float64)


def run_fluxode(p: DiagonalQuadratic):
    t = time.perf_counter()
    tr = integrate(_flow(), p, save_at=[0.0, T], method="dopri5", rtol=RTOL, atol=ATOL)
    return time.perf_counter() - t, tr.stats["nfe"], tr.W[-1]


def _flow():
    from ..flows import make_flow

    return make_flow("sgd", lr=ETA)


def run_torchode(p: DiagonalQuadratic):
    import torchode as to

    a = p.a[None]
    nfe = [0]

    def f(t, y):
        nfe[0] += 1
        return -ETA * a * y

    term = to.ODETerm(f)
    solver = to.AutoDiffAdjoint(to.Dopri5(term=term),
                                to.IntegralController(atol=ATOL, rtol=RTOL, term=term))
    y0 = p.x0()[None]
    t_eval = torch.tensor([[0.0, T]], dtype=torch.float64)
    t = time.perf_counter()
    with torch.no_grad():
        sol = solver.solve(to.InitialValueProblem(y0=y0, t_eval=t_eval))
    return time.perf_counter() - t, nfe[0], sol.ys[0, -1]


def solve_section(sizes, rounds, peers: dict | None = None):
    """Per-evaluation cost of fluxode and its peers (``peers``: more {name: runner(problem)
    → (wall, nfe, y(T))}, e.g. the naive torchdiffeq call of benchmarks/bench_solve.py —
    the package itself imports torchdiffeq in one module only)."""
    runs = {"fluxode": run_fluxode, "torchode": run_torchode, **(peers or {})}
    rows = []
    for e in sizes:
        p = DiagonalQuadratic(10 ** e)
        exact = torch.exp(-ETA * p.a * T)
        per, nfes, errs = {k: [] for k in runs}, {}, {}
        for r in range(rounds + 1):  # round 0 warms up
            for name, fn in runs.items():
                wall, nfe, yT = fn(p)
                if r:
                    per[name].append(wall / nfe)
                nfes[name] = nfe
                errs[name] = float((yT - exact).abs().max())
        med = {k: statistics.median(v) for k, v in per.items()}
        rows.append((e, med, nfes, errs))
        costs = "  ".join(f"{k} {1e6 * v:9.1f} µs (nfe {nfes[k]})" for k, v in med.items())
        ratios = "  ".join(f"fluxode/{k} {med['fluxode'] / v:.2f}" for k, v in med.items()
                           if k != "fluxode")
        print(f"N=1e{e}: per evaluation  {costs}  ratio {ratios}  max|err| "
              + " ".join(f"{k} {v:.1e}" for k, v in errs.items()), flush=True)
    return rows


# --- the ODE optimizer ------------------------------------------------------------------------
class PeakBytes(TorchDispatchMode):
    """Live and peak bytes of the storages that ops allocate while active (an op's result
    whose storage is not one of its inputs' — views, in-place and out= results are not
    new memory; each storage counted once, released when it is freed)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.now = self.peak = 0

    def _sweep(self):
        for k in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.now -= self.live.pop(k)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._sweep()
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, Tensor)}  # views, in-place and out= results: no new memory
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and t.device.type == "cpu":
                st = t.untyped_storage()
                key = st.data_ptr()
                if key and key not in self.live and key not in inputs:
                    self.live[key] = (StorageWeakRef(st), st.nbytes())
                    self.now += st.nbytes()
                    self.peak = max(self.peak, self.now)
        return out


def _mlp(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 10))
    x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))
    return model, x, y


def _field_alone(opts, closure, rounds):
    """Median times of one field evaluation of each optimizer's ODE step (gradient gather
    included) and of one closure, interleaved: ({name: field time}, closure time)."""
    from ..optim import _Plan

    closure()
    plans = {}
    for name, opt in opts.items():
        raw = {p: p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None}
        plan = _Plan(opt, raw, 1.0)
        plans[name] = (plan, raw, torch.empty_like(plan.y0))
    field, grad = {name: [] for name in opts}, []
    for _ in range(2 * rounds + 3):
        for name, (plan, raw, out) in plans.items():
            t = time.perf_counter()
            with torch.no_grad():
                for flow, layout, units, seg, base, bufs in plan.groups:
                    gs = plan._unit_grads(flow, units, bufs, raw)
                    layout.field_into([b + 0.5 for b in base], plan.y0[seg], gs, out[seg])
            field[name].append(time.perf_counter() - t)
        t = time.perf_counter()
        closure()
        grad.append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in field.items()}, statistics.median(grad)


def traffic_floor(method: str, nfe: float, state: int, params: int) -> float:
    """Bytes an ideal ODE step must stream for ``nfe`` evaluations of an elementwise field on
    a flat state of ``state`` bytes (``params``: bytes of W, and of g): the field fused with
    the stage combination that follows it. Evaluation i reads its stage input yᵢ and g
    (S + P), keeps kᵢ in registers for the next combination — the next stage input
    y₀ + Δτ Σⱼ Aᵢⱼkⱼ, or y₁ after the last stage (unless FSAL), and the error estimate
    (adaptive, with the last stage) — which reads y₀ (but after the first evaluation, whose
    input is y₀), the earlier kⱼ it uses, and writes one state; kᵢ is written only if a
    later combination needs it. But for the step's first, each evaluation puts W into the
    model (read and write, 2P). Stages and weights are the method's tableau; the error
    estimate's tolerance reads y₀ and y₁ again (2S)."""
    from .solve import _tableau

    tab = _tableau(method)
    s = tab.stages
    # combination after evaluation i: row i of A (the next stage input); after the last, b
    # (y₁; FSAL: the last stage input was y₁ already) and the error weights e
    combos = [list(row) for row in tab.A] + [[] if tab.fsal else list(tab.b)]
    if tab.e is not None:
        combos[-1] = [x or y for x, y in itertools.zip_longest(combos[-1], tab.e, fillvalue=0)]
    per_step = 0.0  # in units of the state
    for i in range(s):
        uses = [j for j, a in enumerate(combos[i]) if a != 0]
        later = any(len(c) > i and c[i] != 0 for c in combos[i + 1:])
        per_step += 1 + later  # read yᵢ; write kᵢ if a later combination reads it
        if uses:
            earlier = sum(1 for j in uses if j < i)
            per_step += (i > 0) + earlier + 1  # read y₀ (yᵢ itself when i = 0), kⱼ; write
    if tab.e is not None:
        per_step += 2
    evals = s - 1 if tab.fsal else s
    solver_steps = nfe / evals
    return solver_steps * per_step * state + nfe * params + 2 * params * max(nfe - 1, 0)


def _copy_bandwidth(nbytes: int, rounds: int) -> float:
    """Bytes per second of a copy between two buffers of ``nbytes`` (read + write counted)."""
    x = torch.ones(nbytes // 4)
    y = torch.empty_like(x)
    times = []
    for _ in range(2 * rounds + 3):
        t = time.perf_counter()
        y.copy_(x)
        times.append(time.perf_counter() - t)
    return 2 * nbytes / statistics.median(times)


def optimizer_section(rounds, steps=3, backends=("reference", "auto")):
    from ..ode_optimizer import ODEOptimizer

    model, x, y = _mlp()
    n = sum(p.numel() for p in model.parameters())

    def closure():
        for p in model.parameters():
            p.grad = None
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opts = {(m, be): ODEOptimizer(model.parameters(), "adamw", method=m, lr=1e-4, backend=be)
            for be in backends for m in ("rk4", "dopri5")}
    grad_t, step_t, nfe = [], {m: [] for m in opts}, {}
    for r in range(rounds + 1):
        t = time.perf_counter()
        for _ in range(steps):
            closure()
        g = (time.perf_counter() - t) / steps
        for m, opt in opts.items():
            t = time.perf_counter()
            k = 0
            for _ in range(steps):
                opt.step(closure)
                k += opt.last_nfe
            if r:
                step_t[m].append((time.perf_counter() - t) / steps)
            nfe[m] = k / steps
        if r:
            grad_t.append(g)
    tg = statistics.median(grad_t)
    field_t, grad2_t = _field_alone({be: opts["rk4", be] for be in backends}, closure, rounds)
    for be, ft in field_t.items():
        print(f"the AdamW field alone (Layout.field_into on the flat state, backend {be!r}): "
              f"{1e3 * ft:.2f} ms per evaluation = {ft / grad2_t:.2f} × one gradient "
              f"({1e3 * grad2_t:.2f} ms, interleaved)", flush=True)
    state_bytes = {}
    for m, opt in opts.items():
        per_param = 0
        for p in model.parameters():
            st = opt.state[p]
            per_param += p.numel() * p.element_size() + sum(
                v.numel() * v.element_size() for v in st.values()
                if isinstance(v, Tensor) and v.shape == p.shape)
        state_bytes[m] = per_param
    with PeakBytes() as base:
        closure()
    bandwidth = _copy_bandwidth(next(iter(state_bytes.values())), rounds)
    out = {}
    for m, opt in opts.items():
        opt.__dict__.pop("_ode_work", None)  # the kept stage buffers are allocated in the step
        with PeakBytes() as mem:
            opt.step(closure)
        extra = max(0, mem.peak - base.peak)
        work = opt.__dict__.get("_ode_work", {})
        kept = sum(t.untyped_storage().nbytes() for t in [work.get("K"), *work.get("free", [])]
                   if t is not None) + sum(p.numel() * p.element_size()
                                           for p in model.parameters())  # W inside the flat state
        stages = {"rk4": 4, "dopri5": 7}[m[0]]
        ts = statistics.median(step_t[m])
        ratio = ts / (nfe[m] * tg)
        floor = 1 + traffic_floor(m[0], nfe[m], state_bytes[m], 4 * n) / bandwidth / (
            nfe[m] * tg)
        out[m] = (ts, nfe[m], ratio, extra / state_bytes[m], floor)
        print(f"ODEOptimizer adamw {m[0]} backend {m[1]!r}: step {1e3 * ts:.2f} ms, nfe {nfe[m]:.1f}, one gradient "
              f"{1e3 * tg:.2f} ms → step / (nfe × gradient) = {ratio:.3f} (target "
              f"{1.2 if m[0] == 'rk4' else 1.3}; memory-traffic floor {floor:.2f} at "
              f"{bandwidth / 1e9:.1f} GB/s); extra peak memory {extra / 2**20:.1f} MiB = "
              f"{extra / state_bytes[m]:.2f} × state ({state_bytes[m] / 2**20:.1f} MiB; target "
              f"≤ {stages + 2}); kept between steps {kept / 2**20:.1f} MiB = "
              f"{kept / n:.0f} B/param (stage buffers and W in the flat state)", flush=True)
    print(f"MLP 784→512→512→10, {n} parameters, float32, batch 128, {torch.get_num_threads()} "
          "thread(s)")
    return out


def main(argv=None, peers: dict | None = None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[3, 5, 6],
                    help="log10 of the state sizes")
    ap.add_argument("--skip-optimizer", action="store_true")
    ap.add_argument("--skip-solve", action="store_true")
    args = ap.parse_args(argv)
    if not args.skip_solve:
        solve_section(args.sizes, args.rounds, peers)
    if not args.skip_optimizer:
        optimizer_section(args.rounds)
