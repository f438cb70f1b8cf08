"""What a flow states about itself beyond its field: its capabilities.

``Flow`` inherits these defaults; a flow overrides the ones it knows. The analysis modules
(``paths``, ``limits``, ``stability``, ``kernels``) only call them, never ask a flow's name.
A default either refuses with a ValueError naming the flow and the capability, or returns
the natural "none" (no jump times, no fused kernel).

    limit(path)              the h → 0 limit along a scaling path (rates: the flow itself)
    betas_fixed_limit()      the limit along betas-fixed (lr → h·lr, β fixed)
    sqrt_point(h)            the optimizer at step h of Malladi's square-root path
    modified(h, path)        the first-order modified flow at step h (backward error analysis)
    frozen_states()          the states linear stability analysis holds fixed on L = ½λw²
    stable_lr(lam, v)        the closed-form largest stable lr on L = ½λw²
    max_stable_sharpness()   the largest curvature stable at the flow's lr (edge of stability)
    preconditioner(S)        P at state S: stability is decided by λ_max(P^{1/2}HP^{1/2})
                             against max_stable_sharpness (None: unpreconditioned, P = I)
    jump_times(T)            step-clock times in [0, T] where the field jumps
    fused_step_(τ, S, g, h, backend) / fused_field_into(τ, S, g, out, backend)
                             the flow's fused kernels (False: none applies)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .base import Flow


@dataclass(frozen=True)
class SqrtPoint:
    """The optimizer at step h of the square-root path: its flow F_h (torch hyperparameters,
    e.g. lr·√h, 1 - h(1-β), ε/√h) and the gradient-noise multiplier Σ → Σ·noise_scale = Σ/h.

    ``pt.lr``, ``pt.betas``, ``pt.eps``, … read F_h's hyperparameters."""

    flow: Flow
    noise_scale: float

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "flow":
            raise AttributeError(name)
        hp = self.flow.hyperparameters()
        if name not in hp:
            raise AttributeError(f"flow {self.flow.name!r} has no hyperparameter {name!r}")
        return hp[name]


