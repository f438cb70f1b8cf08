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
floats by the discrete step, so a state-dict round trip does not round them; an ODE step
leaves them as 0-d views of its flat state (which it integrates), so it reads nothing back. A parameter without a gradient is
skipped for the step in both modes, as torch does (its step count and state stay put). The
discrete step keeps each group's bookkeeping between steps (``_Book``): the step counts as
Python numbers (torch's ``step`` tensors are views of one buffer, advanced by one add), so a
step reads nothing back from the device. For a
solver the states are packed into one flat buffer (``fluxode.engine.Layout``): the parameters
of an elementwise flow that share a step count are one flat unit; other flows keep one unit
per tensor.

η on a step is the group's ``lr`` (so torch LR schedulers work) times the flow's own schedule
η(τ); ``max_grad_norm`` clips each param group's gradients (``clip_grad_norm_`` semantics; in
place in discrete mode, inside every field evaluation otherwise). ``backend="fused"``/``"auto"``
run a flow's fused kernel (step or field) where it has one.
"""

from __future__ import annotations

import functools
import inspect
import operator

import torch
from torch import Tensor

from . import engine
from .engine.solve import check_max_steps
from .flows import FLOWS, Flow, make_flow
from .flows.rates import Clock
from .forces import clip_gradients_
from .validation import backend as check_backend
from .validation import positive, positive_int

IMPLEMENTATION_FLAGS = ("foreach", "fused", "differentiable", "capturable")
"""torch.optim's implementation switches: accepted under the twin's names and kept in the param
groups; foreach/fused=True choose fluxode's fast path (backend "auto"), differentiable/capturable
=True are not implemented (a clear NotImplementedError)."""

KNOWN_GROUP_KEYS = ("params", "name", "initial_lr")  # keys torch itself and its schedulers add


class FlowOptimizer(torch.optim.Optimizer):
    """``FlowOptimizer(params, flow="adamw", method="discrete", *, h=1.0, substeps=1,
    rtol=1e-3, atol=1e-6, max_steps=10_000, options=None, backend=None,
    **hyperparameters)`` (hyperparameters under the flow's — torch.optim's — names; defaults
    read from the installed torch twin; torch's own validation where there is a twin).

    ``backend=None``: "reference" for the discrete method (torch.optim's single-tensor
    arithmetic), "auto" for ODE methods (the flow's fused field where it has one: the same
    values as the reference field, without its temporaries)."""

    default_method = "discrete"
    keep_stage_buffers = True
    """ODE methods: keep the solver's stage buffers (stages × state bytes) between steps. On
    CPU a fresh buffer of tens of MB is page-faulted on first touch at every step (dopri5 on
    a 670k-parameter MLP: 3.4 → 2.4 × its gradient time); set False to free them after each
    step."""

    def __init__(self, params, flow: str | type[Flow] | Flow = "adamw", method: str | None = None,
                 *, h: float = 1.0, substeps: int = 1, rtol: float = 1e-3, atol: float = 1e-6,
                 max_steps: int = 10_000, options: dict | None = None,
                 backend: str | None = None, **hyperparameters):
        method = self.default_method if method is None else method
        if method != "discrete" and method not in engine.METHODS:
            raise ValueError(f"method must be one of {['discrete', *engine.METHODS]}, "
                             f"got {method!r}")
        cls = type(flow) if isinstance(flow, Flow) else flow
        cls = FLOWS[cls] if isinstance(cls, str) and cls in FLOWS else cls
        flags = {k: hyperparameters.pop(k) for k in IMPLEMENTATION_FLAGS if k in hyperparameters}
        given = dict(hyperparameters)
        hyperparameters = {k: _plain(v) for k, v in hyperparameters.items()}
        if isinstance(flow, Flow):
            proto = make_flow(type(flow), **{**flow.hyperparameters(), **hyperparameters}) \
                if hyperparameters else flow
        else:
            proto = make_flow(flow, **hyperparameters)  # validates, with fluxode's messages
        _validate_like_twin(cls, {**given, **flags})  # then torch's own rules (tensor forms)
        if proto.needs_hessian:
            raise ValueError(f"flow {proto.name!r} needs a Hessian, which an optimizer does not "
                             "get; run it with fluxode.integrate on a problem that provides one")
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"options must be a dict of torchdiffeq options, got {options!r}")
        for k in ("differentiable", "capturable"):
            if flags.get(k):
                raise NotImplementedError(f"{k}=True is not implemented by fluxode optimizers "
                                          f"(flow {proto.name!r}); use torch.optim for it")
        if backend is None:
            backend = "auto" if method != "discrete" or flags.get("foreach") \
                or flags.get("fused") else "reference"
        self.proto, self.flow_name, self.method = proto, proto.name, method
        self.backend = check_backend(backend)
        self.substeps = positive_int("substeps", substeps)
        self.rtol, self.atol = positive("rtol", rtol), positive("atol", atol)
        self.max_steps = check_max_steps(max_steps)
        self.options = dict(options or {})
        self.last_nfe = 0
        self._hp_names = tuple(proto.hyperparameters())
        self._flows: dict[int, tuple[dict, Flow]] = {}
        self._books: dict[int, _Book] = {}  # per param group: the discrete step's bookkeeping
        self._known: dict[int, tuple[Tensor, int, int]] = {}  # step tensor → its count
        twin_flags = _twin_flags(proto)
        defaults = dict(proto.hyperparameters(), h=positive("h", h),
                        **{k: flags.get(k, v) for k, v in twin_flags.items()})
        super().__init__(params, defaults)

    # --- param groups, flows and state ------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        """torch's ``add_param_group``, refusing keys that are no hyperparameter of this flow."""
        unknown = set(param_group) - set(self.defaults) - set(KNOWN_GROUP_KEYS)
        if unknown:
            raise ValueError(f"param group has key(s) {sorted(unknown)} that flow "
                             f"{self.flow_name!r} does not take; its keys are "
                             f"{sorted(self.defaults)}")
        super().add_param_group(param_group)

    def flow_for(self, group: dict) -> Flow:
        """The flow with this param group's current hyperparameters (one cached per group, so
        an LR scheduler making a new lr every step does not grow a cache)."""
        hp = {k: _plain(group[k]) for k in self._hp_names}
        cached = self._flows.get(id(group))
        if cached is not None and cached[0] == hp:
            return cached[1]
        flow = self.proto if hp == self.proto.hyperparameters() \
            else make_flow(type(self.proto), **hp)
        self._flows[id(group)] = (hp, flow)
        return flow

    @staticmethod
    def _key(flow: Flow, v) -> str:
        """Where variable v lives in the per-parameter state: the torch twin's name if any."""
        return flow.torch_names.get(v.name, v.name)

    def _state(self, flow: Flow, p: Tensor, g: Tensor) -> dict:
        """The flow state of parameter p as a dict {W: p, var: tensor}, created on first use
        from the flow's declared initial values (g: p's clipped raw gradient). A variable the
        state lacks starts now, from its declared initial value (momentum switched on
        mid-run; torch's ``momentum_buffer = None``); a clock from the step count (a state
        that came from torch)."""
        st = self._complete_state(flow, p, g)
        S = {"W": p}
        for v in flow.variables():
            key = self._key(flow, v)
            x = st[key]
            if v.is_clock and isinstance(x, Tensor):  # torch keeps such scalars as tensors
                x = st[key] = x.item()
            S[v.name] = torch.tensor(x, dtype=torch.float64) if v.is_clock else x
        return S

    def _complete_state(self, flow: Flow, p: Tensor, g: Tensor) -> dict:
        """p's torch state, created or completed (see ``_state``); clocks are left as they
        are (a Python number, or a 0-d tensor, which the ODE step keeps on the device)."""
        st = self.state[p]
        if not any(v is not None for v in st.values()):
            st.clear()
            S = flow.init(p, flow.effective_gradient(p, g))
            st["step"] = self._remember(torch.tensor(0.0), 0)
            for v in flow.variables():
                st[self._key(flow, v)] = float(S[v.name]) if v.is_clock else S[v.name]
        if "step" not in st:  # torch's SGD keeps no step count
            st["step"] = self._remember(torch.tensor(1.0), 1)
        for v in flow.variables():
            key = self._key(flow, v)
            if st.get(key) is None:  # a variable that starts now (momentum switched on)
                st[key] = flow.clock_values(self._count(st))[v.name] if v.is_clock \
                    else v.initial(p, flow.effective_gradient(p, g))
        return st

    # Step counts. torch keeps ``state["step"]`` as a float32 tensor per parameter (state
    # dicts stay torch's); the clocks τ = k·h are computed from the count k as a Python
    # number, which the optimizer knows without reading the tensor back: it remembers the
    # count of every step tensor it wrote, with the tensor's version counter, and reads a
    # tensor only when it is new or was changed elsewhere (a loaded state dict).
    def _remember(self, t: Tensor, k: int) -> Tensor:
        self._known[id(t)] = (t, t._version, k)
        return t

    def _count(self, st: dict) -> int:
        t = st["step"]
        if not isinstance(t, Tensor):
            return int(t)
        known = self._known.get(id(t))
        if known is not None and known[0] is t and known[1] == t._version:
            return known[2]
        return int(t)  # set outside this optimizer: read once

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
            if not params:
                continue
            grads = [p.grad for p in params]
            sparse = any(g.is_sparse for g in grads)
            if sparse and not flow.sparse_gradients:
                raise RuntimeError(f"flow {flow.name!r} has no sparse form: it does not take "
                                   "sparse gradients (torch.optim.SparseAdam does)")
            clip_gradients_(grads, flow.max_grad_norm)
            book = self._book(group, flow, params, grads)
            taus = book.taus(h)
            if not (self.backend != "reference" and book.real and not sparse
                    and flow.fused_group_step_(taus, book.states, grads, h, self.backend)):
                self._tensor_steps(flow, book, params, grads, taus, h)
            book.advance()
        return loss

    def _tensor_steps(self, flow: Flow, book: _Book, params, grads, taus, h: float) -> None:
        """The group's step tensor by tensor (``engine.step_``: the flow's fused single-tensor
        kernel or the partitioned Euler step) on the book's step dicts (``_Book.steppers``),
        with the flow's blocks built once for the group; clocks that follow a ``Clock`` rate
        come back as Python numbers from their closed form, any other scalar is read back."""
        closed = book.closed_clocks(flow)
        steppers = book.steppers(closed, self.backend)
        blocks = flow.blocks()
        for S, S0, g, tau, k in zip(steppers, book.states, grads, taus, book.counts):
            for name, _ in book.clocks:  # this step's clocks, from the book's numbers
                if isinstance(S[name], Tensor):
                    S[name].fill_(S0[name])
                else:
                    S[name] = S0[name]
            if S["W"] is not S0["W"]:  # a complex parameter, stepped on its real view
                g = torch.view_as_real(g)
            engine.step_(flow, S, g, tau, h, backend=self.backend, blocks=blocks)
            for name, _ in book.clocks:  # after the step: count k + 1
                x = S[name]
                S0[name] = x if not isinstance(x, Tensor) else \
                    Clock.value(closed[name], k + 1, h) if name in closed else float(x)

    def _book(self, group: dict, flow: Flow, params: list[Tensor], grads: list[Tensor]
              ) -> _Book:
        """The group's bookkeeping (``_Book``), reused while it is valid, else built anew."""
        book = self._books.get(id(group))
        if book is not None and book.valid(self, flow, params):
            return book
        if book is not None:  # its counts stay known for the tensors it leaves behind
            book.release(self)
        book = _Book(self, flow, params, grads)
        self._books[id(group)] = book
        return book

    def _ode_step(self, closure):
        hs = {g["h"] for g in self.param_groups}
        if len(hs) != 1:
            raise ValueError(f"an ODE method integrates all param groups over one interval; "
                             f"their h must agree, got {sorted(hs)}")
        h = hs.pop()
        all_params = [p for g in self.param_groups for p in g["params"]]
        if any(p.is_sparse or p.is_complex() for p in all_params):
            raise ValueError("ODE methods do not support sparse or complex parameters")

        def gradients():
            for p in all_params:
                p.grad = None
            with torch.enable_grad():
                loss = closure()
            self.last_nfe += 1
            if any(p.grad is not None and p.grad.is_sparse for p in all_params):
                raise ValueError("ODE methods do not support sparse gradients")
            return loss, {p: p.grad for p in all_params if p.grad is not None and p.numel()}

        self.last_nfe = 0
        loss, raw0 = gradients()
        if not raw0:  # nothing to integrate (no gradient, or only zero-element parameters)
            return loss
        plan = _Plan(self, raw0, h)
        try:
            y1 = plan.integrate(gradients)
        except BaseException:
            plan._write_params(plan.y0)  # leave the model where the step started
            _restore_grads(all_params, raw0)
            raise
        plan.finish(y1)
        _restore_grads(all_params, raw0)
        return loss

    def _solver_kwargs(self, h: float) -> dict:
        opts = dict(self.options)
        kw = {"method": self.method, "rtol": self.rtol, "atol": self.atol,
              "max_steps": self.max_steps}
        if self.method in engine.FIXED:
            kw["step_size"] = h / self.substeps
        else:
            opts.setdefault("first_step", h)
        return dict(kw, options=opts)

    # --- checkpoints and copies -------------------------------------------------------------
    def state_dict(self) -> dict:
        """torch's state dict (state under the torch twin's names, so torch.optim loads it)
        plus the flow's name."""
        return {**super().state_dict(), "flow": self.flow_name}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict from this class or from the torch twin (``torch.optim.X``): a
        state from another flow, or one that does not fit these parameters, is refused before
        anything changes; keys an older state dict lacks take this optimizer's defaults."""
        if not isinstance(state_dict, dict) or "param_groups" not in state_dict:
            raise ValueError("not an optimizer state dict (no 'param_groups')")
        if state_dict.get("flow", self.flow_name) != self.flow_name:
            raise ValueError(f"state dict is for flow {state_dict['flow']!r}, this optimizer "
                             f"runs {self.flow_name!r}")
        rest = {k: v for k, v in state_dict.items() if k != "flow"}
        saved_groups, saved_state = rest.get("param_groups", []), rest.get("state", {})
        if len(saved_groups) == len(self.param_groups):  # else torch reports the mismatch
            for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
                unknown = set(saved) - set(self.defaults) - set(KNOWN_GROUP_KEYS) \
                    - set(_scheduler_keys(saved)) - _twin_group_keys(self.proto)
                if unknown:
                    raise ValueError(f"state dict's param group {gi} has key(s) "
                                     f"{sorted(unknown)} that flow {self.flow_name!r} does not "
                                     "take (a state dict from another optimizer?)")
                flow = self.flow_for(group)
                for p, i in zip(group["params"], saved.get("params", [])):
                    _check_saved(flow, gi, p, saved_state.get(i, {}))
        super().load_state_dict(rest)
        self._books.clear()  # the loaded step tensors are read once, at the next step
        self._known.clear()
        for group in self.param_groups:
            for k, v in self.defaults.items():
                group.setdefault(k, v)

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), **{k: self.__dict__[k] for k in _OWN}}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._flows, self._books, self._known = {}, {}, {}


