"""Solver overhead of fluxode's flat-state integration vs the same ODE as a tuple of tensors.

An MLP (64 → 256 → 256 → 256 → 10, ≈ 150k parameters) on the digits training set (full
batch, float32), heavy-ball momentum (state W, b), torchdiffeq's fixed-step ``rk4``. Two
ways to hand the ODE to torchdiffeq, with the same gradient oracle:

    flat   fluxode.integrate: one buffer y = [W | b], the field writes through views
    tuple  a tuple of per-parameter tensors (W₁…W_P, b₁…b_P); the field loops over
           parameters and torchdiffeq concatenates the returned tuple on every call

Overhead = (integration time - NFE × one gradient evaluation) / (NFE × one gradient
evaluation). Measured twice: end to end with the real oracle, and isolated with an oracle
that returns a precomputed gradient (so the solver's own cost is not buried in timing noise).
Everything is measured in the same run; the best of ``--repeats`` is kept.

    PYTHONPATH=. python benchmarks/bench_integration.py [--repeats 3] [--steps 20] [--json F]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchdiffeq

from fluxode import io, make_flow
from fluxode.discretize import vector_field
from fluxode.integrate import initial_state, integrate
from fluxode.problems import classification


class Cached:
    """The same problem, but grad(W) returns a precomputed gradient (a copy)."""

    def __init__(self, problem):
        self.p, self.g = problem, problem.grad(problem.x0())

    def __getattr__(self, name):
        return getattr(self.p, name)

    def grad(self, W, tau=0.0):
        return self.g.clone()

    def grads(self, Ws):
        return [g.view(s).clone() for g, s in zip(self.g.split(self.p.sizes), self.p.shapes)]


def tuple_grads(problem, Ws):
    """Per-parameter gradients from per-parameter tensors (no flat vector anywhere)."""
    leaves = [w.detach().requires_grad_(True) for w in Ws]
    with torch.enable_grad():
        x, y = problem.batches[0]
        out = torch.func.functional_call(problem.model, dict(zip(problem.names, leaves)), (x,))
        return list(torch.autograd.grad(problem.loss_fn(out, y), leaves))


def run_tuple(flow, problem, T, step, grads):
    P = len(problem.names)
    S0, _, _ = initial_state(flow, problem.p if isinstance(problem, Cached) else problem,
                             problem.x0())
    vecs = ("W", *flow.vectors)
    y0 = tuple(t.view(s).clone() for name in vecs
               for t, s in zip(S0[name].split(problem.sizes), problem.shapes))
    y0 = y0 + tuple(S0[c].reshape(1).clone() for c in flow.clocks)
    nfe = [0]

    def f(t, ys):
        nfe[0] += 1
        tau = float(t)
        gs = grads(ys[:P])
        clocks = {c: ys[len(vecs) * P + i].view(()) for i, c in enumerate(flow.clocks)}
        out = [None] * len(ys)
        for j in range(P):
            S = {name: ys[i * P + j] for i, name in enumerate(vecs)} | clocks
            rates = vector_field(flow, tau, S, gs[j])
            for i, name in enumerate(vecs):
                out[i * P + j] = rates[name]
            if j == 0:
                for i, c in enumerate(flow.clocks):
                    out[len(vecs) * P + i] = rates[c].reshape(1)
        return tuple(out)

    t = torch.tensor([0.0, T], dtype=torch.float64)
    start = time.perf_counter()
    with torch.no_grad():
        sol = torchdiffeq.odeint(f, y0, t, method="rk4", options={"step_size": step})
    wall = time.perf_counter() - start
    return wall, nfe[0], torch.cat([w[-1].reshape(-1) for w in sol[:P]])


def best(fn, repeats):
    return min((fn() for _ in range(repeats)), key=lambda r: r[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20, help="rk4 steps (4 gradient calls each)")
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 256, 256],
                    help="hidden widths; e.g. --hidden $(printf '72 %.0s' {1..24}) for a deep "
                         "net with many small parameter tensors")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    problem = classification("digits", hidden=tuple(args.hidden), dtype=torch.float32)
    flow = make_flow("sgd", lr=0.05, momentum=0.9)
    step, T = 0.25, 0.25 * args.steps
    W = problem.x0()
    for _ in range(3):
        problem.grad(W)
    t_grad = min(_timed(lambda: problem.grad(W)) for _ in range(max(10, 4 * args.repeats)))
    cached = Cached(problem)
    t_cached = min(_timed(lambda: cached.grad(W)) for _ in range(20))

    def flat(p):
        def go():
            tr = integrate(flow, p, save_at=[0.0, T], method="rk4", step_size=step,
                           check_finite=True)
            return tr.stats["wall_time_s"], tr.stats["nfe"], tr.W[-1]
        return go

    rec = {"params": problem.dim, "tensors": len(problem.names), "samples": len(problem.batches[0][1]), "dtype": "float32",
           "flow": flow.name, "method": "rk4", "step_size": step, "T": T,
           "threads": torch.get_num_threads(), "grad_eval_ms": 1e3 * t_grad}
    runs = {
        "flat": best(flat(problem), args.repeats),
        "tuple": best(lambda: run_tuple(flow, problem, T, step,
                                        lambda Ws: tuple_grads(problem, Ws)), args.repeats),
        "flat_isolated": best(flat(cached), args.repeats),
        "tuple_isolated": best(lambda: run_tuple(flow, cached, T, step, cached.grads),
                               args.repeats),
    }
    agree = float((runs["flat"][2] - runs["tuple"][2]).abs().max())
    for name, (wall, nfe, _) in runs.items():
        base = nfe * (t_cached if name.endswith("isolated") else t_grad)
        rec[name] = {"wall_s": wall, "nfe": nfe,
                     "overhead_fraction": (wall - base) / (nfe * t_grad)}
    rec["flat_vs_tuple_max_abs_diff"] = agree
    for kind in ("", "_isolated"):
        rec[f"overhead_ratio_tuple_over_flat{kind}"] = (
            rec[f"tuple{kind}"]["overhead_fraction"] / rec[f"flat{kind}"]["overhead_fraction"])

    print(f"MLP {problem.dim} params in {len(problem.names)} tensors, {rec['samples']} samples, float32, {flow.name} flow, rk4 "
          f"h={step}, {args.steps} steps, {rec['threads']} threads")
    print(f"one gradient evaluation: {rec['grad_eval_ms']:.2f} ms")
    for name in runs:
        r = rec[name]
        print(f"  {name:<15} {r['wall_s']:.3f} s  nfe {r['nfe']}  overhead "
              f"{100 * r['overhead_fraction']:6.2f}% of gradient time")
    print(f"tuple/flat overhead ratio: end to end {rec['overhead_ratio_tuple_over_flat']:.2f}x, "
          f"isolated {rec['overhead_ratio_tuple_over_flat_isolated']:.2f}x "
          f"(final W agree to {agree:.1e})")
    if args.json:
        io.write_json(args.json, rec)
    return rec


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
