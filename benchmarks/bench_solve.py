"""The solve path against torchode and naive torchdiffeq, and the ODE optimizer against its
gradient evaluations (the code and its description: ``fluxode.engine.bench``).

    OMP_NUM_THREADS=1 python benchmarks/bench_solve.py [--rounds 5] [--sizes 3 5 6]
"""

from fluxode.engine.bench import main

if __name__ == "__main__":
    main()