_OWN = ("proto", "flow_name", "method", "backend", "substeps", "rtol", "atol", "max_steps",
        "options", "last_nfe", "_hp_names")


def _scheduler_keys(group: dict) -> list[str]:
    """Keys LR/momentum schedulers write into a param group (kept, never interpreted)."""
    return [k for k in group if k in ("initial_lr", "max_lr", "min_lr", "base_lr",
                                      "max_momentum", "base_momentum")]


def _plain(v):
    """A hyperparameter as a Python number: torch accepts 0-d tensors for lr, betas, ..."""
    if isinstance(v, Tensor) and v.numel() == 1:
        return v.item()
    if isinstance(v, tuple) and any(isinstance(x, Tensor) for x in v):
        return tuple(_plain(x) for x in v)
    return v


def _twin_group_keys(flow: Flow) -> set[str]:
    """The keys the installed torch twin writes into its param groups (a state dict saved by
    torch carries them; e.g. AdamW's ``decoupled_weight_decay``)."""
    twin = flow.twin()
    if twin is None:
        return set()
    return set(twin([torch.zeros(1, requires_grad=True)]).param_groups[0]) - {"params"}


def _twin_flags(flow: Flow) -> dict:
    """The twin's implementation flags with their defaults (kept in the param groups)."""
    twin = flow.twin()
    if twin is None:
        return {}
    sig = inspect.signature(twin.__init__).parameters
    return {k: sig[k].default for k in IMPLEMENTATION_FLAGS if k in sig}


