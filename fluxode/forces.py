"""Forces on the raw gradient that compose with any flow.

Gradient-norm clipping, with ``torch.nn.utils.clip_grad_norm_`` semantics over the whole model:

    g ← g · min(1, max_norm / (‖g‖₂ + 1e-6)),   ‖g‖₂ = ‖(‖g₁‖₂, …, ‖g_P‖₂)‖₂

Weight decay (coupled: g ← g + λW; decoupled: Ẇ ← Ẇ - ηλW) and schedules η(τ) live with the
flow (``Flow.effective_gradient`` and ``fluxode.schedules``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def clip_gradients_(grads: Sequence[Tensor], max_norm: float | None) -> Tensor | None:
    """Scale ``grads`` in place so their total 2-norm is at most ``max_norm``; returns the norm
    before clipping (None when ``max_norm`` is None)."""
    if max_norm is None or not grads:
        return None
    total = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.device))
    return total
