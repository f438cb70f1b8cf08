"""The open registry of flows: name → Flow class, for built-in and outside flows alike.

    @register_flow                      # or register_flow(MyFlow), register_flow(name="alias")
    class MyFlow(Flow):
        name = "my-flow"
        ...

An installed package adds flows through the entry-point group ``fluxode.flows``, each entry
naming a Flow class (its entry name should be the flow's ``name``)::

    [project.entry-points."fluxode.flows"]
    lion = "mypkg.flows:Lion"

Entry points are loaded lazily, on the first read of ``FLOWS``; a plugin that fails to load
gives a warning naming it, never a crash. ``FLOWS`` is the live registry (a read-only
mapping), so every command sees plugin flows: ``fluxode flows``, ``compare``, ``limit``, ...
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator, Mapping
from importlib import metadata

from .base import Flow

GROUP = "fluxode.flows"


class Registry(Mapping):
    """name → Flow class; reading it loads the ``fluxode.flows`` entry points once."""

    def __init__(self, group: str = GROUP):
        self.group = group
        self._classes: dict[str, type[Flow]] = {}
        self._loaded = False

    # --- Mapping (every read loads the plugins first) ----------------------------------------
    def __getitem__(self, name: str) -> type[Flow]:
        self.load()
        return self._classes[name]

    def __iter__(self) -> Iterator[str]:
        self.load()
        return iter(dict(self._classes))

    def __len__(self) -> int:
        self.load()
        return len(self._classes)

    def __repr__(self) -> str:
        return f"Registry({sorted(self)})"

    # --- writing -----------------------------------------------------------------------------
    def register(self, cls: type[Flow], name: str | None = None,
                 replace: bool = False) -> type[Flow]:
        """Add ``cls`` under ``name`` (default ``cls.name``); the same class twice is a no-op,
        another class under a taken name a ValueError unless ``replace=True``."""
        _validate(cls, name)
        if name is None:
            name = cls.name
        elif not isinstance(getattr(cls, "name", None), str):
            cls.name = name
        old = self._classes.get(name)
        if old is not None and old is not cls and not replace:
            raise ValueError(f"a flow named {name!r} is already registered "
                             f"({_where(old)}); pass replace=True to override it with "
                             f"{_where(cls)}")
        self._classes[name] = cls
        return cls

    def load(self) -> None:
        """Register every class named in the entry-point group (once; warnings on failure)."""
        if self._loaded:
            return
        self._loaded = True  # set first: a plugin's own @register_flow must not re-enter
        for ep in _entry_points(self.group):
            origin = f"{ep.name} = {ep.value}"
            dist = getattr(getattr(ep, "dist", None), "name", None)
            if dist:
                origin += f" (package {dist})"
            try:
                cls = ep.load()
                self.register(cls)
            except Exception as err:  # noqa: BLE001 - a broken plugin must not break fluxode
                warnings.warn(f"fluxode: flow plugin {origin} in group {self.group!r} was "
                              f"not loaded: {type(err).__name__}: {err}", RuntimeWarning,
                              stacklevel=2)


def _entry_points(group: str):
    try:
        return list(metadata.entry_points(group=group))
    except Exception as err:  # noqa: BLE001 - unreadable package metadata
        warnings.warn(f"fluxode: could not read entry points of group {group!r}: {err}",
                      RuntimeWarning, stacklevel=3)
        return []


def _where(cls) -> str:
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)}"


def _label(cls) -> str:
    name = getattr(cls, "name", None)
    return name if isinstance(name, str) else cls.__name__


def _validate(cls, name: str | None) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Flow)):
        raise TypeError(f"register_flow needs a subclass of fluxode.Flow, got {cls!r}")
    key = name if name is not None else getattr(cls, "name", None)
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"flow class {_where(cls)} needs a non-empty string `name` "
                         f"(a class attribute, or register_flow(name=...)), got {key!r}")
    missing = [m for m in ("blocks", "equations") if getattr(cls, m) is getattr(Flow, m)]
    if missing:
        raise ValueError(f"flow class {_where(cls)} must define "
                         f"{' and '.join(m + '()' for m in missing)}")


FLOWS = Registry()

REFUSED: dict[str, str] = {}
"""Names of optimizers fluxode declines to model as flows → the reason (``flows.refusals``):
``make_flow``/``FlowOptimizer`` raise it instead of "unknown flow"."""


def register_flow(cls: type[Flow] | None = None, *, name: str | None = None,
                  replace: bool = False):
    """Register a Flow subclass: ``@register_flow``, ``@register_flow(name=..., replace=...)``
    or ``register_flow(MyFlow)``. Returns the class."""
    if cls is None:
        return lambda c: FLOWS.register(c, name, replace)
    return FLOWS.register(cls, name, replace)


# --- building flows ----------------------------------------------------------------------------
def flow_class(flow: str | type[Flow] | Flow) -> type[Flow]:
    """The Flow class of a registered name, a Flow subclass or a Flow instance."""
    if isinstance(flow, Flow):
        return type(flow)
    if isinstance(flow, type) and issubclass(flow, Flow):
        return flow
    if isinstance(flow, str):
        try:
            return FLOWS[flow]
        except KeyError:
            if flow in REFUSED:
                raise ValueError(f"{flow!r} has no flow in fluxode: {REFUSED[flow]}") from None
            raise ValueError(f"flow must be one of {sorted(FLOWS)} (or a Flow class or "
                             f"instance), got {flow!r}") from None
    raise ValueError(f"flow must be a registered name, a Flow subclass or a Flow instance, "
                     f"got {flow!r}")


def hyperparameter_names(cls: type[Flow]) -> tuple[str, ...] | None:
    """The keyword hyperparameters of ``cls.__init__`` (None: it accepts any, ``**kwargs``)."""
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def check_hyperparameters(flow: str | type[Flow] | Flow, names) -> None:
    """ValueError naming the flow and the first hyperparameter it does not take."""
    cls = flow_class(flow)
    known = hyperparameter_names(cls)
    if known is None:
        return
    for n in names:
        if n not in known:
            raise ValueError(f"flow {_label(cls)!r} has no hyperparameter {n!r}; it takes "
                             f"{', '.join(known)}")


def make_flow(flow: str | type[Flow] | Flow, **hyperparameters) -> Flow:
    """A flow from a registered name, a Flow subclass or a ready instance (returned as is),
    e.g. ``make_flow("adamw", lr=1e-3)`` or ``make_flow(Lion, lr=1e-4)``."""
    if isinstance(flow, Flow):
        if hyperparameters:
            raise ValueError(f"hyperparameters {sorted(hyperparameters)} given with a "
                             f"ready-made flow {flow!r}")
        return flow
    cls = flow_class(flow)
    check_hyperparameters(cls, hyperparameters)
    try:
        return cls(**hyperparameters)
    except TypeError as err:
        raise ValueError(f"flow {_label(cls)!r}: {err}") from None
