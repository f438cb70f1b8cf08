"""The flow abstraction: an optimizer as a coupled ODE system over its whole state.

A flow on the step clock τ (τ = k at the k-th optimizer step) is a list of *blocks*, each
giving the rates of some state variables (as ``rates.Linear``/``rates.Toward`` expressions),
evaluated on the state S and the effective gradient g = G(W, ∇L(W)) (sign flip for
``maximize``, coupled L2 decay, a Newton solve, ...):

    Block(names, f):       d(names)/dτ = f(τ, S, g)
    Envelope(name, src):   name(τ) = max_{s ≤ τ} src(s)          (AMSGrad's running maximum)

The continuous flow evaluates every block on the same S. The discrete optimizer is one
partitioned (semi-implicit) Euler step over the blocks in order, each block seeing the values
the earlier blocks just produced; ``fluxode.discretize`` does both, generically.
Gradient-norm clipping acts on the raw gradient of the whole model before G.

State. A flow declares every state variable besides W as a ``Var``: its shape relative to
the parameter tensor W ("param": like W; "rows"/"cols": W's shape without its last / its
second-to-last dimension, for factored moments; "scalar": one number per tensor; or any
function of W's shape, e.g. a matrix per 2-D parameter), its dtype ("param": W's dtype;
"float64": an exact scalar such as a bias-correction clock) and its initial value (a number,
or a function of W and the first effective gradient g₀). The classic flows declare
``vectors`` (shaped like W, start at 0) and ``clocks`` (float64 scalars, start at 0) as a
shorthand; ``variables()`` is the general form. State lives per parameter tensor with its own
shape; packing into a flat buffer is the solver's private business (``fluxode.engine``).
"""

from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor

from .. import schedules
from .. import validation as check
from .capabilities import Capabilities
from .rates import Rate

State = dict[str, Tensor]
RateFn = Callable[[float, State, Tensor], tuple[Rate, ...]]


ShapeRule = str | Callable[[tuple[int, ...]], tuple[int, ...]]
InitRule = float | Callable[[Tensor, Tensor | None], Tensor]


