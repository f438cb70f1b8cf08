"""The solve path against torchode and naive torchdiffeq, and the ODE optimizer against its
gradient evaluations (the code and its description: ``fluxode.engine.bench``; the naive
torchdiffeq peer is here, outside the package, which imports torchdiffeq in one module).

    OMP_NUM_THREADS=1 python benchmarks/bench_solve.py [--rounds 5] [--sizes 3 5 6]
"""

import time

import torch

from fluxode.engine.bench import ATOL, ETA, RTOL, T, main


def run_naive(p):
    import torchdiffeq

    nfe = [0]

    def f(t, y):
        nfe[0] += 1
        return -ETA * p.a * y

    t = time.perf_counter()
    with torch.no_grad():
        sol = torchdiffeq.odeint(f, p.x0(), torch.tensor([0.0, T], dtype=torch.float64),
                                 method="dopri5", rtol=RTOL, atol=ATOL)
    return time.perf_counter() - t, nfe[0], sol[-1]


if __name__ == "__main__":
    main(peers={"naive": run_naive})
