"""The ``fluxode`` command line. Each subcommand lives in ``fluxode/commands/<name>.py`` with
``add_arguments(parser)`` and ``run(args) -> int``; its docstring's first line is its help."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

COMMANDS = ("demo", "flows", "verify", "compare", "limit", "stability", "train", "bench")


def _module(name: str):
    path = f"fluxode.commands.{name}"
    return importlib.import_module(path) if importlib.util.find_spec(path) else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fluxode", description="Optimizers as ODE flows: integrate, discretize, compare.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        mod = _module(name)
        if mod is None:
            continue
        doc = (mod.__doc__ or "").strip().splitlines()
        p = sub.add_parser(name, help=doc[0] if doc else "", description=mod.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except ValueError as err:  # bad input: one clear line, no traceback
        print(f"fluxode {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
