"""Thread policy: small problems run single-threaded.

torch splits an op over its intra-op threads once the op has a few tens of thousands of
elements; below that every op still pays the threads' hand-off, and on a busy machine a
thread that waits for a core stalls the whole op. Measured on this project's 2-core CPU,
shared with other processes (one Adam step plus the gradient of a diagonal quadratic of N
numbers, float64, 5 interleaved rounds, medians; 2 threads / 1 thread):

    N       2⁸    2¹⁰   2¹²   2¹⁴   2¹⁶   2¹⁸   2²⁰   2²²
    ratio   12.8  12.9  11.1  5.4   12.9  8.5   2.9   0.91

so the crossover lies between 2²⁰ and 2²²: ``SMALL`` = 2²¹. fluxode's commands and
``fluxode verify`` run problems of tens to thousands of numbers, so they run with one
thread; larger problems keep torch's setting.

    with threads.for_size(problem.x0().numel()):
        ...                       # one thread below SMALL, torch's setting otherwise
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

SMALL = 2 ** 21  # numbers (parameters, states): below this, one thread is faster


@contextmanager
def for_size(numel: int) -> Iterator[int]:
    """Run the block with 1 intra-op thread when ``numel`` < ``SMALL``, else unchanged;
    torch's thread count is restored on exit (also on error). Yields the count in use."""
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise ValueError(f"numel must be an integer in [0, inf), got {numel!r}")
    before = torch.get_num_threads()
    if numel >= SMALL or before == 1:
        yield before
        return
    torch.set_num_threads(1)
    try:
        yield 1
    finally:
        torch.set_num_threads(before)


def single() -> None:
    """Make this process single-threaded for good (a worker process of a parallel run)."""
    torch.set_num_threads(1)
