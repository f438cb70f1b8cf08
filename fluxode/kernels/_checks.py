"""Argument checks and scalar preparation shared by every kernel backend.

Every public single-tensor kernel takes flat 1-D contiguous buffers on one device; the
multi-tensor (group) kernels take lists of contiguous tensors of any shape. W (the
parameters) may be float32, bfloat16, float16 or float64. The optimizer states of one W share
one dtype: the master dtype (``state_dtype_for``: float32, float64 for float64 W) or W's own
dtype (torch.optim's layout for bfloat16/float16 parameters); g is in W's dtype or the master
dtype. Low-precision buffers are computed in float32 and each stored buffer is rounded once
(round to nearest even). Bad input raises ValueError naming the parameter and its allowed
range.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

W_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
LOW = (torch.bfloat16, torch.float16)


def state_dtype_for(w: torch.Tensor) -> torch.dtype:
    """Compute/state dtype for parameters ``w``: float64 for float64 W, else float32."""
    return torch.float64 if w.dtype == torch.float64 else torch.float32


def check_buffers(w: torch.Tensor, named_states: Sequence[tuple[str, Any]], *,
                  w_name: str = "W", flat: bool = True) -> None:
    """Validate W and its same-sized state buffers (name, tensor-or-None pairs; the name "g"
    is the gradient). ``flat``: W must be 1-D (the single-tensor kernels)."""
    if not isinstance(w, torch.Tensor):
        raise ValueError(f"{w_name} must be a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in W_DTYPES:
        raise ValueError(f"{w_name}.dtype must be one of float32, bfloat16, float16, float64; "
                         f"got {w.dtype}")
    if not w.is_contiguous() or (flat and w.dim() != 1):
        raise ValueError(f"{w_name} must be a contiguous {'1-D ' if flat else ''}buffer (flatten "
                         f"parameter lists with fluxode.kernels.flatten); got shape "
                         f"{tuple(w.shape)}")
    sdt = state_dtype_for(w)
    state_dt = None  # the dtype the states share (the first state's)
    for name, t in named_states:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.shape != w.shape:
            raise ValueError(f"{name} must have the same shape as {w_name} {tuple(w.shape)}; "
                             f"got {tuple(t.shape)}")
        shared = name != "g" and state_dt is not None
        allowed = (state_dt,) if shared else (sdt, w.dtype)
        if t.dtype not in allowed:
            what = " or ".join(str(d) for d in dict.fromkeys(allowed))
            why = " (the dtype of the other states)" if shared else ""
            raise ValueError(f"{name}.dtype must be {what} for {w_name}.dtype {w.dtype}{why}; "
                             f"got {t.dtype}")
        if name != "g":
            state_dt = t.dtype
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
        if t.device != w.device:
            raise ValueError(f"{name} is on {t.device} but {w_name} is on {w.device}")


def check_group(ws: Sequence[torch.Tensor], named_lists: Sequence[tuple[str, Any]]) -> list:
    """Validate a multi-tensor group: ``ws`` a non-empty list of parameter tensors (any shape,
    contiguous), ``named_lists`` (name, list-or-None) of buffers like them, one per tensor
    (the name "g": the gradients). All on one device. Returns the group's parts
    [((W dtype, g dtype, state dtype), indices or None for all)], one per dtype combination
    (each is one launch)."""
    if not isinstance(ws, (list, tuple)) or len(ws) == 0:
        raise ValueError("W must be a non-empty list of tensors")
    n = len(ws)
    lists = []
    for name, lst in named_lists:
        if lst is None:
            continue
        if not isinstance(lst, (list, tuple)) or len(lst) != n:
            raise ValueError(f"{name} must be a list of {n} tensors (one per W); got "
                             f"{type(lst).__name__} of length "
                             f"{len(lst) if hasattr(lst, '__len__') else '?'}")
        lists.append((name, lst))
    parts = _group_parts(ws, lists)
    if parts is not None:
        return parts
    dev = ws[0].device if isinstance(ws[0], torch.Tensor) else None
    for i, w in enumerate(ws):  # find the first bad tensor, and say what is wrong with it
        if isinstance(w, torch.Tensor) and w.device != dev:
            raise ValueError(f"W[{i}] is on {w.device} but W[0] is on {dev}")
        check_buffers(w, [(name if name == "g" else f"{name}[{i}]", lst[i])
                          for name, lst in lists], w_name=f"W[{i}]", flat=False)
    raise ValueError("the group's tensors do not fit the kernel")  # pragma: no cover


def _group_parts(ws, lists) -> list | None:
    """The fast whole-list form of ``check_buffers`` (C-level loops over each list, a few
    attribute reads per tensor): the group's parts by dtype combination, or None when some
    tensor does not fit."""
    T = torch.Tensor
    try:
        shapes = [w.shape for w in ws]
        devs = set(map(T.get_device, ws))
        if len(devs) != 1 or not all(map(T.is_contiguous, ws)):
            return None
        dtypes = [[w.dtype for w in ws]]
        for _, lst in lists:
            if [t.shape for t in lst] != shapes or set(map(T.get_device, lst)) != devs \
                    or not all(map(T.is_contiguous, lst)):
                return None
            dtypes.append([t.dtype for t in lst])
    except (AttributeError, TypeError):  # not a tensor somewhere
        return None
    names = [name for name, _ in lists]
    combos = list(zip(*dtypes))
    kinds = set(combos)
    for combo in kinds:  # a handful of dtype combinations
        wdt, sdt, state_dt = combo[0], (torch.float64 if combo[0] == torch.float64
                                        else torch.float32), None
        if wdt not in W_DTYPES:
            return None
        for name, dt in zip(names, combo[1:]):
            if name == "g" or state_dt is None:
                if dt != wdt and dt != sdt:
                    return None
                if name != "g":
                    state_dt = dt
            elif dt != state_dt:
                return None
    key = lambda c: (c[0], c[1], c[2] if len(c) > 2 else c[0])  # noqa: E731  (W, g, state)
    if len(kinds) == 1:
        return [(key(combos[0]), None)]
    parts: dict = {}
    for i, c in enumerate(combos):
        parts.setdefault(key(c), []).append(i)
    return list(parts.items())


def check_step(step: Any) -> int:
    if isinstance(step, torch.Tensor):
        step = step.item()
    if float(step) != int(step) or int(step) < 1:
        raise ValueError(f"step must be an integer >= 1 (the count including this step); got {step}")
    return int(step)


def as_scalar(name: str, c: Any, keep_tensor: bool = False) -> Any:
    """A scalar state (c1, c2) given as a float or a one-element tensor: a float, or with
    ``keep_tensor`` the tensor itself as a 0-d tensor (its range is then not checked: that
    would read it back from the device)."""
    if isinstance(c, torch.Tensor):
        if c.numel() != 1:
            raise ValueError(f"{name} must be a scalar (float or one-element tensor); "
                             f"got shape {tuple(c.shape)}")
        if keep_tensor:
            return c.reshape(())
        c = c.item()
    c = float(c)
    if not (0.0 <= c <= 1.0):
        raise ValueError(f"{name} must be in [0, 1] (bias-correction state); got {c}")
    return c