@dataclass(frozen=True)
class Var:
    """A state variable: ``shape`` relative to W ("param", "rows", "cols", "scalar" or a
    function of W's shape), ``dtype`` ("param" or "float64") and ``init`` (a number, or a
    function ``(W, g0) -> Tensor`` of the parameter and the first effective gradient)."""

    name: str
    shape: ShapeRule = "param"
    init: InitRule = 0.0
    dtype: str = "param"

    def __post_init__(self):
        if self.name == "W" or not self.name.isidentifier():
            raise ValueError(f"state variable name must be an identifier other than 'W', "
                             f"got {self.name!r}")
        if not callable(self.shape) and self.shape not in ("param", "rows", "cols", "scalar"):
            raise ValueError(f"Var {self.name!r}: shape must be 'param', 'rows', 'cols', "
                             f"'scalar' or a function of W's shape, got {self.shape!r}")
        if self.dtype not in ("param", "float64"):
            raise ValueError(f"Var {self.name!r}: dtype must be 'param' or 'float64', "
                             f"got {self.dtype!r}")

    @property
    def is_clock(self) -> bool:
        """An exact float64 scalar (kept as a Python float by the torch.optim front-end)."""
        return self.shape == "scalar" and self.dtype == "float64"

    def shape_for(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(shape)
        if callable(self.shape):
            return tuple(self.shape(shape))
        if self.shape == "param":
            return shape
        if self.shape == "scalar":
            return ()
        if len(shape) < 2:
            raise ValueError(f"Var {self.name!r}: shape {self.shape!r} needs a parameter with "
                             f"at least 2 dimensions, got shape {shape}")
        return shape[:-1] if self.shape == "rows" else shape[:-2] + shape[-1:]

    def initial(self, W: Tensor, g0: Tensor | None) -> Tensor:
        """The initial value for parameter W (first effective gradient g0, if known)."""
        dtype = torch.float64 if self.dtype == "float64" else W.dtype
        if callable(self.init):
            x = self.init(W, g0)
            want = self.shape_for(W.shape)
            if tuple(x.shape) != want:
                raise ValueError(f"Var {self.name!r}: init returned shape {tuple(x.shape)}, "
                                 f"expected {want}")
            return x.to(dtype)
        return torch.full(self.shape_for(W.shape), float(self.init), dtype=dtype,
                          device=W.device)


@dataclass(frozen=True)
class Block:
    """d(names)/dτ = field(τ, S, g); ``field`` returns one rate expression per name."""

    names: tuple[str, ...]
    field: RateFn


@dataclass(frozen=True)
class Envelope:
    """name(τ) = max_{s ≤ τ} source(s): discretely ``max(name, source)``, continuously
    d name/dτ = [d source/dτ]₊ · 1{source ≥ name}."""

    name: str
    source: str


class Flow(Capabilities):
    """Base class. Subclasses set the class attributes and implement ``blocks``/``equations``."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    torch_twin: ClassVar[str | None] = None  # name of the torch.optim class, if any
    torch_names: ClassVar[dict[str, str]] = {}  # state variable → the twin's state key
    reference: ClassVar[str | None] = None  # "package.module:Class" of a non-torch reference
    needs_hessian: ClassVar[bool] = False
    sparse_gradients: ClassVar[bool] = False  # the discrete step accepts sparse gradients
    complex_as_real: ClassVar[bool] = True  # complex parameters step on their real view
    default_lr: ClassVar[float] = 1e-3  # used when there is no twin to read it from
    # Documented ranges of the real hyperparameters whose domain differs from the
    # conventional one (lr, weight_decay, lr_decay ≥ 0; eps > 0; momentum, dampening in
    # [0, 1]; alpha and each of betas[0], betas[1] in [0, 1)): e.g. an exponent named alpha,
    # or a β the flow divides by. The constructor refuses exactly what lies outside.
    ranges: ClassVar[dict[str, check.Interval]] = {}
    # The numbers of dimensions a parameter may have (None: any). A flow that needs
    # matrices (Muon) refuses other parameters when their state is built.
    param_dims: ClassVar[tuple[int, ...] | None] = None
    # True when lr is a length in W's units (the update scales with it directly). False where
    # lr multiplies a step whose size the flow sets itself (Adadelta: √(a+ε)/√(v+ε)·g); there
    # only the flow's default lr is a natural scale.
    lr_is_step_length: ClassVar[bool] = True

    def __init__(self, lr: float | None = None, *, weight_decay: float = 0.0,
                 maximize: bool = False, schedule=None, max_grad_norm: float | None = None):
        if lr is None:
            lr = self.twin_defaults().get("lr", self.default_lr)
        self.lr = check.at_least("lr", lr, 0.0)
        self.weight_decay = check.at_least("weight_decay", weight_decay, 0.0)
        self.maximize = check.flag("maximize", maximize)
        self.schedule = schedules.parse(schedule)
        self.max_grad_norm = (None if max_grad_norm is None
                              else check.positive("max_grad_norm", max_grad_norm))

    # --- state -------------------------------------------------------------------------------
    vectors: tuple[str, ...] = ()   # shorthand: auxiliary states shaped like W, start at 0
    clocks: tuple[str, ...] = ()    # shorthand: float64 scalars (bias-correction clocks), 0
    tensorwise: ClassVar[bool] = False  # the field uses whole-tensor quantities (norms, ...)

    def variables(self) -> tuple[Var, ...]:
        """Every state variable besides W (default: from ``vectors`` and ``clocks``)."""
        return (*(Var(n) for n in self.vectors),
                *(Var(c, "scalar", dtype="float64") for c in self.clocks))

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("W", *(v.name for v in self.variables()))

    @property
    def elementwise(self) -> bool:
        """True when the field acts entry by entry on W-shaped states (plus scalar clocks):
        the parameters of a group may then be stepped as one flat tensor."""
        return not self.tensorwise and all(v.shape == "param" or v.is_clock
                                           for v in self.variables())

    def clock_values(self, step: int) -> dict[str, float]:
        """The scalar clocks' values after ``step`` unit Euler steps from 0 (c = 1 - κᵏ for a
        clock ċ = (1-κ)(1-c)): how a state that carries only the step count (torch's) is
        completed. Found by asking the flow's own blocks for their ``Clock`` rates."""
        from .rates import Clock

        return {n: Clock.value(keep, step) for n, keep in self.clock_rates().items()}

    def clock_rates(self) -> dict[str, float]:
        """{clock: κ} for the scalar clocks that follow a ``Clock`` rate ċ = (1-κ)(1-c): after
        k Euler steps of size h such a clock is ``Clock.value(κ, k, h)``, a Python number
        (the optimizer keeps it without reading the state back)."""
        from .rates import Clock

        clocks = {v.name for v in self.variables() if v.is_clock}
        if not clocks:
            return {}
        W = torch.zeros(1, dtype=torch.float64)
        S = self.init(W, W)
        out = {}
        for block in self.blocks():
            if isinstance(block, Envelope) or not clocks & set(block.names):
                continue
            for name, rate in zip(block.names, block.field(0.0, S, W)):
                if isinstance(rate, Clock):
                    out[name] = rate.keep
        return out

    def init(self, W: Tensor, g0: Tensor | None = None) -> State:
        """Initial state at τ = 0 from each variable's declared initial value (``g0``: the
        effective first gradient, for consistent starts)."""
        return {"W": W, **{v.name: v.initial(W, g0) for v in self.variables()}}

    @property
    def memory_per_param(self) -> int:
        """Optimizer-state tensors shaped like W, per parameter (excluding W itself)."""
        return sum(v.shape == "param" for v in self.variables())

    # --- dynamics ----------------------------------------------------------------------------
    def eta(self, tau: float) -> float:
        """η(τ) = schedule(lr, τ)."""
        return self.schedule(self.lr, float(tau))

    def effective_gradient(self, W: Tensor, g: Tensor, H: Tensor | None = None) -> Tensor:
        """G(W, ∇L): -∇L under ``maximize``, then + λW for coupled (L2) weight decay."""
        g = -g if self.maximize else g
        if self.weight_decay != 0 and not self.decoupled_decay:
            g = g.add(W, alpha=self.weight_decay)
        return g

    decoupled_decay: ClassVar[bool] = False

    def singular_start(self) -> str | None:
        """Why the field is unbounded (as ε → 0) at the declared initial state, or None.

        RMSprop from v = 0 moves as Ẇ ≈ -η·sign(g)/√((1-α)τ): an integrable singularity the
        exact flow passes, but a fixed-step method evaluates the field at τ = 0, where it is
        g/ε, and its step is garbage (adaptive methods resolve it by shrinking the step).
        Callers refuse fixed-step methods from such a start (``engine.check_start``)."""
        return None

    def admissible(self, S: State) -> State:
        """S, or a copy moved onto the set the exact flow never leaves (default: S itself).

        Runge–Kutta stages combine slopes with negative weights (rk4's 3/8 rule), so from a
        singular start (Adam's m = v = c = 0) a stage can hold v < 0 beside m ≠ 0, where the
        field is unbounded. The continuous field is evaluated at the projected state: that
        extends it to the whole space without changing it on the flow's own trajectories.
        The discrete (torch.optim) step never projects."""
        return S

    @staticmethod
    def _raise_to(S: State, floors: dict[str, Tensor | float]) -> State:
        """S with S[name] ← max(S[name], floor) elementwise (NaN propagates): a copy, with no
        data-dependent branch, so the field never reads a value back to the host."""
        S = dict(S)
        for n, f in floors.items():
            S[n] = torch.clamp(S[n], min=f) if not isinstance(f, Tensor) else torch.maximum(S[n], f)
        return S

    def blocks(self) -> list[Block | Envelope]:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- description -------------------------------------------------------------------------
    def hyperparameters(self) -> dict:
        """Hyperparameters under torch.optim's names (as accepted by the constructor)."""
        hp = {"lr": self.lr, "weight_decay": self.weight_decay, "maximize": self.maximize}
        if not isinstance(self.schedule, schedules.Constant):
            hp["schedule"] = schedules.spec(self.schedule)
        if self.max_grad_norm is not None:
            hp["max_grad_norm"] = self.max_grad_norm
        return hp

    def gradient_equation(self) -> str:
        g = "-∇L(W)" if self.maximize else "∇L(W)"
        if self.max_grad_norm is not None:
            g = f"clip({g}, {self.max_grad_norm:g})"
        if self.weight_decay and not self.decoupled_decay:
            g += " + λW"
        return f"g  = {g}"

    def equations(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def legend(self) -> str:
        parts = [f"{k}={_fmt(v)}" for k, v in self.hyperparameters().items()]
        return ", ".join(parts)

    def describe(self) -> str:
        lines = [f"{self.name}: {self.summary}", f"  {self.gradient_equation()}"]
        lines += [f"  {eq}" for eq in self.equations()]
        if not isinstance(self.schedule, schedules.Constant):
            lines.append(f"  {self.schedule.describe()}")
        other = [v for v in self.variables() if v.shape != "param"]
        lines.append(f"  state: {', '.join(self.state_names)}   "
                     f"memory: {self.memory_per_param} × params"
                     + "".join(f" + {v.name} ({_shape_word(v)})" for v in other))
        lines.append(f"  hyperparameters: {self.legend()}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.legend()})"

    # --- torch twin and test table -----------------------------------------------------------
    @classmethod
    def twin(cls):
        """The installed class this flow reproduces: ``torch.optim.<torch_twin>``, else the
        ``reference`` ("package.module:Class", e.g. a test twin from the dev extra), or None
        (also when the reference package is not installed)."""
        if cls.torch_twin:
            return getattr(torch.optim, cls.torch_twin)
        if cls.reference:
            module, _, name = cls.reference.partition(":")
            try:
                return getattr(importlib.import_module(module), name)
            except ImportError:
                return None
        return None

    def reference_optimizer(self, params):
        """The reference implementation of this flow's discrete map, configured as this flow
        (torch's single-tensor path where the twin has a ``foreach`` switch)."""
        twin = self.twin()
        if twin is None:
            raise ValueError(f"flow {self.name!r} has no installed reference implementation")
        kw = self.torch_kwargs()
        if "foreach" in inspect.signature(twin.__init__).parameters:
            kw["foreach"] = False
        return twin(params, **kw)

    @classmethod
    def twin_defaults(cls) -> dict:
        """The installed twin's constructor defaults for the hyperparameters this flow takes
        (so defaults track torch versions)."""
        twin = cls.twin()
        if twin is None:
            return {}
        ours = inspect.signature(cls.__init__).parameters
        return {k: p.default for k, p in inspect.signature(twin.__init__).parameters.items()
                if k in ours and p.default is not inspect.Parameter.empty}

    def torch_kwargs(self) -> dict:
        """Keyword arguments for the torch.optim twin (schedule and clipping are applied by the
        caller, as torch users do)."""
        hp = self.hyperparameters()
        hp.pop("schedule", None)
        hp.pop("max_grad_norm", None)
        return hp

    @classmethod
    def option_grid(cls) -> list[dict]:
        """Option combinations exercised against the torch twin (``fluxode verify``)."""
        return [{}]

    @classmethod
    def invalid_options(cls) -> list[dict]:
        """Hyperparameter sets that must be refused with a ValueError (the shared test table)."""
        return [{"lr": -1.0}, {"lr": math.nan}, {"weight_decay": -0.1}, {"maximize": "yes"},
                {"max_grad_norm": 0.0}, {"schedule": "bogus"}]


def _shape_word(v: Var) -> str:
    if v.is_clock:
        return "scalar clock"
    return v.shape if isinstance(v.shape, str) else "per-tensor shape"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    if isinstance(v, schedules.Schedule):
        return type(v).__name__.lower()
    return repr(v)