def _validate_like_twin(cls, kwargs: dict) -> None:
    """Let the installed torch twin judge the arguments it knows (same exception types and
    messages as torch); flags the twin does not take are refused by name."""
    twin = cls.twin() if isinstance(cls, type) and issubclass(cls, Flow) else None
    flags = {k for k in kwargs if k in IMPLEMENTATION_FLAGS}
    if twin is None:
        if any(kwargs[k] for k in flags):
            raise ValueError(f"{sorted(flags)} are torch.optim implementation flags; flow "
                             f"{getattr(cls, 'name', cls)!r} has no torch twin")
        return
    sig = inspect.signature(twin.__init__).parameters
    extra = flags - set(sig)
    if extra:
        raise TypeError(f"{twin.__name__}.__init__() got an unexpected keyword argument "
                        f"{min(extra)!r}")
    known = {k: v for k, v in kwargs.items() if k in sig}
    if known.get("differentiable") or known.get("capturable"):
        return  # refused by fluxode itself, below
    twin([torch.zeros(1, requires_grad=True)], **known)


def _check_saved(flow: Flow, gi: int, p: Tensor, st: dict) -> None:
    if not st or all(x is None for x in st.values()):
        return
    for v in flow.variables():
        key = flow.torch_names.get(v.name, v.name)
        x = st.get(key)
        if x is None:
            continue  # absent or None (torch's "not started"): it starts at first use
        want = v.shape_for(p.shape)
        ok = (isinstance(x, float) or isinstance(x, Tensor) and x.numel() == 1) if v.is_clock \
            else (isinstance(x, Tensor) and tuple(x.shape) == want)
        if not ok:
            raise ValueError(f"state dict does not fit param group {gi}: flow {flow.name!r} "
                             f"keeps {key!r} of shape {want} for a parameter of shape "
                             f"{tuple(p.shape)}, got {_describe(x)}")


