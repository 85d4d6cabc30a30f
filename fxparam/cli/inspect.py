"""``fxparam inspect TARGET``: print what fxparam finds in a model (and, with --plan, what it would do)."""

from __future__ import annotations

import argparse

from fxparam.cli._gpt_options import add_model_options, gpt_options
from fxparam.configs import config_names  # the registered parameterizations (their classes name themselves)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show a model's structure: blocks, residuals, roles, attention, ties")
    p.add_argument(
        "target", nargs="?", default=None, help="same as --model: gpt | hf:<arch> | module.path:factory"
    )
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="print the Analysis (or Plan) as JSON")
    p.add_argument(
        "--plan",
        default=None,
        metavar="CONFIG",
        help=f"also show the plan of a parameterization: {', '.join(config_names())}; join with '+' "
        "(e.g. 'mup+supar')",
    )
    p.add_argument("--base-width", type=int, default=None, help="base width for --plan (muP/CompleteP)")
    p.add_argument("--base-depth", type=int, default=None, help="base depth for --plan (CompleteP)")
    p.add_argument("--density", type=float, default=None, help="mask density for --plan with supar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import fxparam
    from fxparam.checks.targets import resolve

    spec = args.target or args.model
    make = resolve(spec, **gpt_options(args))
    model = _build_on_meta(make, args.width, args.depth)
    inputs = _token_inputs(model, spec, args)
    if args.plan is None:
        analysis = fxparam.inspect(model, inputs)
        print(analysis.to_json() if args.json else analysis)
        return 0
    kwargs = {
        k: v
        for k, v in (
            ("base_width", args.base_width),
            ("base_depth", args.base_depth),
            ("density", args.density),
        )
        if v is not None
    }
    plan = fxparam.plan(model, args.plan, example_inputs=inputs, **kwargs)
    print(plan.to_json() if args.json else plan.summary())
    return 0


def _token_inputs(model, spec, args):
    """Example inputs for a user factory's model that cannot describe its own (no
    ``example_inputs()``, no ``config.vocab_size``): token ids ``[2, 8]`` (``int64``, zeros), what
    ``coord-check`` and ``transfer`` feed such a model; None otherwise (fxparam's own default).

    Raises:
        ConfigError: the model's forward does not take token ids, naming the fix (an
            ``example_inputs()`` method: the CLI cannot pass tensors).
    """
    import torch

    from fxparam.errors import ConfigError

    if spec == "gpt" or spec.startswith("hf:") or callable(getattr(model, "example_inputs", None)):
        return None
    if isinstance(getattr(getattr(model, "config", None), "vocab_size", None), int):
        return None
    first = next(model.parameters(), None)
    ids = torch.zeros(2, 8, dtype=torch.long, device=first.device if first is not None else "meta")
    try:
        with torch.no_grad():
            model(ids)
    except Exception as exc:
        raise ConfigError(
            f"inspect {spec}: {type(model).__name__} has no example_inputs() method and its forward does not take "
            f"token ids [2, 8] ({type(exc).__name__}: {exc}); give the model class an example_inputs() method "
            "returning a small input (the command line cannot pass tensors), or call fxparam.inspect(model, "
            "example_inputs=...) from Python"
        ) from exc
    return ids


def _build_on_meta(make, width, depth):
    """The model on the meta device (no memory: a 7B config inspects in seconds); a factory
    that cannot build there (e.g. it loads weights) is built normally."""
    from fxparam.errors import FxparamError

    try:
        return make(width=width, depth=depth, device="meta")
    except FxparamError:
        raise
    except Exception:
        return make(width=width, depth=depth)
