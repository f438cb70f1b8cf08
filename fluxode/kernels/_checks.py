"""Argument checks and scalar preparation shared by every kernel backend.

Every public kernel takes flat 1-D contiguous buffers on one device. W (the parameters)
may be float32, bfloat16 or float64; optimizer states are float32 (float64 when W is
float64). Bad input raises ValueError naming the parameter and its allowed range.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

W_DTYPES = (torch.float32, torch.bfloat16, torch.float64)


def state_dtype_for(w: torch.Tensor) -> torch.dtype:
    """Compute/state dtype for parameters ``w``: float64 for float64 W, else float32."""
    return torch.float64 if w.dtype == torch.float64 else torch.float32


def check_buffers(w: torch.Tensor, named_states: Sequence[tuple[str, Any]], *,
                  w_name: str = "W") -> None:
    """Validate W and its same-sized state buffers (name, tensor-or-None pairs)."""
    if not isinstance(w, torch.Tensor):
        raise ValueError(f"{w_name} must be a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in W_DTYPES:
        raise ValueError(f"{w_name}.dtype must be one of float32, bfloat16, float64; got {w.dtype}")
    if w.dim() != 1 or not w.is_contiguous():
        raise ValueError(f"{w_name} must be a contiguous 1-D buffer (flatten parameter lists "
                         f"with fluxode.kernels.flatten); got shape {tuple(w.shape)}")
    sdt = state_dtype_for(w)
    for name, t in named_states:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.shape != w.shape:
            raise ValueError(f"{name} must have the same shape as {w_name} {tuple(w.shape)}; "
                             f"got {tuple(t.shape)}")
        if t.dtype != sdt:
            raise ValueError(f"{name}.dtype must be {sdt} for {w_name}.dtype {w.dtype}; got {t.dtype}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
        if t.device != w.device:
            raise ValueError(f"{name} is on {t.device} but {w_name} is on {w.device}")


def check_step(step: Any) -> int:
    if isinstance(step, torch.Tensor):
        step = step.item()
    if float(step) != int(step) or int(step) < 1:
        raise ValueError(f"step must be an integer >= 1 (the count including this step); got {step}")
    return int(step)


def as_scalar(name: str, c: Any) -> float:
    """A scalar state (c1, c2) given as a float or a one-element tensor."""
    if isinstance(c, torch.Tensor):
        if c.numel() != 1:
            raise ValueError(f"{name} must be a scalar (float or one-element tensor); "
                             f"got shape {tuple(c.shape)}")
        c = c.item()
    c = float(c)
    if not (0.0 <= c <= 1.0):
        raise ValueError(f"{name} must be in [0, 1] (bias-correction state); got {c}")
    return c