def _describe(x) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else repr(x)


def _restore_grads(params, raw: dict) -> None:
    """.grad as the closure left it at the start of the step (the solver never writes into
    those tensors: a clipped gradient is a copy)."""
    for p in params:
        p.grad = raw.get(p)


class _Plan:
    """One ODE step of a FlowOptimizer: the active parameters grouped into solver units, the
    flat state y, the field, and the write-back.

    Unit: one parameter, or (elementwise flows) the parameters of one group with equal step
    counts, flattened together. Unit u runs on its own step clock τ_u = step_u·h + t, t ∈ [0, h]
    (the step counts are read once, as Python numbers). The field writes into the solver's
    stage rows; a unit of several parameters gathers their gradients into one buffer kept for
    the step; the start point reuses the closure's gradient."""

    def __init__(self, opt: FlowOptimizer, raw0: dict, h: float):
        self.opt, self.h = opt, h
        plan = []
        for group in opt.param_groups:
            flow = opt.flow_for(group)
            active = [p for p in group["params"] if p in raw0]
            if not active:
                continue
            g0 = [raw0[p].clone() for p in active] if flow.max_grad_norm is not None \
                else [raw0[p] for p in active]
            clip_gradients_(g0, flow.max_grad_norm)
            for p, g in zip(active, g0):
                opt._complete_state(flow, p, g)
            plan.append((flow, active))
        every = [p for _, active in plan for p in active]
        self.count = {p: opt._count(opt.state[p]) for p in every}  # known: nothing is read
        devices = {p.device for p in every}
        if len(devices) > 1:
            raise ValueError("an ODE method needs every parameter with a gradient on one device "
                             f"(the solver state is one buffer), got {sorted(map(str, devices))}")
        # mixed precisions share one buffer in the widest dtype; each unit keeps its own
        dtype = functools.reduce(torch.promote_types, (p.dtype for p in every))
        self.groups = []  # (flow, layout, units, segment, base τ per unit, gradient buffers)
        offset = 0
        for flow, active in plan:
            units = self._units(flow, active)
            layout = engine.Layout(flow, [u[1] for u in units], opt.backend)
            if any(self.count[ps[0]] == 0 for ps, _ in units):  # the declared start
                engine.check_start([flow], opt.method, (
                    "take the first few steps with method='discrete' (torch.optim's update) "
                    "or load the state of a few torch.optim steps, then set the optimizer's "
                    f"method back to {opt.method!r} (one or two discrete steps may not be "
                    "enough: while the accumulator is small the field is stiff and a "
                    "fixed-step stage can push it below 0, where the field is |g|/ε; the run "
                    "then diverges with finite values — on a small MLP three steps were "
                    "needed, and dopri5 takes ~70 steps for the first interval)"))
            base = [self.count[ps[0]] * h for ps, _ in units]
            bufs = [torch.empty(shape, dtype=dtype, device=ps[0].device) if len(ps) > 1
                    else None for ps, shape in units]
            self.groups.append((flow, layout, units, slice(offset, offset + layout.size), base,
                                bufs))
            offset += layout.size
        self.raw0, self.first = raw0, True
        self.signature = (dtype, tuple((tuple(flow.state_names), tuple(
            (tuple(map(id, ps)), shape) for ps, shape in units))
            for flow, _, units, _, _, _ in self.groups))
        kept = getattr(opt, "_ode_flat", None)
        if kept is not None and kept[0] == self.signature and all(
                opt.state[p].get(key) is x for p, key, x in kept[2]):
            self.y0, self.kept = kept[1], True  # the state is the last step's flat buffer
            for flow, layout, units, seg, _, _ in self.groups:
                for (ps, _), views in zip(units, layout.views(self.y0[seg])):
                    self._gather(flow, ps, views, only_w_and_clocks=True)
        else:
            self.y0, self.kept = torch.empty(offset, dtype=dtype, device=devices.pop()), False
            for flow, layout, units, seg, _, _ in self.groups:
                for (ps, _), views in zip(units, layout.views(self.y0[seg])):
                    self._gather(flow, ps, views)

    def _units(self, flow: Flow, params: list[Tensor]) -> list[tuple[list[Tensor], tuple]]:
        if not flow.elementwise:
            return [([p], tuple(p.shape)) for p in params]
        by_key: dict = {}
        for p in params:
            by_key.setdefault((self.count[p], p.dtype, p.device), []).append(p)
        return [(ps, (sum(p.numel() for p in ps),)) for ps in by_key.values()]

    def _gather(self, flow: Flow, ps: list[Tensor], views: dict,
                only_w_and_clocks: bool = False) -> None:
        """The unit's state written into its views of y₀: each variable of its parameters,
        flattened and joined; clocks from the first parameter (``only_w_and_clocks``: the
        other variables are views of y₀ already)."""
        sts = [self.opt.state[p] for p in ps]
        for name, view in views.items():
            var = None if name == "W" else next(v for v in flow.variables() if v.name == name)
            if var is not None and var.is_clock:
                c = sts[0][self.opt._key(flow, var)]
                if not isinstance(c, Tensor):
                    view.fill_(c)
                elif c.data_ptr() != view.data_ptr():  # a 0-d tensor: copied on the device
                    view.copy_(c)
                continue
            if var is not None and only_w_and_clocks:
                continue
            off = 0
            for p, st in zip(ps, sts):
                x = p.detach() if var is None else st[self.opt._key(flow, var)]
                view.view(-1)[off:off + x.numel()].copy_(x.reshape(-1))  # rows/cols: own size
                off += x.numel()

    def _unit_grads(self, flow: Flow, units, bufs, grads: dict) -> list[Tensor]:
        out = []
        for (ps, shape), buf in zip(units, bufs):
            if buf is None:
                p = ps[0]
                g = grads[p] if p in grads else torch.zeros_like(p)
                g = g.to(self.y0.dtype)
                out.append(g.clone() if flow.max_grad_norm is not None and g is grads.get(p)
                           else g)
            else:
                off = 0
                for p in ps:
                    dst = buf[off:off + p.numel()]
                    if p in grads:
                        dst.copy_(grads[p].reshape(-1))
                    else:
                        dst.zero_()
                    off += p.numel()
                out.append(buf)
        return out

    def _write_params(self, y: Tensor) -> None:
        for flow, layout, units, seg, _, _ in self.groups:
            for (ps, _), S in zip(units, layout.views(y[seg])):
                off = 0
                for p in ps:
                    W = S["W"] if len(ps) == 1 else S["W"][off:off + p.numel()].view_as(p)
                    p.copy_(W)
                    off += p.numel()

    def integrate(self, gradients) -> Tensor:
        jumps = sorted({j - tau for flow, _, _, _, base, _ in self.groups for tau in base
                        for j in flow.jump_times(tau + self.h) if tau < j < tau + self.h})
        self.last_grads: list[list[Tensor]] = []

        def rhs(t: float, y: Tensor, out: Tensor) -> Tensor:
            if self.first and y is self.y0:
                grads = self.raw0  # the start point: reuse the closure's gradient
            else:
                self._write_params(y)
                grads = gradients()[1]
            self.first = False
            self.last_grads = []
            for flow, layout, units, seg, base, bufs in self.groups:
                gs = self._unit_grads(flow, units, bufs, grads)
                clip_gradients_(gs, flow.max_grad_norm)
                self.last_grads.append(gs)
                layout.field_into([b + t for b in base], y[seg], gs, out[seg])
            return out

        t = (0.0, self.h)
        work = None
        if self.opt.keep_stage_buffers:
            work = self.opt.__dict__.setdefault("_ode_work", {})
        sol, _ = engine.solve(rhs, self.y0, t, jumps=jumps, explain=self._explain, into=True,
                              final_only=True, workspace=work, **self.opt._solver_kwargs(self.h))
        return sol[-1]

    def _explain(self, t: float, y: Tensor, dy: Tensor | None) -> str | None:
        for i, (flow, layout, units, seg, base, _) in enumerate(self.groups):
            grads = self.last_grads[i] if i < len(self.last_grads) else None
            msg = layout.explain(base[0] + t, y[seg], None if dy is None else dy[seg], grads)
            if msg:
                return (f"flow {flow.name!r}: {msg}: the step diverged (lr too large, or a "
                        "loss that overflows?)")
        return None

    def finish(self, y1: Tensor) -> None:
        """Write the integrated state back: parameters (copied), the flow's variables (the
        state tensors become views of one flat buffer, which the next step starts from
        without a gather, where dtype and device agree, else copied; once they are, y₁ is
        copied into that buffer, so they stay the same live tensors, as torch's are), step
        counts (remembered, so the next step reads none), clocks (0-d views of y₁ in the
        solver's dtype: nothing is read back)."""
        if self.kept:
            self.y0.copy_(y1)
            work = self.opt.__dict__.get("_ode_work")
            if work is not None:
                work.setdefault("free", []).append(y1)  # a stage buffer for the next step
            y1 = self.y0
        self._write_params(y1)
        clocks, views, copied = [], [], False  # (state, key, 0-d view); (param, key, view)
        for flow, layout, units, seg, _, _ in self.groups:
            for (ps, _), S in zip(units, layout.views(y1[seg])):
                off = 0
                for p in ps:
                    st, n = self.opt.state[p], p.numel()
                    for v in flow.variables():
                        key = self.opt._key(flow, v)
                        if v.is_clock:
                            clocks.append((st, key, S[v.name]))
                            continue
                        x = S[v.name] if len(ps) == 1 else S[v.name][off:off + n].view_as(p)
                        if self.kept:  # st[key] is a view of y₁ already
                            views.append((p, key, st[key]))
                        elif st[key].dtype == x.dtype and st[key].device == x.device:
                            st[key] = x
                            views.append((p, key, x))
                        else:
                            st[key].copy_(x)
                            copied = True
                    st["step"] += 1
                    self.opt._remember(st["step"], self.count[p] + 1)
                    off += n
        self.opt._ode_flat = None if copied or not views else (self.signature, y1, views)
        for st, key, c in clocks:  # 0-d views of y₁, never read back here
            st[key] = c.reshape(())


