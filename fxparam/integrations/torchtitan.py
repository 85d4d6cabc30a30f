"""torchtitan: a model converter that applies fxparam's plan when torchtitan builds the model.

torchtitan (>= 0.3) builds its models from a config tree (``model_spec.model.build()``, on the meta
device) and lets *model converters* rewrite that tree first. :func:`converter` returns the config of
:class:`FxparamConverter` (created on first use, so importing this module does not need
torchtitan); its ``convert`` wraps the root model config so that ``build()`` builds the model and
then applies ``fxparam.transform`` (plan: multipliers, attention scale via ``GQAttention.scaling``,
the planned init). torchtitan re-initialises the weights later (``init_weights``/``init_states`` on
the real device), so the converter wraps that too and re-draws the planned init afterwards.

Capture: FlexAttention cannot run on the meta device fxparam analyses on; during the analysis only,
torchtitan's ``FlexAttention`` inner module runs as causal SDPA with the same ``scale`` (same shapes,
same logit scale), which is all the analysis reads.

Then build the optimizer with :func:`fxparam.optimizer` (``fxparam.param_groups`` for torchtitan's
optimizer container) over the built model.

Example:
    >>> from torchtitan.models.llama3 import model_registry
    >>> from fxparam.integrations.torchtitan import converter
    >>> spec = model_registry("debugmodel", converters=[converter("completep", base_width=64, base_depth=2)])
    >>> with torch.device("meta"):
    ...     model = spec.model.build()
    >>> fxparam.plan_of(model).m_d
    4.0
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
from collections.abc import Iterator
from typing import Any

import torch

from fxparam.errors import ConfigError

_CONVERTER: type | None = None


@contextlib.contextmanager
def _flex_as_sdpa() -> Iterator[None]:
    """torchtitan's FlexAttention runs as causal SDPA (same scale) while fxparam captures on meta."""
    from torchtitan.models.common.attention import FlexAttention

    original = FlexAttention.forward

    def forward(self: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
                enable_gqa: bool = False, **kwargs: Any) -> torch.Tensor:
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=scale,
            enable_gqa=enable_gqa,
        )
        return out.transpose(1, 2)

    FlexAttention.forward = forward
    try:
        yield
    finally:
        FlexAttention.forward = original


def apply(model: torch.nn.Module, config: str | Any, *, vocab_size: int, seq_len: int = 16, **kwargs: Any) -> Any:
    """``fxparam.transform`` a torchtitan model (meta or real), keeping the planned init through torchtitan's.

    Args:
        model: a built torchtitan model (e.g. ``Llama3Model``).
        config: the parameterization (``"completep"``, ``"mup"``, a config object).
        vocab_size: the model's vocabulary size (for the capture's example tokens).
        seq_len: length of the example tokens.
        **kwargs: config fields (``base_width``, ``base_depth``...).

    Returns:
        The transformed model (the same object).

    Raises:
        fxparam errors from the analysis and lowering (each names the module and the fix).
    """
    import fxparam

    tokens = torch.randint(0, vocab_size, (1, seq_len))
    with _flex_as_sdpa():
        plan = fxparam.plan(model, config, example_inputs=(tokens,), **kwargs)
    out = fxparam.apply_plan(model, plan, init=model.parameters().__next__().device.type != "meta")
    _keep_planned_init(out, plan)
    return out


def _keep_planned_init(model: torch.nn.Module, plan: Any) -> None:
    """Re-draw the planned init after torchtitan's own ``init_weights`` / ``init_states``."""
    from fxparam.lowering.eager import _reinit

    for name in ("init_weights", "init_states"):
        original = getattr(model, name, None)
        if original is None:
            continue

        def wrapped(self: Any, *args: Any, __original: Any = original, **kw: Any) -> Any:
            result = __original(*args, **kw)
            _reinit(self, plan)
            return result

        setattr(model, name, types.MethodType(wrapped, model))


def _converter_class() -> type:
    global _CONVERTER
    if _CONVERTER is not None:
        return _CONVERTER
    try:
        from torchtitan.protocols.model import ModelConfigConverter
    except ImportError as exc:
        raise ConfigError(
            "fxparam.integrations.torchtitan needs torchtitan >= 0.3 (pip install 'fxparam[torchtitan]')"
        ) from exc

    class FxparamConverter(ModelConfigConverter):
        """Applies a fxparam parameterization to the model when torchtitan builds it."""

        @dataclasses.dataclass(kw_only=True, slots=True)
        class Config(ModelConfigConverter.Config):
            parameterization: str = "completep"
            options: dict = dataclasses.field(default_factory=dict)
            seq_len: int = 16

        def __init__(self, config: Config) -> None:
            self.config = config

        def convert(self, model_config: Any) -> Any:
            cfg_cls = type(model_config)
            conv = self.config

            class PlannedConfig(cfg_cls):  # type: ignore[valid-type, misc]
                def build(self, **kwargs: Any) -> Any:
                    model = cfg_cls.build(self, **kwargs)
                    return apply(model, conv.parameterization, vocab_size=self.vocab_size, seq_len=conv.seq_len,
                                 **conv.options)

            PlannedConfig.__name__ = f"Fxparam{cfg_cls.__name__}"
            PlannedConfig.__qualname__ = f"Fxparam{cfg_cls.__qualname__}"
            return PlannedConfig(**{f.name: getattr(model_config, f.name) for f in dataclasses.fields(model_config)
                                    if f.init})

    _CONVERTER = FxparamConverter
    return FxparamConverter


def converter(parameterization: str = "completep", *, seq_len: int = 16, **options: Any) -> Any:
    """A torchtitan converter config applying ``parameterization`` at model build.

    Args:
        parameterization: ``"completep"``, ``"mup"``, ...
        seq_len: example sequence length for fxparam's capture.
        **options: config fields (``base_width``, ``base_depth``, ``alpha``...).

    Returns:
        ``FxparamConverter.Config`` for ``model_registry(..., converters=[...])``.

    Raises:
        ConfigError: torchtitan is not installed.
    """
    return _converter_class().Config(parameterization=parameterization, options=dict(options), seq_len=seq_len)


__all__ = ["apply", "converter"]
