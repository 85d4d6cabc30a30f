"""Name a model on the command line: ``gpt``, ``hf:<arch>`` or ``module.path:factory``.

A target resolves to a *factory* ``make(width=None, depth=None, device=None) -> nn.Module``
so the same name serves ``inspect`` (defaults, built on the meta device) and the width/depth
sweeps of coordinate checks and transfer runs.

Model options (``heads``, ``head_dim``, ``vocab``, ``seq_len``, ``mlp``, ``norm``, ``pos``,
``parallel_residual``, ``tie_embeddings``, ``bias``) are honoured for every kind of target or
refused with a :class:`~fxparam.errors.ConfigError` naming the option -- never silently dropped:

- ``gpt``: fields of :class:`fxparam.models.GPTConfig`;
- ``hf:<arch>`` (``gpt2``, ``llama``, ``gpt_neox``, ``bert``, ``mistral``, ``qwen2``, ``mixtral``;
  ``t5`` is refused, naming why): mapped onto the architecture's config fields (``heads`` ->
  ``num_attention_heads``, and key/value heads keeping grouped-query attention's grouping;
  ``vocab`` -> ``vocab_size``, ...); an option the architecture fixes (Llama's SwiGLU, RMSNorm and
  RoPE; Qwen2's q/k/v biases; Mixtral's SwiGLU experts) is accepted when it names what the
  architecture already is and refused otherwise;
- ``module.path:factory``: passed as keyword arguments when the factory accepts them.

``module.path`` is imported with the current directory on ``sys.path`` (so ``mymodel:make``
works for ``./mymodel.py`` from the ``fxparam`` script too), and ``path/to/file.py:make``
loads a file directly.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect as _inspect
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from fxparam.errors import ConfigError

ModelFactory = Callable[..., nn.Module]

#: Every model option the command line knows (``fxparam.cli._gpt_options``).
MODEL_OPTIONS = (
    "heads",
    "head_dim",
    "mlp",
    "norm",
    "pos",
    "parallel_residual",
    "tie_embeddings",
    "bias",
    "vocab",
    "seq_len",
)


@contextlib.contextmanager
def _on(device: str | torch.device | None) -> Iterator[None]:
    if device is None:
        yield
    else:
        with torch.device(device):
            yield


def _gpt_factory(options: dict[str, Any]) -> ModelFactory:
    from fxparam.models import GPT, GPTConfig

    def make(width: int | None = None, depth: int | None = None, device: str | torch.device | None = None) -> nn.Module:
        opts = dict(options)
        if width is not None:
            opts["width"] = width
        if depth is not None:
            opts["depth"] = depth
        try:
            cfg = GPTConfig(**opts)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad option for the built-in GPT: {exc}") from exc
        with _on(device):
            return GPT(cfg)

    return make


#: What each Hugging Face architecture fixes: (mlp, norm, pos), fields for heads / kv heads,
#: positions, and which boolean options it has a config field for. ``heads``: the query-head field
#: first, then key/value heads set equal to it (multi-head attention); ``kv_heads``: a key/value head
#: field that keeps the small config's grouping (grouped-query attention: query heads per kv head
#: fixed); ``head_dim``: a config field for the head dim, set to width / heads; ``bias``: None = the
#: architecture has biases and no switch, () = it has none (``--no-bias`` holds already), else the
#: switches.
_HF_FIXED: dict[str, dict[str, Any]] = {
    "gpt2": {"mlp": "gelu", "norm": "layernorm", "pos": "learned", "heads": ("n_head",),
             "positions": "n_positions", "parallel_residual": None, "bias": None},
    "llama": {"mlp": "swiglu", "norm": "rmsnorm", "pos": "rope",
              "heads": ("num_attention_heads", "num_key_value_heads"), "positions": "max_position_embeddings",
              "parallel_residual": None, "bias": ("attention_bias", "mlp_bias"), "head_dim": "head_dim"},
    "gpt_neox": {"mlp": "gelu", "norm": "layernorm", "pos": "rope", "heads": ("num_attention_heads",),
                 "positions": "max_position_embeddings", "parallel_residual": "use_parallel_residual",
                 "bias": None},
    "bert": {"mlp": "gelu", "norm": "layernorm", "pos": "learned", "heads": ("num_attention_heads",),
             "positions": "max_position_embeddings", "parallel_residual": None, "bias": None},
    "mistral": {"mlp": "swiglu", "norm": "rmsnorm", "pos": "rope", "heads": ("num_attention_heads",),
                "kv_heads": "num_key_value_heads", "positions": "max_position_embeddings",
                "parallel_residual": None, "bias": (), "head_dim": "head_dim"},
    "qwen2": {"mlp": "swiglu", "norm": "rmsnorm", "pos": "rope", "heads": ("num_attention_heads",),
              "kv_heads": "num_key_value_heads", "positions": "max_position_embeddings",
              "parallel_residual": None, "bias": None},  # q/k/v biases are part of the architecture
    "mixtral": {"mlp": "swiglu", "norm": "rmsnorm", "pos": "rope", "heads": ("num_attention_heads",),
                "kv_heads": "num_key_value_heads", "positions": "max_position_embeddings",
                "parallel_residual": None, "bias": (), "head_dim": "head_dim"},  # mlp: each expert's
}


def hf_overrides(arch: str, options: dict[str, Any]) -> dict[str, Any]:
    """Config fields of ``hf:<arch>`` for the model options (all but ``heads``/``head_dim``).

    Raises:
        ConfigError: an option the architecture cannot express (e.g. ``--mlp gelu`` for Llama,
            ``--no-bias`` for GPT-2), naming the option and what the architecture has.

    Example:
        >>> hf_overrides("llama", {"vocab": 32000, "seq_len": 4096, "mlp": "swiglu"})
        {'vocab_size': 32000, 'max_position_embeddings': 4096}
    """
    from fxparam.models import hf

    name = hf.check_architecture(arch)  # unknown, or refused with the reason (hf:t5)
    fixed = _HF_FIXED[name]
    out: dict[str, Any] = {}
    for key, value in options.items():
        if value is None or key in ("heads", "head_dim"):
            continue
        if key in ("mlp", "norm", "pos"):
            if value != fixed[key]:
                raise ConfigError(
                    f"hf:{arch}: --{key} {value} is not available: this architecture has {key} {fixed[key]!r} "
                    "(use --model gpt to vary it)"
                )
        elif key == "vocab":
            out["vocab_size"] = int(value)
        elif key == "seq_len":
            out[fixed["positions"]] = int(value)
        elif key == "tie_embeddings":
            out["tie_word_embeddings"] = bool(value)
        elif key == "parallel_residual":
            if fixed["parallel_residual"] is None:
                raise ConfigError(f"hf:{arch}: --parallel-residual is not available for this architecture")
            out[fixed["parallel_residual"]] = bool(value)
        elif key == "bias":
            if fixed["bias"] == ():  # a bias-free architecture: --no-bias holds already, biases cannot be added
                if value:
                    raise ConfigError(f"hf:{arch}: bias=True is not available: this architecture has no biases")
                continue
            if value:
                continue
            if fixed["bias"] is None:
                raise ConfigError(f"hf:{arch}: --no-bias is not available: its config has no switch for biases")
            out.update({f: False for f in fixed["bias"]})
        else:
            raise ConfigError(f"hf:{arch}: unknown model option {key!r}")
    return out


def _hf_factory(arch: str, options: dict[str, Any]) -> ModelFactory:
    from fxparam.models import hf

    name = hf.check_architecture(arch)
    extra = hf_overrides(arch, options)  # refuses options the architecture cannot express, up front
    heads, head_dim = options.get("heads"), options.get("head_dim")
    if heads is not None and head_dim is not None:
        raise ConfigError(f"hf:{arch}: give --heads or --head-dim, not both")

    def make(width: int | None = None, depth: int | None = None, device: str | torch.device | None = None) -> nn.Module:
        base = hf.hf_config(arch, **extra)
        fields = hf.WIDTH_FIELDS[name]
        heads_fields = _HF_FIXED[name]["heads"]
        d0 = getattr(base, fields[0])
        w = d0 if width is None else width
        overrides = dict(extra)
        if heads is not None:
            n_heads = heads
        elif head_dim is not None:
            if w % head_dim:
                raise ConfigError(f"hf:{arch}: width {w} is not a multiple of --head-dim {head_dim}")
            n_heads = w // head_dim
        else:  # the small config's head dim, heads grow with width
            base_head_dim = d0 // getattr(base, heads_fields[0])
            if w % base_head_dim:
                raise ConfigError(f"hf:{arch}: width {w} is not a multiple of the head dim {base_head_dim}")
            n_heads = w // base_head_dim
        if w % n_heads:
            raise ConfigError(f"hf:{arch}: width {w} is not divisible into {n_heads} heads")
        for f in heads_fields:
            overrides[f] = n_heads
        kv_field = _HF_FIXED[name].get("kv_heads")
        if kv_field is not None:  # grouped-query attention: keep the query heads per key/value head
            group = getattr(base, heads_fields[0]) // getattr(base, kv_field)
            if n_heads % group:
                raise ConfigError(
                    f"hf:{arch}: {n_heads} heads cannot keep the architecture's grouped-query attention "
                    f"({group} query heads per key/value head); give --heads a multiple of {group}"
                )
            overrides[kv_field] = n_heads // group
        if _HF_FIXED[name].get("head_dim"):
            overrides[_HF_FIXED[name]["head_dim"]] = w // n_heads
        if width is not None:
            overrides[fields[0]] = width
            for f in fields[1:]:
                overrides[f] = getattr(base, f) * width // d0
        if depth is not None:
            overrides[hf.DEPTH_FIELDS[name]] = depth
        return hf.hf_model(arch, device=device, **overrides)

    return make


def import_target(module_name: str) -> Any:
    """Import ``module_name`` (a dotted name, or a ``.py`` file path) with the current directory importable.

    Raises:
        ConfigError: the module cannot be imported (the import error is in the message).
    """
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ConfigError(f"no such file {module_name!r}")
        mod_name = f"_fxparam_user_{path.stem}"
        if mod_name in sys.modules:
            return sys.modules[mod_name]
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot load {module_name!r} as a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        sys.path.insert(0, os.fspath(path.resolve().parent))  # its own sibling imports
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[mod_name]
            raise ConfigError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
        return module
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # the `fxparam` script, unlike `python -m`, does not add it
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from exc


def user_factory_callable(spec: str) -> Callable[..., Any]:
    """The callable named by ``module.path:factory`` (or ``file.py:factory``)."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ConfigError(f"model {spec!r}: write module.path:factory or path/to/file.py:factory")
    try:
        module = import_target(module_name)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (model {spec!r})") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"{spec!r}: {module_name} has no callable {attr!r}")
    return factory


