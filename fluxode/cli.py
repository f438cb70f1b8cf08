"""The ``fluxode`` command line. Each subcommand lives in ``fluxode/commands/<name>.py`` with
``add_arguments(parser)`` and ``run(args) -> int``; its docstring's first line is its help."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import re
import sys

COMMANDS = ("demo", "flows", "verify", "compare", "limit", "stability", "train", "bench")


def _module(name: str):
    path = f"fluxode.commands.{name}"
    return importlib.import_module(path) if importlib.util.find_spec(path) else None


def _summary(name: str) -> str | None:
    """A command module's help line (its docstring's first line), read from its source without
    importing it (None when the module is absent): ``fluxode <cmd>`` imports only <cmd>'s
    module and what it needs."""
    spec = importlib.util.find_spec(f"fluxode.commands.{name}")
    if spec is None or not spec.origin:
        return None
    with open(spec.origin, encoding="utf-8") as f:
        doc = _DOC.match(f.read())  # the leading string (parsing the module costs more)
    return (inspect.cleandoc(doc.group(2)).splitlines() or [""])[0] if doc else ""


_DOC = re.compile(r'\s*[rR]?("""|\'\'\')(.*?)\1', re.DOTALL)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (``only``) one whose other subcommands carry just their help line."""
    parser = argparse.ArgumentParser(
        prog="fluxode", description="Optimizers as ODE flows: integrate, discretize, compare.")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        if only is not None and name != only:
            doc = _summary(name)
            if doc is not None:
                sub.add_parser(name, help=doc)
            continue
        mod = _module(name)
        if mod is None:
            continue
        doc = (mod.__doc__ or "").strip().splitlines()
        p = sub.add_parser(name, help=doc[0] if doc else "", description=mod.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")
        p.set_defaults(_run=mod.run)
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not an option), if known."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def one_line(err: BaseException) -> str:
    """The error's message as one line: ANSI escapes removed, lines joined."""
    text = _ANSI.sub("", str(err))
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return "; ".join(lines) or type(err).__name__


def classify(err: BaseException) -> tuple[int, str]:
    """(exit code, message) for an expected failure; the message names the cause and the fix.

    2: bad input (ValueError: arguments, checkpoints, output directories, budgets);
    1: the computation failed (divergence, solver budget, numerics) or the filesystem did;
    130: interrupted."""
    from .engine import IntegrationError

    msg = one_line(err)
    if isinstance(err, KeyboardInterrupt):
        return 130, (msg if str(err) else "interrupted; outputs already written are whole "
                     "(written atomically)")
    if isinstance(err, IntegrationError):
        return 1, f"the solver stopped: {msg}"
    if isinstance(err, FloatingPointError):
        return 1, f"numerical failure: {msg}"
    if isinstance(err, ValueError):
        return 2, msg
    if isinstance(err, OSError):
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        reason = err.strerror or msg
        return 1, (f"cannot write or read a file{where}: {reason}: check the path, its "
                   "permissions and the free space")
    if isinstance(err, MemoryError):
        return 1, "out of memory: lower the problem size, --steps or --T"
    import torch

    if isinstance(err, torch.linalg.LinAlgError):
        return 1, (f"numerical failure in linear algebra: {msg} (a singular Hessian? use "
                   "another flow or problem)")
    if isinstance(err, (RuntimeError, ArithmeticError, AssertionError, TypeError)):
        return 1, (f"{type(err).__name__}: {msg} (rerun with --debug for the traceback)")
    return 1, f"internal error {type(err).__name__}: {msg} (rerun with --debug for the traceback)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:  # SIGINT while the commands are imported
        parser = build_parser(only=_command(argv))
    except KeyboardInterrupt:
        print("fluxode: interrupted", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (Exception, KeyboardInterrupt) as err:  # the one error boundary
        if getattr(args, "debug", False):
            raise
        code, msg = classify(err)
        print(f"fluxode {args.command}: error: {msg}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
