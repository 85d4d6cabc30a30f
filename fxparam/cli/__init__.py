"""The ``fxparam`` command line: one sub-command per module in this package.

Each sub-command module exposes ``register(subparsers)`` which adds its parser and
sets ``func`` (taking the parsed namespace, returning an exit code).  Sub-command
modules import nothing heavy at module level (torch, matplotlib, transformers load
inside ``func``), so ``fxparam --help`` stays fast.  Errors from
the ``FxparamError`` hierarchy become one-line messages, not tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fxparam.errors import FxparamError

# Sub-command modules, in the order ``--help`` lists them.
_COMMANDS = ["coord_check", "transfer", "inspect", "recipe", "collapse"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fxparam",
        description="Make a PyTorch model train well at any size (muP, CompleteP, SuPar, GNS).",
    )
    parser.add_argument("--version", action="version", version=f"fxparam {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"fxparam.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"fxparam.cli.{name}":
                continue  # sub-command not shipped in this build
            raise
        module.register(sub)
    return parser


def _version() -> str:
    from fxparam._version import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FxparamError as exc:
        print(f"fxparam {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