def _user_factory(spec: str, options: dict[str, Any] | None = None) -> ModelFactory:
    factory = user_factory_callable(spec)
    params = _inspect.signature(factory).parameters
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    takes = {k for k in ("width", "depth", *MODEL_OPTIONS) if k in params or var_kw}
    fixed = {k: v for k, v in (options or {}).items() if v is not None}
    for key in fixed:
        if key not in takes:
            raise ConfigError(
                f"{spec}: the factory takes no {key!r} argument, so --{key.replace('_', '-')} cannot be honoured"
            )

    def make(width: int | None = None, depth: int | None = None, device: str | torch.device | None = None) -> nn.Module:
        kwargs = dict(fixed)
        for key, value in (("width", width), ("depth", depth)):
            if value is None:
                continue
            if key not in takes:
                raise ConfigError(
                    f"{spec}: the factory takes no {key!r} argument, so it cannot be built at {key}={value} "
                    f"(a {key} sweep, or a fixed {key} the run needs)"
                )
            kwargs[key] = value
        missing = [
            k for k, prm in params.items()
            if prm.default is prm.empty and prm.kind in (prm.POSITIONAL_OR_KEYWORD, prm.KEYWORD_ONLY) and k not in kwargs
        ]
        if missing:  # name the fix, not only Python's TypeError (review R17)
            flags = [f"--{k.replace('_', '-')}" for k in missing if k in MODEL_OPTIONS]
            raise ConfigError(
                f"{spec}: the factory requires {', '.join(repr(k) for k in missing)}, which this run does not pass"
                + (f"; give {', '.join(flags)} on the command line" if flags else "")
                + ("; 'depth' is passed only when a depth is given (inspect --depth, --depths of a sweep)" if "depth" in missing else "")
                + "; or give the factory defaults for them"
            )
        try:
            with _on(device):
                model = factory(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"calling {spec}({', '.join(f'{k}={v}' for k, v in kwargs.items())}) failed: {exc}") from exc
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
        return model

    return make


def resolve(spec: str, **options: Any) -> ModelFactory:
    """Factory for ``gpt`` (GPTConfig options), ``hf:<arch>`` or ``module.path:factory``.

    Args:
        spec: the target name.
        **options: model options (see the module docstring); None values are ignored.

    Returns:
        ``make(width=None, depth=None, device=None) -> nn.Module``; ``device="meta"`` builds
        without memory (what ``fxparam inspect`` does).

    Raises:
        ConfigError: unknown target, an import failure, or an option the target cannot honour.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if spec == "gpt":
        return _gpt_factory(options)
    if spec.startswith("hf:"):
        return _hf_factory(spec[3:], options)
    if ":" in spec:
        return _user_factory(spec, options)
    raise ConfigError(
        f"unknown model {spec!r}: use 'gpt', 'hf:<arch>' (gpt2, llama, gpt_neox, bert, mistral, qwen2, mixtral), "
        "'module.path:factory' or 'path/to/file.py:factory'"
    )