class _Book:
    """One param group's discrete-step bookkeeping, kept between steps while it is valid.

    It holds the active parameters' state dicts, the dicts the flow steps ({W, variable:
    tensor, clock: Python number}, built once), and the step counts k as Python ints. In the
    torch state the counts are the 0-d views of one float32 buffer (torch's ``state["step"]``
    tensors, so state dicts stay torch's): a step advances all of them with one add, and
    nothing is read back. Valid while the optimizer's state, the active parameters, their
    state tensors and the buffer (its version counter) are the ones it was built from."""

    def __init__(self, opt: FlowOptimizer, flow: Flow, params: list[Tensor],
                 grads: list[Tensor]):
        self.state, self.params = opt.state, list(params)
        self._set_flow(flow)
        self.sts = [opt.state[p] for p in params]
        for p, g, st in zip(params, grads, self.sts):
            if "step" not in st or any(st.get(key) is None for _, key, _ in self.keys):
                opt._state(flow, p, g)  # created, or completed (a variable that starts now)
            for _, key, is_clock in self.keys:
                if is_clock and isinstance(st[key], Tensor):  # torch's scalars: read once
                    st[key] = st[key].item()
        self._base, self._n = [opt._count(st) for st in self.sts], 0  # k = base + n
        for st in self.sts:
            opt._known.pop(id(st["step"]), None)
        self.uniform = self._base.count(self._base[0]) == len(self._base)
        self.buf = torch.tensor(self._base, dtype=torch.float32)
        self.views = self.buf.unbind(0)
        for st, t in zip(self.sts, self.views):
            st["step"] = t
        self.version = self.buf._version
        self.states = [{"W": p, **{name: st[key] for name, key, _ in self.keys}}
                       for p, st in zip(params, self.sts)]
        self.tensors = self._tensors()
        self.real = not any(p.is_complex() for p in params)
        self._steppers = None  # (clocks kept as numbers, the step dicts): ``steppers``

    def _set_flow(self, flow: Flow) -> None:
        self.flow, self.closed = flow, None
        self.keys = tuple((v.name, FlowOptimizer._key(flow, v), v.is_clock)
                          for v in flow.variables())
        self.clocks = tuple((name, key) for name, key, is_clock in self.keys if is_clock)

    def _tensors(self) -> list:
        """The tensors the book holds, as the state dicts hold them now: step, variables."""
        keys = ["step", *(key for _, key, is_clock in self.keys if not is_clock)]
        return [st.get(key) for st in self.sts for key in keys]

    def valid(self, opt: FlowOptimizer, flow: Flow, params: list[Tensor]) -> bool:
        if self.state is not opt.state or self.buf._version != self.version \
                or len(params) != len(self.params) \
                or not all(map(operator.is_, params, self.params)):
            return False
        if flow is not self.flow:  # new hyperparameters (an LR scheduler): same variables?
            keys = self.keys
            self._set_flow(flow)
            if self.keys != keys:
                return False
        return all(map(operator.is_, self._tensors(), self.tensors))

    def taus(self, h: float) -> list[float]:
        """Each tensor's step-clock time τ = k·h."""
        if self.uniform:
            return [(self._base[0] + self._n) * h] * len(self._base)
        return [(k + self._n) * h for k in self._base]

    @property
    def counts(self) -> list[int]:
        return [k + self._n for k in self._base]

    def closed_clocks(self, flow: Flow) -> dict:
        """{clock: keep} for the clocks that follow a ``Clock`` rate (``Flow.clock_rates``)."""
        if self.closed is None:
            self.closed = flow.clock_rates()
        return self.closed

    def steppers(self, closed: dict, backend: str) -> list[dict]:
        """Per tensor, the dict a tensor step runs on, built once and kept with the book: W
        and the variables (their real views for a complex parameter of a ``complex_as_real``
        flow), each clock as a Python number where the generic step takes one (a closed
        clock, reference backend: ``rates.Clock.euler``), else as a 0-d float64 tensor kept
        here (a fused kernel or an in-place rate fills it); ``_tensor_steps`` sets the clocks
        from ``states`` before each step."""
        numbers = tuple(name for name, _ in self.clocks
                        if name in closed and backend == "reference")
        if self._steppers is None or self._steppers[0] != numbers:
            tensors = {name for name, _ in self.clocks} - set(numbers)
            out = []
            for S0 in self.states:
                S = {n: torch.tensor(x, dtype=torch.float64) if n in tensors else x
                     for n, x in S0.items()}
                if S0["W"].is_complex() and self.flow.complex_as_real:  # as torch does
                    S = {n: torch.view_as_real(x) if isinstance(x, Tensor) and x.is_complex()
                         else x for n, x in S.items()}
                out.append(S)
            self._steppers = (numbers, out)
        return self._steppers[1]

    def advance(self) -> None:
        """Every count k ← k + 1 (one add on the buffer); the clocks into the torch state."""
        self.buf.add_(1)
        self.version = self.buf._version
        self._n += 1
        for st, S in zip(self.sts, self.states):
            for name, key in self.clocks:
                st[key] = S[name]

    def release(self, opt: FlowOptimizer) -> None:
        """Leave the counts with the optimizer, for tensors that a next book does not take."""
        if self.buf._version == self.version:
            for t, k in zip(self.views, self.counts):
                opt._remember(t, k)
