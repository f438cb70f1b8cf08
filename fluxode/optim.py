"""torch.optim-compatible optimizers built from flows.

``FlowOptimizer(params, "adamw", lr=1e-3)`` is the flow's partitioned Euler map with step
``h`` (default 1, i.e. torch.optim's update) as a drop-in ``torch.optim.Optimizer``: param
groups, closures, LR schedulers (they set ``group["lr"]``, read as η(τ) on that step) and
``state_dict``/``load_state_dict`` work as with torch's own classes.

Per parameter it keeps the flow's auxiliary tensors, the step clock ``step`` (τ = step·h) and
the scalar clocks (c₁, c₂) as Python floats, so a state-dict round trip does not round them to
the parameter dtype. ``max_grad_norm`` clips each param group's gradients (in place, like
``clip_grad_norm_``).

``backend="reference"`` (default) runs the core discretizer, torch's single-tensor step bit
for bit; ``"fused"``/``"auto"`` run Adam/AdamW/RMSprop steps through ``fluxode.kernels``
(torch's fused CPU ops, Triton on CUDA), equal to the reference within a few ulps.
"""

from __future__ import annotations

import torch

from .discretize import euler_step_
from .flows import FLOWS, Flow, make_flow
from .forces import clip_gradients_
from .kernels import flow_step_
from .validation import backend as check_backend
from .validation import positive


class FlowOptimizer(torch.optim.Optimizer):
    """The discrete optimizer of a flow: ``FlowOptimizer(params, flow, h=1.0, **hyperparams)``."""

    def __init__(self, params, flow: str = "adamw", h: float = 1.0, backend: str = "reference",
                 **hyperparameters):
        if flow not in FLOWS:
            raise ValueError(f"flow must be one of {sorted(FLOWS)}, got {flow!r}")
        proto = make_flow(flow, **hyperparameters)  # validates
        if proto.needs_hessian:
            raise ValueError(f"flow {flow!r} needs a Hessian; run it with fluxode.discretize or "
                             "fluxode.integrate on a problem that provides one")
        defaults = dict(proto.hyperparameters(), h=positive("h", h))
        self.flow_name, self.backend = flow, check_backend(backend)
        self._hp_names = tuple(proto.hyperparameters())
        self._flows: dict[tuple, Flow] = {}
        super().__init__(params, defaults)

    def flow_for(self, group: dict) -> Flow:
        """The flow with this param group's current hyperparameters (cached)."""
        hp = {k: group[k] for k in self._hp_names}
        key = tuple(sorted((k, v) for k, v in hp.items()))
        flow = self._flows.get(key)
        if flow is None:
            flow = self._flows[key] = make_flow(self.flow_name, **hp)
        return flow

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            flow = self.flow_for(group)
            h = group["h"]
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            if any(g.is_sparse for g in grads):
                raise RuntimeError("fluxode optimizers do not support sparse gradients")
            clip_gradients_(grads, flow.max_grad_norm)
            for p, g in zip(params, grads):
                self._step_param(flow, p, g, h)
        return loss

    def _step_param(self, flow: Flow, p, g, h: float) -> None:
        st = self.state[p]
        if not st:
            S = flow.init(p, flow.effective_gradient(p, g))
            st["step"] = torch.tensor(0.0)
            st.update({n: S[n] for n in flow.vectors})
            st.update({n: 0.0 for n in flow.clocks})
        S = {"W": p, **{n: st[n] for n in flow.vectors},
             **{n: torch.tensor(st[n], dtype=torch.float64) for n in flow.clocks}}
        tau = float(st["step"]) * h
        if not flow_step_(flow, tau, S, g, h, self.backend):
            euler_step_(flow, tau, S, g, h)
        st["step"] += 1
        for n in flow.clocks:
            st[n] = float(S[n])
