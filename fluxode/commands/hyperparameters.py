"""Flow hyperparameters as command-line flags, derived from every registered flow's signature.

Each keyword of a registered flow's ``__init__`` (built-in or plugin: the registry loads the
``fluxode.flows`` entry points first) is one flag, ``--weight-decay`` for ``weight_decay``,
typed from the defaults the flows give it:

    float (or int and float)   --eps 1e-6
    int                        --max-dim 512
    bool                       --amsgrad / --no-amsgrad
    tuple of k numbers         --betas 0.9 0.99           (nargs = k; any count if flows differ)
    None, str, mixed           --schedule cosine:500      (ast.literal_eval, else the string)

Every flag defaults to None, "the flow's own default"; only the flags given reach the flow,
and one the chosen flow does not take is refused naming the flow and the hyperparameter.
A flag the command already defines for itself (``compare --h``) is left to the command.
"""

from __future__ import annotations

import argparse
import ast
import inspect

from ..flows.registry import FLOWS, flow_class, hyperparameter_names

_ANY = inspect.Parameter.empty


def _literal(text: str):
    """A Python literal if ``text`` is one (numbers, tuples, None, True), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _kind(default) -> tuple:
    if default is None or default is _ANY:
        return ("none",)
    if isinstance(default, bool):
        return ("bool",)
    if isinstance(default, int):
        return ("int",)
    if isinstance(default, float):
        return ("float",)
    if isinstance(default, (tuple, list)) and default and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in default):
        return ("tuple", len(default))
    return ("literal",)


def _options(kinds: set[tuple]) -> dict:
    """argparse options for a hyperparameter whose defaults (over all flows) have ``kinds``."""
    kinds = kinds - {("none",)}
    names = {k[0] for k in kinds}
    if names == {"bool"}:
        return {"action": argparse.BooleanOptionalAction}
    if names == {"int"}:
        return {"type": int}
    if names and names <= {"int", "float"}:
        return {"type": float}
    if names == {"tuple"}:
        sizes = {k[1] for k in kinds}
        return {"type": float, "nargs": sizes.pop() if len(sizes) == 1 else "+"}
    return {"type": _literal}


def table() -> dict[str, dict]:
    """hyperparameter → {"flows": [names], "options": argparse options}, over all flows."""
    seen: dict[str, tuple[list[str], set]] = {}
    for name, cls in FLOWS.items():
        for p in inspect.signature(cls).parameters.values():
            if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                continue
            flows, kinds = seen.setdefault(p.name, ([], set()))
            flows.append(name)
            kinds.add(_kind(p.default))
    return {hp: {"flows": flows, "options": _options(kinds)}
            for hp, (flows, kinds) in sorted(seen.items())}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_flags(parser, skip=()) -> None:
    """One flag per hyperparameter of any registered flow (default None: the flow's own).
    Call it after the command's own arguments: a flag the command already has is skipped."""
    taken = parser._option_string_actions  # the flags the command defines
    dests = {a.dest for a in parser._actions}
    added = []
    group = parser.add_argument_group(
        "flow hyperparameters", "torch.optim's names; only those given reach the flow "
        "(default: the flow's own)")
    for hp, info in table().items():
        f = flag(hp)
        if hp in skip or f in taken or f"--no-{f[2:]}" in taken or hp in dests:
            continue
        flows = info["flows"]
        who = ", ".join(flows) if len(flows) <= 6 else f"{len(flows)} flows"
        group.add_argument(f, dest=hp, default=None, help=f"({who})", **info["options"])
        added.append(hp)
    parser.set_defaults(_hyperparameters=tuple(added))


def collect(args, skip=(), flow=None) -> dict:
    """The hyperparameters given on the command line (tuples for lists). With ``flow`` (a
    name, class or instance), one the flow does not take is a ValueError naming both."""
    names = getattr(args, "_hyperparameters", ())
    hp = {n: getattr(args, n) for n in names if n not in skip}
    hp = {k: (tuple(v) if isinstance(v, list) else v) for k, v in hp.items() if v is not None}
    if flow is not None:
        cls = flow_class(flow)
        known = hyperparameter_names(cls)
        for k in hp:
            if known is not None and k not in known:
                raise ValueError(f"flow {cls.name!r} has no hyperparameter {k!r} ({flag(k)}); "
                                 f"it takes {', '.join(flag(n) for n in known)}")
    return hp