class Capabilities:
    """Default capabilities of a flow: refuse clearly, or state that there are none."""

    def _refuse(self, what: str) -> ValueError:
        return ValueError(f"flow {self.name!r} declares no {what}")

    def replace(self, **changes) -> Flow:
        """The same flow with some hyperparameters changed (rebuilt, so validated)."""
        return type(self)(**{**self.hyperparameters(), **changes})

    # --- scaling paths ----------------------------------------------------------------------
    def limit(self, path: str = "rates") -> Flow:
        """The h → 0 limit of the flow F along ``path`` (``fluxode.paths``):

            rates         F itself (the discrete runs converge to it at order 1)
            betas-fixed   ``betas_fixed_limit()``: the auxiliaries are slaved to their targets
            sqrt          refused: the limit is an SDE (``fluxode.sde``)"""
        from ..paths import check_path

        check_path(path)
        if path == "rates":
            return self
        if path == "betas-fixed":
            return self.betas_fixed_limit()
        raise ValueError("the sqrt path's limit is an SDE: see fluxode.sde")

    def betas_fixed_limit(self) -> Flow:
        """The h → 0 limit along betas-fixed (lr → h·lr, β fixed); declared per flow."""
        raise self._refuse("betas-fixed limit")

    def _require_constant_lr(self, what: str) -> None:
        from .. import schedules

        if self.max_grad_norm is not None or not isinstance(self.schedule, schedules.Constant):
            raise ValueError(f"{what} are derived for constant lr without clipping")

    def sqrt_point(self, h: float) -> SqrtPoint:
        """The optimizer at batch factor h = κ ∈ (0, inf) of Malladi et al.'s square-root path:
        lr → √h·lr, (1-β) → h(1-β), ε → ε/√h, Σ → Σ/h; declared per flow."""
        raise self._refuse("sqrt path point (Malladi et al.'s square-root rule)")

    @staticmethod
    def _path_step(h: float) -> tuple[float, float]:
        """(h, √h) for h checked to lie in (0, inf): the square-root rule runs both ways
        (h = κ, the batch-size factor; ``fluxode.paths.sqrt_point``)."""
        from ..paths import check_scale

        h = check_scale(h)
        return h, math.sqrt(h)

    # --- modified equations -----------------------------------------------------------------
    def modified(self, h: float, path: str = "rates") -> Flow:
        """The first-order modified flow at step h of ``path``: the flow the discrete run
        follows to O(h²) (backward error analysis); declared per flow."""
        raise self._refuse("modified flow")

    # --- linear stability on L = ½λw² -------------------------------------------------------
    def frozen_states(self) -> tuple[str, ...]:
        """The states held constant so the discrete map on L = ½λw² is linear in the rest
        (adaptive flows freeze their preconditioner v); raises where the analysis does not
        apply."""
        raise ValueError(f"stability analysis supports flows that declare frozen_states(); "
                         f"flow {self.name!r} declares none")

    def _require_linear_map(self) -> None:
        if self.weight_decay or self.maximize or self.max_grad_norm is not None:
            raise ValueError("stability analysis is for weight_decay=0, maximize=False, "
                             "no clipping")

    def stable_lr(self, lam: float, v: float = 1.0) -> float:
        """The closed-form largest lr with a stable discrete map on L = ½λw² (``v``: the
        frozen second moment of adaptive flows); declared per flow."""
        raise self._refuse("closed-form stability threshold")

    def max_stable_sharpness(self) -> float:
        """The largest curvature λ the discrete map tolerates at the flow's lr (the edge of
        stability); declared per flow."""
        raise self._refuse("maximal stable sharpness")

    def preconditioner(self, S: dict):
        """The diagonal preconditioner P (a tensor shaped like W) at state S, such that the
        discrete step with the flow's frozen states acts on the curvature P^{1/2}HP^{1/2}
        (``fluxode.sharpness`` measures its top eigenvalue). Default: None (P = I, plain
        sharpness: gradient descent and its momentum variants)."""
        return None

    # --- solver hints -----------------------------------------------------------------------
    def jump_times(self, T: float) -> list[float]:
        """Step-clock times in [0, T] where the field jumps (adaptive solvers stop there).
        Default: none (a schedule's kinks are not jumps of the field)."""
        return []

    # --- fused kernels ----------------------------------------------------------------------
    def _no_fused(self, what: str, backend: str, detail: str = "") -> bool:
        """False (no fused kernel applies), or the ValueError when backend='fused' asked."""
        if backend == "fused":
            raise ValueError(f"backend='fused' has no fused {what} for flow {self.name!r}"
                             f"{detail}; use backend='auto' or 'reference'")
        return False

    def fused_step_(self, tau: float, S: dict, g, h: float = 1.0,
                    backend: str = "auto") -> bool:
        """S ← the discrete step of size h at τ through a fused kernel, in place; False when
        none applies (the caller then runs the generic partitioned Euler step). Default:
        no fused step (backend='fused' is refused)."""
        return self._no_fused("step", backend)

    def fused_group_step_(self, taus: list[float], states: list[dict], grads: list,
                          h: float = 1.0, backend: str = "auto") -> bool:
        """Every state of ``states`` (one per parameter tensor, W included) ← its discrete step
        of size h at its own τ, in one multi-tensor launch (a fused kernel over the lists, no
        concatenation); False when none applies (the caller then steps tensor by tensor).
        Default: none."""
        return False

    def fused_field_into(self, tau: float, S: dict, g, out: dict,
                         backend: str = "auto") -> bool:
        """out ← dS/dτ through a fused kernel; False when none applies (the caller then
        evaluates the generic field). Default: no fused field."""
        return self._no_fused("field", backend)
