"""``fxparam inspect TARGET``: print what fxparam finds in a model."""

from __future__ import annotations

import argparse

from fxparam.cli._gpt_options import add_model_options, gpt_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show a model's structure: blocks, residuals, roles, attention, ties")
    p.add_argument("target", nargs="?", default=None, help="same as --model: gpt | hf:<arch> | module.path:factory")
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="print the Analysis as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import fxparam
    from fxparam.targets import resolve

    spec = args.target or args.model
    make = resolve(spec, **gpt_options(args))
    model = make(width=args.width, depth=args.depth)
    analysis = fxparam.inspect(model)
    print(analysis.to_json() if args.json else analysis)
    return 0
