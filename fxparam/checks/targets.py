"""Name a model on the command line: ``gpt``, ``hf:<arch>`` or ``module.path:factory``.

A target resolves to a *factory* ``make(width=None, depth=None) -> nn.Module`` so the
same name serves ``inspect`` (defaults) and the width/depth sweeps of coordinate checks.
"""

from __future__ import annotations

import importlib
import inspect as _inspect
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from fxparam.errors import ConfigError

ModelFactory = Callable[..., nn.Module]


def _gpt_factory(options: dict[str, Any]) -> ModelFactory:
    from fxparam.models import GPT, GPTConfig

    def make(width: int | None = None, depth: int | None = None) -> nn.Module:
        opts = dict(options)
        if width is not None:
            opts["width"] = width
        if depth is not None:
            opts["depth"] = depth
        try:
            return GPT(GPTConfig(**opts))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad option for the built-in GPT: {exc}") from exc

    return make


def _hf_factory(arch: str, options: dict[str, Any]) -> ModelFactory:
    from fxparam.models import hf

    def make(width: int | None = None, depth: int | None = None) -> nn.Module:
        base = hf.hf_config(arch, **options)
        name = hf._ALIASES.get(arch, arch)
        overrides = dict(options)
        if width is not None:
            fields = hf.WIDTH_FIELDS[name]
            d0 = getattr(base, fields[0])
            heads_field = "n_head" if name == "gpt2" else "num_attention_heads"
            head_dim = d0 // getattr(base, heads_field)
            if width % head_dim:
                raise ConfigError(f"hf:{arch}: width {width} is not a multiple of the head dim {head_dim}")
            overrides[fields[0]] = width
            overrides[heads_field] = width // head_dim
            if name == "llama":
                overrides["num_key_value_heads"] = width // head_dim
            for f in fields[1:]:
                overrides[f] = getattr(base, f) * width // d0
        if depth is not None:
            overrides[hf.DEPTH_FIELDS[name]] = depth
        return hf.hf_model(arch, **overrides)

    return make


def _user_factory(spec: str) -> ModelFactory:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for model {spec!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"{spec!r}: {module_name} has no callable {attr!r}")
    params = _inspect.signature(factory).parameters
    takes = {k for k in ("width", "depth") if k in params}

    def make(width: int | None = None, depth: int | None = None) -> nn.Module:
        kwargs = {}
        for key, value in (("width", width), ("depth", depth)):
            if value is None:
                continue
            if key not in takes:
                raise ConfigError(f"{spec}: the factory takes no {key!r} argument, so it cannot be swept over {key}")
            kwargs[key] = value
        try:
            model = factory(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"calling {spec}({', '.join(f'{k}={v}' for k, v in kwargs.items())}) failed: {exc}") from exc
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
        return model

    return make


def resolve(spec: str, **gpt_options: Any) -> ModelFactory:
    """Factory for ``gpt`` (with GPTConfig options), ``hf:<arch>`` or ``module.path:factory``."""
    gpt_options = {k: v for k, v in gpt_options.items() if v is not None}
    if spec == "gpt":
        return _gpt_factory(gpt_options)
    if spec.startswith("hf:"):
        return _hf_factory(spec[3:], {})
    if ":" in spec:
        return _user_factory(spec)
    raise ConfigError(f"unknown model {spec!r}: use 'gpt', 'hf:<arch>' (gpt2, llama, gpt_neox, bert) or 'module.path:factory'")
