"""The torch.optim front-end: any flow, stepped discretely or integrated, as a drop-in optimizer.

``FlowOptimizer(params, flow, method="discrete" | any torchdiffeq method, **hyperparameters)``,
where ``flow`` is a registered name, a Flow class or a Flow instance.

``method="discrete"`` is the flow's partitioned Euler map with step ``h`` (default 1: torch.optim's
update, bit for bit), per parameter like torch's single-tensor loop. Any other method integrates
the flow's continuous system over one step-clock interval per ``step(closure)``,

    dy/dτ = F(τ, y, clip(∇L(W))),    τ ∈ [τ_k, τ_k + h],

re-evaluating the minibatch gradient through the closure wherever the solver asks (the loss
on this step's minibatch, so the field is frozen over the interval); ``last_nfe`` counts the
evaluations. Fixed-step methods take ``substeps`` equal steps; adaptive ones control the local
error with ``rtol``/``atol``, try the whole interval as their first step and stop after
``max_steps`` steps (``options`` go to torchdiffeq unchanged).

State. Per parameter, as torch keeps it: ``step`` and each of the flow's state variables with
its declared shape (``flows.base.Var``), initialised by the flow (any value, possibly from the
first effective gradient); exact float64 scalars (bias-correction clocks) are kept as Python
floats, so a state-dict round trip does not round them. A parameter without a gradient is
skipped for the step in both modes, as torch does (its step count and state stay put). For a
solver the states are packed into one flat buffer (``fluxode.engine.Layout``): the parameters
of an elementwise flow that share a step count are one flat unit; other flows keep one unit
per tensor.

η on a step is the group's ``lr`` (so torch LR schedulers work) times the flow's own schedule
η(τ); ``max_grad_norm`` clips each param group's gradients (``clip_grad_norm_`` semantics; in
place in discrete mode, inside every field evaluation otherwise). ``backend="fused"``/``"auto"``
run a flow's fused kernel (step or field) where it has one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import engine
from .engine.solve import check_max_steps
from .flows import Flow, make_flow
from .forces import clip_gradients_
from .validation import backend as check_backend
from .validation import positive, positive_int


class FlowOptimizer(torch.optim.Optimizer):
    """``FlowOptimizer(params, flow="adamw", method="discrete", *, h=1.0, substeps=1,
    rtol=1e-3, atol=1e-6, max_steps=10_000, options=None, backend="reference",
    **hyperparameters)`` (hyperparameters under the flow's — torch.optim's — names)."""

    default_method = "discrete"

    def __init__(self, params, flow: str | type[Flow] | Flow = "adamw", method: str | None = None,
                 *, h: float = 1.0, substeps: int = 1, rtol: float = 1e-3, atol: float = 1e-6,
                 max_steps: int = 10_000, options: dict | None = None,
                 backend: str = "reference", **hyperparameters):
        method = self.default_method if method is None else method
        if method != "discrete" and method not in engine.METHODS:
            raise ValueError(f"method must be one of {['discrete', *engine.METHODS]}, "
                             f"got {method!r}")
        if isinstance(flow, Flow):
            proto = make_flow(type(flow), **{**flow.hyperparameters(), **hyperparameters}) \
                if hyperparameters else flow
        else:
            proto = make_flow(flow, **hyperparameters)  # validates
        if proto.needs_hessian:
            raise ValueError(f"flow {proto.name!r} needs a Hessian, which an optimizer does not "
                             "get; run it with fluxode.integrate on a problem that provides one")
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"options must be a dict of torchdiffeq options, got {options!r}")
        self.proto, self.flow_name, self.method = proto, proto.name, method
        self.backend = check_backend(backend)
        self.substeps = positive_int("substeps", substeps)
        self.rtol, self.atol = positive("rtol", rtol), positive("atol", atol)
        self.max_steps = check_max_steps(max_steps)
        self.options = dict(options or {})
        self.last_nfe = 0
        self._hp_names = tuple(proto.hyperparameters())
        self._flows: dict[int, tuple[dict, Flow]] = {}
        super().__init__(params, dict(proto.hyperparameters(), h=positive("h", h)))

    # --- flows and state --------------------------------------------------------------------------
    def flow_for(self, group: dict) -> Flow:
        """The flow with this param group's current hyperparameters (one cached per group, so
        an LR scheduler making a new lr every step does not grow a cache)."""
        hp = {k: group[k] for k in self._hp_names}
        cached = self._flows.get(id(group))
        if cached is not None and cached[0] == hp:
            return cached[1]
        flow = self.proto if hp == self.proto.hyperparameters() \
            else make_flow(type(self.proto), **hp)
        self._flows[id(group)] = (hp, flow)
        return flow

    def _state(self, flow: Flow, p: Tensor, g: Tensor) -> dict:
        """The flow state of parameter p as a dict {W: p, var: tensor}, created on first use
        from the flow's declared initial values (g: p's clipped raw gradient)."""
        st = self.state[p]
        if not st:
            S = flow.init(p, flow.effective_gradient(p, g))
            st["step"] = torch.tensor(0.0)
            for v in flow.variables():
                st[v.name] = float(S[v.name]) if v.is_clock else S[v.name]
        S = {"W": p}
        for v in flow.variables():
            x = st[v.name]
            S[v.name] = torch.tensor(x, dtype=torch.float64) if v.is_clock else x
        return S

    @staticmethod
    def _store_clocks(flow: Flow, st: dict, S: dict) -> None:
        for v in flow.variables():
            if v.is_clock:
                st[v.name] = float(S[v.name])

    # --- the step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One optimizer step. ``closure`` re-evaluates the loss and its gradients (required for
        ODE methods, which evaluate gradients at intermediate points). Returns the closure's
        loss at the start of the step."""
        if self.method == "discrete":
            return self._discrete_step(closure)
        if closure is None:
            raise ValueError(f"FlowOptimizer(method={self.method!r}).step needs a closure that "
                             "recomputes the loss and calls backward(): the solver evaluates "
                             "gradients at intermediate points")
        return self._ode_step(closure)

    def _discrete_step(self, closure):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.last_nfe = 1
        for group in self.param_groups:
            flow, h = self.flow_for(group), group["h"]
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            if any(g.is_sparse for g in grads):
                raise RuntimeError("fluxode optimizers do not support sparse gradients")
            clip_gradients_(grads, flow.max_grad_norm)
            for p, g in zip(params, grads):
                S = self._state(flow, p, g)
                st = self.state[p]
                engine.step_(flow, S, g, float(st["step"]) * h, h, backend=self.backend)
                st["step"] += 1
                self._store_clocks(flow, st, S)
        return loss

    def _ode_step(self, closure):
        hs = {g["h"] for g in self.param_groups}
        if len(hs) != 1:
            raise ValueError(f"an ODE method integrates all param groups over one interval; "
                             f"their h must agree, got {sorted(hs)}")
        h = hs.pop()
        all_params = [p for g in self.param_groups for p in g["params"]]
        if any(p.is_sparse for p in all_params):
            raise ValueError("ODE methods do not support sparse parameters")

        def gradients():
            for p in all_params:
                p.grad = None
            with torch.enable_grad():
                loss = closure()
            self.last_nfe += 1
            if any(p.grad is not None and p.grad.is_sparse for p in all_params):
                raise ValueError("ODE methods do not support sparse gradients")
            return loss, {p: p.grad for p in all_params if p.grad is not None}

        self.last_nfe = 0
        loss, raw0 = gradients()
        W0 = {p: p.detach().clone() for p in all_params}
        plan = _Plan(self, raw0, h)
        try:
            y1 = plan.integrate(gradients)
        except BaseException:
            for p, w in W0.items():  # leave the model where the step started
                p.copy_(w)
            _restore_grads(all_params, raw0)
            raise
        plan.finish(y1)
        _restore_grads(all_params, raw0)
        return loss

    def _solver_kwargs(self, h: float) -> dict:
        opts = dict(self.options)
        kw = dict(method=self.method, rtol=self.rtol, atol=self.atol, max_steps=self.max_steps)
        if self.method in engine.FIXED:
            kw["step_size"] = h / self.substeps
        else:
            opts.setdefault("first_step", h)
        return dict(kw, options=opts)

    # --- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "flow": self.flow_name}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state from ``state_dict()``; refuses one from another flow, and one whose
        per-parameter state does not fit these parameters, before changing anything."""
        if not isinstance(state_dict, dict) or "flow" not in state_dict:
            raise ValueError("not a fluxode optimizer state dict (no 'flow' entry)")
        if state_dict["flow"] != self.flow_name:
            raise ValueError(f"state dict is for flow {state_dict['flow']!r}, this optimizer "
                             f"runs {self.flow_name!r}")
        rest = {k: v for k, v in state_dict.items() if k != "flow"}
        saved_groups, saved_state = rest.get("param_groups", []), rest.get("state", {})
        if len(saved_groups) == len(self.param_groups):  # else torch reports the mismatch
            for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
                flow = self.flow_for(group)
                for p, i in zip(group["params"], saved.get("params", [])):
                    _check_saved(flow, gi, p, saved_state.get(i, {}))
        super().load_state_dict(rest)


def _check_saved(flow: Flow, gi: int, p: Tensor, st: dict) -> None:
    if not st:
        return
    for v in flow.variables():
        x = st.get(v.name)
        ok = isinstance(x, float) if v.is_clock else (
            isinstance(x, Tensor) and tuple(x.shape) == v.shape_for(p.shape))
        if not ok:
            raise ValueError(f"state dict does not fit param group {gi}: flow {flow.name!r} "
                             f"keeps {v.name!r} of shape {v.shape_for(p.shape)} for a parameter "
                             f"of shape {tuple(p.shape)}, got {_describe(x)}")


def _describe(x) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else repr(x)


def _restore_grads(params, raw: dict) -> None:
    """.grad as the closure left it at the start of the step."""
    for p in params:
        p.grad = raw[p].clone() if p in raw else None


class _Plan:
    """One ODE step of a FlowOptimizer: the active parameters grouped into solver units, the
    flat state y, the field, and the write-back.

    Unit: one parameter, or (elementwise flows) the parameters of one group with equal step
    counts, flattened together. Unit u runs on its own step clock τ_u = step_u·h + t, t ∈ [0, h].
    """

    def __init__(self, opt: FlowOptimizer, raw0: dict, h: float):
        self.opt, self.h = opt, h
        self.groups = []  # (flow, layout, units, segment)
        states, offset = [], 0
        for group in opt.param_groups:
            flow = opt.flow_for(group)
            active = [p for p in group["params"] if p in raw0]
            if not active:
                continue
            g0 = [raw0[p].clone() for p in active]
            clip_gradients_(g0, flow.max_grad_norm)
            for p, g in zip(active, g0):
                opt._state(flow, p, g)
            units = self._units(flow, active)
            layout = engine.Layout(flow, [u[1] for u in units], opt.backend)
            self.groups.append((flow, layout, units, slice(offset, offset + layout.size)))
            offset += layout.size
            states += [self._gather(flow, ps) for ps, _ in units]
        kinds = {(S["W"].dtype, S["W"].device) for S in states}
        if len(kinds) > 1:
            raise ValueError("an ODE method needs every parameter with a gradient on one dtype "
                             f"and device (the solver state is one buffer), got {kinds}")
        self.raw0, self.first = raw0, True
        self.y0 = torch.empty(offset, dtype=states[0]["W"].dtype, device=states[0]["W"].device)
        it = iter(states)
        for flow, layout, units, seg in self.groups:
            layout.pack([next(it) for _ in units], self.y0[seg])

    def _units(self, flow: Flow, params: list[Tensor]) -> list[tuple[list[Tensor], tuple]]:
        if not flow.elementwise:
            return [([p], tuple(p.shape)) for p in params]
        by_key: dict = {}
        for p in params:
            key = (float(self.opt.state[p]["step"]), p.dtype, p.device)
            by_key.setdefault(key, []).append(p)
        return [(ps, (sum(p.numel() for p in ps),)) for ps in by_key.values()]

    def _gather(self, flow: Flow, ps: list[Tensor]) -> dict:
        """The unit's state: each variable of its parameters, flattened and joined (one
        parameter: as it is); clocks from the first parameter."""
        sts = [self.opt.state[p] for p in ps]
        S = {"W": ps[0].detach() if len(ps) == 1 else torch.cat([p.reshape(-1) for p in ps])}
        for v in flow.variables():
            if v.is_clock:
                S[v.name] = torch.tensor(sts[0][v.name], dtype=torch.float64)
            else:
                S[v.name] = sts[0][v.name] if len(ps) == 1 else torch.cat(
                    [st[v.name].reshape(-1) for st in sts])
        return S

    def _taus(self, units, t: float) -> list[float]:
        return [float(self.opt.state[ps[0]]["step"]) * self.h + t for ps, _ in units]

    def _unit_grads(self, units, grads: dict) -> list[Tensor]:
        out = []
        for ps, _ in units:
            gs = [grads[p] if p in grads else torch.zeros_like(p) for p in ps]
            out.append(gs[0].clone() if len(gs) == 1 else torch.cat([g.reshape(-1) for g in gs]))
        return out

    def _write_params(self, y: Tensor) -> None:
        for flow, layout, units, seg in self.groups:
            for (ps, _), S in zip(units, layout.views(y[seg])):
                off = 0
                for p in ps:
                    W = S["W"] if len(ps) == 1 else S["W"][off:off + p.numel()].view_as(p)
                    p.copy_(W)
                    off += p.numel()

    def integrate(self, gradients) -> Tensor:
        jumps = sorted({j - tau for flow, _, units, _ in self.groups
                        for tau in self._taus(units, 0.0)
                        for j in flow.jump_times(tau + self.h) if tau < j < tau + self.h})
        self.last_grads: list[list[Tensor]] = []

        def rhs(t: float, y: Tensor) -> Tensor:
            if self.first and t == 0.0 and y is self.y0:
                grads = self.raw0  # the start point: reuse the closure's gradient
            else:
                self._write_params(y)
                grads = gradients()[1]
            self.first = False
            out = torch.empty_like(y)
            self.last_grads = []
            for flow, layout, units, seg in self.groups:
                gs = self._unit_grads(units, grads)
                clip_gradients_(gs, flow.max_grad_norm)
                self.last_grads.append(gs)
                layout.field_into(self._taus(units, t), y[seg], gs, out[seg])
            return out

        t = torch.tensor([0.0, self.h], dtype=torch.float64)
        sol, _ = engine.solve(rhs, self.y0, t, jumps=jumps, explain=self._explain,
                              **self.opt._solver_kwargs(self.h))
        return sol[-1]

    def _explain(self, t: float, y: Tensor, dy: Tensor | None) -> str | None:
        for i, (flow, layout, units, seg) in enumerate(self.groups):
            grads = self.last_grads[i] if i < len(self.last_grads) else None
            msg = layout.explain(self._taus(units, t)[0], y[seg],
                                 None if dy is None else dy[seg], grads)
            if msg:
                return (f"flow {flow.name!r}: {msg}: the step diverged (lr too large, or a "
                        "loss that overflows?)")
        return None

    def finish(self, y1: Tensor) -> None:
        """Write the integrated state back: parameters, per-parameter state, step counts."""
        self._write_params(y1)
        for flow, layout, units, seg in self.groups:
            for (ps, _), S in zip(units, layout.views(y1[seg])):
                off = 0
                for p in ps:
                    st, n = self.opt.state[p], p.numel()
                    for v in flow.variables():
                        if v.is_clock:
                            st[v.name] = float(S[v.name])
                        elif len(ps) == 1:
                            st[v.name].copy_(S[v.name])
                        else:
                            st[v.name].copy_(S[v.name][off:off + n].view_as(p))
                    st["step"] += 1
                    off += n
