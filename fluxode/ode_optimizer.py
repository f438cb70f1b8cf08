"""Train with an ODE integrator: ``ODEOptimizer`` is a drop-in ``torch.optim.Optimizer``.

Each ``step(closure)`` integrates the flow's continuous system over one interval of the step
clock with a torchdiffeq solver,

    dy/dτ = F(τ, y, clip(∇L(W))),    y = [W | aux… | clocks],    τ ∈ [τ_k, τ_k + h],

where ∇L is re-evaluated at every intermediate W the solver asks for: the optimizer writes W
into the parameters, calls the closure (the loss on this step's minibatch, so the field is
frozen over the interval) and reads ``.grad``. All param groups are integrated as one system
(the loss couples them); each group keeps its whole flow state in one flat buffer
(``fluxode.flat.FlatLayout``), and the auxiliaries and clocks carry over from step to step.

``method="discrete"`` is the partitioned Euler map instead (``fluxode.discretize.euler_step_``),
i.e. torch.optim's step at h = 1, bit for bit; it may be called without a closure, like torch.
A parameter without a gradient (``.grad is None`` after the closure) is left alone for the step
in both modes, as torch does: the discrete map skips it, and the continuous field holds its W and
auxiliaries still (the group's clocks run on; they are shared by the group's flat state).

η on an interval is the group's ``lr`` (so torch LR schedulers work) times the flow's own
schedule η(τ); ``max_grad_norm`` clips each group's gradient inside every field evaluation.
Fixed-step methods take ``substeps`` equal steps per interval; adaptive ones control the local
error with ``rtol``/``atol`` and try the whole interval as their first step (``options`` go to
torchdiffeq unchanged). ``last_nfe`` counts the gradient evaluations of the last step.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchdiffeq import odeint

from .discretize import euler_step_
from .flat import FlatLayout
from .flows import FLOWS, Flow, make_flow
from .forces import clip_gradients_
from .kernels import flow_step_
from .validation import backend as check_backend
from .validation import positive, positive_int

FIXED_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams",
                 "implicit_adams")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
METHODS = ("discrete", *FIXED_METHODS, *ADAPTIVE_METHODS)


class ODEOptimizer(torch.optim.Optimizer):
    """``ODEOptimizer(params, flow="adamw", method="rk4", h=1.0, substeps=1, rtol=1e-3,
    atol=1e-6, options=None, backend="reference", **hyperparameters)`` (hyperparameters under
    torch.optim's names; ``backend`` "fused"/"auto" evaluates Adam-family fields and steps with
    ``fluxode.kernels``)."""

    def __init__(self, params, flow: str = "adamw", method: str = "rk4", *, h: float = 1.0,
                 substeps: int = 1, rtol: float = 1e-3, atol: float = 1e-6,
                 options: dict | None = None, backend: str = "reference", **hyperparameters):
        self.backend = check_backend(backend)
        if flow not in FLOWS:
            raise ValueError(f"flow must be one of {sorted(FLOWS)}, got {flow!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
        proto = make_flow(flow, **hyperparameters)  # validates the hyperparameters
        if proto.needs_hessian:
            raise ValueError(f"flow {flow!r} needs a Hessian, which a closure does not give; "
                             "use fluxode.discretize on a problem that provides one")
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"options must be a dict of torchdiffeq options, got {options!r}")
        self.flow_name, self.method = flow, method
        self.h = positive("h", h)
        self.substeps = positive_int("substeps", substeps)
        self.rtol, self.atol = positive("rtol", rtol), positive("atol", atol)
        self.options = dict(options or {})
        self.last_nfe = 0
        self._hp_names = tuple(proto.hyperparameters())
        self._flows: dict[tuple, Flow] = {}
        super().__init__(params, proto.hyperparameters())

    # --- plumbing -----------------------------------------------------------------------------
    def flow_for(self, group: dict) -> Flow:
        """The flow with this param group's current hyperparameters (small cache: LR schedulers
        make a new lr every step)."""
        key = tuple((k, group[k]) for k in self._hp_names)
        flow = self._flows.get(key)
        if flow is None:
            if len(self._flows) > 32:
                self._flows.clear()
            flow = self._flows[key] = make_flow(self.flow_name, **dict(key))
        return flow

    def _groups(self) -> list[tuple[dict, Flow, FlatLayout, dict]]:
        """(group, flow, layout over the group's concatenated params, state record) per group."""
        out = []
        for i, group in enumerate(self.param_groups):
            ps = group["params"]
            if any(p.dtype != ps[0].dtype or p.device != ps[0].device for p in ps):
                raise ValueError(f"param group {i}: all parameters must share one dtype and "
                                 "device (the flow state is one flat buffer per group)")
            if any(p.is_sparse or (p.grad is not None and p.grad.is_sparse) for p in ps):
                raise ValueError("ODEOptimizer does not support sparse parameters or gradients")
            flow = self.flow_for(group)
            out.append((group, flow, FlatLayout(flow, sum(p.numel() for p in ps), self.backend),
                        self.state[ps[0]]))
        return out

    @staticmethod
    def _flat_grad(params, like: Tensor) -> Tensor:
        """The group's raw gradient as one flat tensor (zeros where .grad is None)."""
        g, off = torch.zeros_like(like), 0
        for p in params:
            if p.grad is not None:
                g[off:off + p.numel()].copy_(p.grad.reshape(-1))
            off += p.numel()
        return g

    @staticmethod
    def _frozen_mask(params, like: Tensor) -> Tensor | None:
        """True over the flat entries of parameters whose .grad is None (None if there are
        none): their whole state stays put for the step, like torch's skip."""
        if all(p.grad is not None for p in params):
            return None
        mask, off = torch.zeros(like.shape, dtype=torch.bool, device=like.device), 0
        for p in params:
            if p.grad is None:
                mask[off:off + p.numel()] = True
            off += p.numel()
        return mask

    @staticmethod
    def _flat_params(params) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in params])

    @staticmethod
    def _write_params(params, W: Tensor) -> None:
        off = 0
        for p in params:
            p.copy_(W[off:off + p.numel()].view_as(p))
            off += p.numel()

    def _init_state(self, st: dict, flow: Flow, layout: FlatLayout, W: Tensor,
                    g: Tensor) -> None:
        """Flow state at τ = 0 from the first (clipped) gradient, as FlowOptimizer does."""
        y = layout.pack(flow.init(W, flow.effective_gradient(W, g)))
        st["step"] = torch.tensor(0.0)
        st["y"] = y
        st["clocks"] = [float(y[layout.slices[c]]) for c in flow.clocks]

    @staticmethod
    def _check_finite(flow: Flow, layout: FlatLayout, y: Tensor, tau: float,
                      what: str = "state") -> None:
        if bool(torch.isfinite(y).all()):
            return
        bad = [n for n, v in layout.views(y).items() if not bool(torch.isfinite(v).all())]
        raise FloatingPointError(
            f"non-finite {what} of flow {flow.name!r} at τ = {tau:g} in component(s) "
            f"{', '.join(bad)}: the step diverged (lr too large, or a loss that overflows?)")

    # --- the step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One optimizer step; ``closure`` re-evaluates the loss and its gradients (required for
        ODE methods). Returns the closure's loss at the start of the step."""
        if self.method == "discrete":
            return self._discrete_step(closure)
        if closure is None:
            raise ValueError(f"ODEOptimizer(method={self.method!r}).step needs a closure that "
                             "recomputes the loss and calls backward(): the solver evaluates "
                             "gradients at intermediate points")
        groups = self._groups()
        params = [list(g["params"]) for g, *_ in groups]
        W0 = [self._flat_params(ps) for ps in params]

        def evaluate() -> tuple[Tensor | None, list[Tensor]]:
            for ps in params:
                for p in ps:
                    p.grad = None
            with torch.enable_grad():
                loss = closure()
            self.last_nfe += 1
            return loss, [self._flat_grad(ps, w) for ps, w in zip(params, W0)]

        self.last_nfe = 0
        loss, g0 = evaluate()
        # parameters without a gradient at the start are left alone for this step, as torch does
        frozen = [self._frozen_mask(ps, w) for ps, w in zip(params, W0)]
        for (group, flow, layout, st), w, g in zip(groups, W0, g0):
            if not st:
                gc = g.clone()
                clip_gradients_([gc], flow.max_grad_norm)
                self._init_state(st, flow, layout, w, gc)
            if st["y"].shape != (layout.size,):
                raise ValueError(f"optimizer state holds {st['y'].numel()} values, the flow "
                                 f"{flow.name!r} over this group needs {layout.size}")
        tau0 = float(groups[0][3]["step"]) * self.h
        for group, flow, layout, st in groups:
            if float(st["step"]) * self.h != tau0:
                raise ValueError("all param groups must be on the same step clock (a group "
                                 "added later starts at τ = 0)")
        # y0 = [group 1: W | aux | clocks, group 2: ...], W from the parameters (the source of
        # truth), clocks from their exact record.
        segs, off = [], 0
        for (group, flow, layout, st), w in zip(groups, W0):
            y = st["y"]
            views = layout.views(y)
            views["W"].copy_(w)
            for c, v in zip(flow.clocks, st["clocks"]):
                views[c].fill_(v)
            segs.append(slice(off, off + layout.size))
            off += layout.size
        y0 = torch.cat([st["y"] for *_, st in groups]) if len(groups) > 1 else groups[0][3]["y"]
        t0_cast = float(torch.tensor(tau0, dtype=torch.float64).to(y0.dtype))

        def field(t: Tensor, y: Tensor) -> Tensor:
            tau = float(t)
            ys = [y[s] for s in segs]
            if tau == t0_cast and all(torch.equal(layout.views(yi)["W"], w)
                                      for yi, (_, _, layout, _), w in zip(ys, groups, W0)):
                gs = [g.clone() for g in g0]  # the start point: reuse the closure's gradient
            else:
                for ps, yi, (_, _, layout, _) in zip(params, ys, groups):
                    self._write_params(ps, layout.views(yi)["W"])
                gs = evaluate()[1]
            out = torch.empty_like(y)
            for (group, flow, layout, st), yi, g, s, mask in zip(groups, ys, gs, segs, frozen):
                self._check_finite(flow, layout, yi, tau)
                if not bool(torch.isfinite(g).all()):
                    raise FloatingPointError(
                        f"non-finite gradient of flow {flow.name!r} at τ = {tau:g}: the step "
                        "diverged (lr too large, or a loss that overflows?)")
                clip_gradients_([g], flow.max_grad_norm)
                layout.field_into(tau, yi, g, out[s])
                if mask is not None:
                    rates = layout.views(out[s])
                    for name in ("W", *flow.vectors):
                        rates[name].masked_fill_(mask, 0)
            return out

        t = torch.tensor([tau0, tau0 + self.h], dtype=torch.float64, device=y0.device)
        try:
            y1 = odeint(field, y0, t, method=self.method, rtol=self.rtol, atol=self.atol,
                        options=self._solver_options())[-1]
            for (group, flow, layout, st), s in zip(groups, segs):
                self._check_finite(flow, layout, y1[s], tau0 + self.h)
        except BaseException:
            for ps, w in zip(params, W0):  # leave the model where the step started
                self._write_params(ps, w)
            self._restore_grads(params, g0)
            raise
        for (group, flow, layout, st), ps, s in zip(groups, params, segs):
            st["y"].copy_(y1[s])
            views = layout.views(st["y"])
            self._write_params(ps, views["W"])
            st["clocks"] = [float(views[c]) for c in flow.clocks]
            st["step"] += 1
        self._restore_grads(params, g0)
        return loss

    def _solver_options(self) -> dict:
        opts = dict(self.options)
        if self.method in FIXED_METHODS:
            opts.setdefault("step_size", self.h / self.substeps)
        else:
            opts.setdefault("first_step", self.h)
        return opts

    @staticmethod
    def _restore_grads(params, g0: list[Tensor]) -> None:
        """.grad as the closure left it at the start of the step."""
        for ps, g in zip(params, g0):
            off = 0
            for p in ps:
                p.grad = g[off:off + p.numel()].view_as(p).clone()
                off += p.numel()

    def _discrete_step(self, closure):
        """Partitioned Euler (torch.optim's update at h = 1), per parameter like torch's
        single-tensor loop, on views into the group's flat state."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.last_nfe = 1
        for group, flow, layout, st in self._groups():
            ps = list(group["params"])
            stepped = [p for p in ps if p.grad is not None]
            if not stepped:
                continue
            grads = [p.grad for p in stepped]
            for g in grads:
                if not bool(torch.isfinite(g).all()):
                    raise FloatingPointError(f"non-finite gradient of flow {flow.name!r} at "
                                             f"τ = {float(st.get('step', 0)) * self.h:g}")
            clip_gradients_(grads, flow.max_grad_norm)
            if not st:
                self._init_state(st, flow, layout, self._flat_params(ps),
                                 self._flat_grad(ps, self._flat_params(ps)))
            tau = float(st["step"]) * self.h
            views = layout.views(st["y"])
            clocks, off = st["clocks"], 0
            for p in ps:
                sl = slice(off, off + p.numel())
                off += p.numel()
                if p.grad is None:
                    continue
                S = {"W": p, **{n: views[n][sl].view_as(p) for n in flow.vectors},
                     **{c: torch.tensor(v, dtype=torch.float64)
                        for c, v in zip(flow.clocks, st["clocks"])}}
                if not flow_step_(flow, tau, S, p.grad, self.h, self.backend):
                    euler_step_(flow, tau, S, p.grad, self.h)
                clocks = [float(S[c]) for c in flow.clocks]
            st["clocks"] = clocks
            st["step"] += 1
            views["W"].copy_(self._flat_params(ps))
            self._check_finite(flow, layout, st["y"], tau + self.h)
        return loss

    # --- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "flow": self.flow_name}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state from ``state_dict()``; refuses one from another flow or a plain torch
        optimizer, and one whose flat state does not fit these parameters."""
        if not isinstance(state_dict, dict) or "flow" not in state_dict:
            raise ValueError("not an ODEOptimizer state dict (no 'flow' entry)")
        if state_dict["flow"] != self.flow_name:
            raise ValueError(f"state dict is for flow {state_dict['flow']!r}, this optimizer "
                             f"integrates {self.flow_name!r}")
        rest = {k: v for k, v in state_dict.items() if k != "flow"}
        saved_groups, saved_state = rest.get("param_groups", []), rest.get("state", {})
        if len(saved_groups) == len(self.param_groups):  # else torch reports the mismatch
            for gi, ((group, flow, layout, _), saved) in enumerate(
                    zip(self._groups(), saved_groups)):
                ids = list(saved.get("params", []))
                st = saved_state.get(ids[0], {}) if ids else {}
                if any(i in saved_state for i in ids[1:]) or (st and (
                        not isinstance(st.get("y"), torch.Tensor)
                        or st["y"].shape != (layout.size,)
                        or len(st.get("clocks", ())) != len(flow.clocks))):
                    raise ValueError(
                        f"state dict does not fit param group {gi}: flow {flow.name!r} over "
                        f"{layout.n} parameters needs a flat state of {layout.size} values")
        super().load_state_dict(rest)
