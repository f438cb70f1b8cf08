"""Count host syncs on CPU, by call site.

A host sync is an operation that needs a tensor's *value* on the host: on a GPU
it blocks Python until the device queue drains.  On CPU nothing blocks, so the
syncs are counted instead, with a ``TorchFunctionMode`` that sees every torch
call and records the ones that read values back::

    with count_syncs() as syncs:
        opt.step()
    syncs.assert_at_most(1, "one AdamW step")

A failed budget lists each call site (``file:line in function``, the first
frame outside torch) with its count and the operations seen there.

Counted: ``Tensor.__bool__`` (``if t:``, ``bool((a < b).any())``),
``__float__``/``__int__``/``__index__``/``__complex__``, ``item``, ``tolist``,
``numpy``/``__array__``, ``cpu``, ``__format__``/``__repr__``/``__str__``,
``nonzero``/``argwhere``/``masked_select``/``unique``/``bincount``
(data-dependent output shapes), ``torch.equal``/``allclose``/``is_nonzero``,
one-argument ``torch.where``, ``repeat_interleave`` with tensor repeats and
no ``output_size``, and indexing (``__getitem__``/``__setitem__``) with a
boolean mask.  Calls made inside a counted call (``float(t)`` calling
``item``) are not counted again: the mode is off while torch handles a call.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode

# Operations that always read a value back to the host.
_ALWAYS = frozenset({
    "__bool__", "__float__", "__int__", "__index__", "__complex__",
    "item", "tolist", "numpy", "__array__", "cpu",
    "__format__", "__repr__", "__str__",
    "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive",
    "bincount", "equal", "allclose", "is_nonzero",
})

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_THIS = os.path.abspath(__file__)


def _has_mask(index) -> bool:
    if isinstance(index, torch.Tensor):
        return index.dtype in (torch.bool, torch.uint8)
    if isinstance(index, (tuple, list)):
        return any(_has_mask(i) for i in index)
    return False


def _kind(func, args, kwargs) -> str | None:
    """The name of the sync ``func(*args, **kwargs)`` makes, or None."""
    name = getattr(func, "__name__", "")
    if name in _ALWAYS:
        return name
    if name in ("__getitem__", "__setitem__") and len(args) > 1 and _has_mask(args[1]):
        return name + "[mask]"
    if name == "where" and len(args) + len(kwargs) == 1:
        return "where(cond)"
    if name == "repeat_interleave" and "output_size" not in kwargs:
        reps = args[1] if len(args) > 1 else kwargs.get("repeats")
        if isinstance(reps, torch.Tensor) and reps.numel() > 1:
            return "repeat_interleave"
    return None


def _site(depth: int) -> str:
    """``file:line in function`` of the first ``depth`` frames outside torch and this file."""
    frame = sys._getframe(2)
    parts = []
    cwd = os.getcwd() + os.sep
    while frame is not None and len(parts) < depth:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith(_TORCH_DIR) and path != _THIS:
            shown = path[len(cwd):] if path.startswith(cwd) else path
            parts.append(f"{shown}:{frame.f_lineno} in {frame.f_code.co_name}")
        frame = frame.f_back
    return " <- ".join(parts) if parts else "<unknown>"


class SyncCounter(TorchFunctionMode):
    """Counts host syncs by call site while active (see the module docstring)."""

    def __init__(self, depth: int = 1):
        super().__init__()
        self.depth = depth
        self.by_site: Counter[str] = Counter()
        self.kinds: dict[str, Counter[str]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _kind(func, args, kwargs)
        if kind is not None:
            site = _site(self.depth)
            self.by_site[site] += 1
            self.kinds.setdefault(site, Counter())[kind] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.by_site.values())

    def reset(self) -> None:
        self.by_site.clear()
        self.kinds.clear()

    def report(self) -> str:
        if not self.by_site:
            return "no host syncs"
        lines = [f"{self.total} host sync(s):"]
        for site, n in self.by_site.most_common():
            ops = ", ".join(f"{k}×{c}" for k, c in self.kinds[site].most_common())
            lines.append(f"  {n:4d}  {site}  [{ops}]")
        return "\n".join(lines)

    __str__ = report

    def assert_at_most(self, budget: int, what: str = "the counted block") -> None:
        assert self.total <= budget, (
            f"{what}: {self.total} host syncs, budget {budget}\n{self.report()}")


@contextmanager
def count_syncs(depth: int = 1):
    """Context manager yielding a :class:`SyncCounter` that counts host syncs inside it.

    ``depth`` > 1 records that many frames per site (``a <- caller <- ...``)."""
    counter = SyncCounter(depth)
    with counter:
        yield counter
