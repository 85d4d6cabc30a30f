"""Parameterization configs: frozen pydantic nouns, one per pass.

A string such as ``"completep"`` is only a name for a default config; ``"a+b"``
composes.  Every field is validated with a message that says what to do.

Each config class says what it needs, and everything else is derived from it: defining a
subclass of :class:`ParamConfig` with a ``kind: Literal["<name>"]`` field registers the
name shortcut (``fxparam.transform(model, "<name>")``, the CLI's ``--param`` choices,
:func:`config_names`); its required fields are the base keywords a sweep must supply
(:func:`base_kwargs`); a ``base_width`` / ``base_depth`` field says it should be invariant
in width / depth (:func:`invariant_axes`).  The recipe for a new parameterization (one
config, one pass, one test file) is in ``docs/internals.md``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from fxparam.errors import ConfigError

#: Name shortcut -> config class, filled by the classes themselves (:meth:`_Config.__pydantic_init_subclass__`).
_REGISTRY: dict[str, type[_Config]] = {}


class _Config(BaseModel):
    """Base of every config: frozen, validated, registered under its ``kind`` name.

    Class attributes a config sets to say what it is (all derived uses read them):

    - ``width_rule``: a width parameterization (SP, muP, ...): at most one per
      composition, and its pass runs first;
    - ``depth_rule``: applies the depth rule (residual branches x ``1/m_L**alpha``): at most
      one per composition;
    - ``named``: reachable by its ``kind`` name (False for :class:`Composed`).
    """

    # allow_inf_nan=False: an inf multiplier or std is refused, not turned into NaN logits (issue 14)
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    width_rule: ClassVar[bool] = False
    depth_rule: ClassVar[bool] = False
    named: ClassVar[bool] = True

    version: int = Field(1, description="config schema version (for saved plans)")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls.named and cls.shortcut():
            register_config(cls)

    @classmethod
    def shortcut(cls) -> str | None:
        """The name of this config (its ``kind`` field's default), or None when it has none."""
        kind = cls.model_fields.get("kind")
        return kind.default if kind is not None and isinstance(kind.default, str) else None

    @classmethod
    def required_fields(cls) -> tuple[str, ...]:
        """Fields without a default (``base_width``, ``base_depth``, ``density``...): what a caller must give."""
        return tuple(name for name, f in cls.model_fields.items() if f.is_required())

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        """``base_width=True`` is a mistake, not the width 1 (bool is an int subclass in Python)."""
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key)
                if isinstance(value, bool) and field is not None and "bool" not in str(field.annotation):
                    raise ValueError(f"{key} must be a number, got {value!r}: pass e.g. {key}=256")
        return data

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_explain(type(self).__name__, exc)) from None

    @property
    def name(self) -> str:
        return type(self).__name__.lower()


#: Public name of the config base class (subclass it to add a parameterization).
ParamConfig = _Config


def register_config(cls: type[_Config]) -> type[_Config]:
    """Register ``cls`` under its ``kind`` name (done automatically when a config class is defined).

    Returns:
        ``cls``.

    Raises:
        ConfigError: ``cls`` has no ``kind`` default, or another class already has that name.
    """
    name = cls.shortcut()
    if not name:
        raise ConfigError(f"{cls.__name__} has no kind: give it a field kind: Literal['<name>'] = '<name>'")
    other = _REGISTRY.get(name)
    if other is not None and (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ConfigError(
            f"two configs are named {name!r}: {other.__module__}.{other.__qualname__} and "
            f"{cls.__module__}.{cls.__qualname__}; give the new one another kind"
        )
    _REGISTRY[name] = cls
    return cls


def unregister_config(cls: type[_Config]) -> None:
    """Remove ``cls``'s name shortcut (tests that register a toy parameterization clean up with it)."""
    name = cls.shortcut()
    if name is not None and _REGISTRY.get(name) is cls:
        del _REGISTRY[name]


def config_names() -> list[str]:
    """Every registered name shortcut, sorted (the CLI's ``--param`` choices)."""
    return sorted(_REGISTRY)


def config_class(name: str) -> type[_Config]:
    """The config class registered as ``name``.

    Raises:
        ConfigError: no config has that name (the message lists the choices).
    """
    cls = _REGISTRY.get(name.strip().lower())
    if cls is None:
        raise ConfigError(f"unknown parameterization {name!r}; choose from {config_names()} (join with '+')")
    return cls


def _classes(config: str) -> list[type[_Config]]:
    return [config_class(n) for n in config.split("+") if n.strip()]


def required_fields_of(config: str) -> set[str]:
    """The fields the named config(s) cannot default (``"completep"`` -> ``{"base_width", "base_depth"}``).

    Raises:
        ConfigError: an unknown name.
    """
    return {f for cls in _classes(config) for f in cls.required_fields()}


def base_kwargs(config: str, **available: Any) -> dict[str, Any]:
    """The required fields of the named config(s), taken from ``available``.

    Example:
        >>> base_kwargs("completep+supar", base_width=64, base_depth=2, density=0.5)
        {'base_width': 64, 'base_depth': 2, 'density': 0.5}
        >>> base_kwargs("sp", base_width=64)
        {}

    Raises:
        ConfigError: an unknown name.
    """
    out: dict[str, Any] = {}
    for cls in _classes(config):
        out.update({f: available[f] for f in cls.required_fields() if f in available})
    return out


def invariant_axes(config: str) -> dict[str, bool]:
    """Whether the named config(s) should make training invariant in width / depth.

    A config with a ``base_width`` field is a width parameterization (muP-like); one with a
    ``base_depth`` field a depth parameterization.  SP has neither: the negative control.

    Example:
        >>> invariant_axes("mup"), invariant_axes("completep"), invariant_axes("sp")
        ({'width': True, 'depth': False}, {'width': True, 'depth': True}, {'width': False, 'depth': False})
    """
    classes = _classes(config)
    return {
        "width": any("base_width" in c.model_fields for c in classes),
        "depth": any("base_depth" in c.model_fields for c in classes),
    }


class SP(_Config):
    """Standard parameterization: one init std for every weight, no multipliers, one LR.

    The baseline, and the negative control of every invariance test.
    """

    width_rule: ClassVar[bool] = True

    kind: Literal["sp"] = "sp"
    init_std: float = Field(0.02, gt=0, description="std of every weight matrix and embedding (sigma)")


class MuP(_Config):
    """Maximal update parameterization (Tensor Programs V), Adam and SGD rules.

    Example:
        >>> MuP(base_width=256).embedding_multiplier
        1.0
    """

    width_rule: ClassVar[bool] = True

    kind: Literal["mup"] = "mup"
    base_width: int = Field(..., gt=0, description="width d_base the base hyperparameters were tuned at")
    init_std: float = Field(0.02, gt=0, description="base init std sigma (at base width)")
    embedding_multiplier: float = Field(1.0, gt=0, description="alpha_in: forward multiplier on embedding outputs")
    output_multiplier: float = Field(1.0, gt=0, description="alpha_out: readout output is scaled by alpha_out / m_d")
    attention: Literal["mup", "sp"] = Field(
        "mup", description="logit scale rule: 'mup' = alpha_attn / d_head, 'sp' = keep the model's 1/sqrt(d_head)"
    )
    attn_multiplier: float | None = Field(
        None, gt=0, description="alpha_attn; default sqrt(base_head_dim) so the base model matches SP"
    )
    base_head_dim: int | None = Field(
        None,
        gt=0,
        description="head dim at base width; default: the model's head dim (heads grow with width). "
        "Set it when the number of heads is fixed and the head dim grows.",
    )
    zero_readout: bool = Field(False, description="zero-initialise the (untied) readout")

    @model_validator(mode="after")
    def _check(self) -> MuP:
        if self.attention == "sp" and (self.attn_multiplier is not None or self.base_head_dim is not None):
            raise ValueError("attn_multiplier/base_head_dim only apply with attention='mup'")
        return self


class CompleteP(MuP):
    """CompleteP: muP in width plus depth-muP with exponent alpha (Dey et al. 2025).

    Residual branches are multiplied by ``1 / m_L**alpha`` with ``m_L = depth / base_depth``;
    alpha = 1 (default) is CompleteP, alpha = 0.5 is "depth-muP".
    """

    depth_rule: ClassVar[bool] = True

    kind: Literal["completep"] = "completep"  # type: ignore[assignment]
    base_depth: int = Field(..., gt=0, description="number of residual blocks L_base of the tuned base model")
    alpha: float = Field(1.0, ge=0.5, le=1.0, description="depth exponent alpha in [0.5, 1]")


class DepthScaled(_Config):
    """Only the depth part: residual branches multiplied by ``1 / m_L**alpha``; widths untouched."""

    depth_rule: ClassVar[bool] = True

    kind: Literal["depthscaled"] = "depthscaled"
    base_depth: int = Field(..., gt=0)
    alpha: float = Field(1.0, ge=0.5, le=1.0)


class SuPar(_Config):
    """SμPar: static random masks on hidden weights with density-corrected init and LR.

    Masks the hidden matmuls inside residual blocks (qkv, attention out, MLP in/gate/out;
    never embeddings, readout, norms or biases), each entry kept with probability
    ``density``, as a pure function of ``(seed, parameter FQN)``.  Composed with a width
    parameterization (muP/CompleteP) the masked weights' init std becomes
    ``sigma / sqrt(m_d * rho)`` and their LR ``eta / (m_d * rho)`` (Adam and SGD); weight
    decay and eps keep the dense rule.  Composed with SP, the SP init and LR are
    density-corrected the same way.  On its own (no width pass) it only masks: the
    model's own init and LR are left as they are (see ``fxparam/passes/supar.py``).

    Example:
        >>> cfg = SuPar(density=0.25, overrides={"re:.*attn.*": 0.5})
        >>> cfg.correct, cfg.store_masks
        (True, False)
    """

    kind: Literal["supar"] = "supar"
    density: float = Field(..., description="fraction of weights kept, in (0, 1]")
    seed: int = Field(0, description="masks are a pure function of (seed, parameter FQN)")
    overrides: dict[str, float] = Field(
        default_factory=dict,
        description="per-parameter density: exact parameter FQN, or 're:<pattern>' matched with re.fullmatch "
        "(exact FQN first, then patterns in order; first match wins). Each key must match a maskable weight.",
    )
    store_masks: bool = Field(False, description="save masks in state_dict (adds keys) instead of re-deriving them")
    correct: bool = Field(
        True,
        description="apply the density correction (init std / sqrt(rho), LR / rho); False = masks only, "
        "the negative control of the sparse coordinate check",
    )

    @field_validator("density")
    @classmethod
    def _density(cls, v: float) -> float:
        if not 0.0 < v <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {v}")
        return v

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, v: dict[str, float]) -> dict[str, float]:
        for key, d in v.items():
            if not key or key == "re:":
                raise ValueError("an override key is empty: use an exact parameter FQN or 're:<pattern>'")
            if key.startswith("re:"):
                try:
                    re.compile(key[3:])
                except re.error as exc:
                    raise ValueError(f"override pattern {key!r} is not a valid regular expression: {exc}") from None
            if not 0.0 < d <= 1.0:
                raise ValueError(f"density override for {key!r} must be in (0, 1], got {d}")
        return v


class GNS(_Config):
    """Swap every LayerNorm/RMSNorm for the fused version that emits per-example grad norms."""

    kind: Literal["gns"] = "gns"


#: The built-in configs (static typing; at run time any registered config composes).
BaseConfig = Annotated[SP | MuP | CompleteP | DepthScaled | SuPar | GNS, Field(discriminator="kind")]


class Composed(_Config):
    """Several configs applied in order (at most one width parameterization)."""

    named: ClassVar[bool] = False

    kind: Literal["composed"] = "composed"
    configs: list[SerializeAsAny[_Config]]

    @field_validator("configs", mode="before")
    @classmethod
    def _by_kind(cls, v: Any) -> Any:
        """Saved configs (dicts) are rebuilt by their ``kind`` through the registry."""
        if not isinstance(v, (list, tuple)):
            return v
        out = []
        for item in v:
            if isinstance(item, dict):
                kind = item.get("kind")
                if not isinstance(kind, str) or kind not in _REGISTRY:
                    raise ValueError(f"unknown config kind {kind!r}; choose from {config_names()}")
                item = _REGISTRY[kind](**item)
            elif not isinstance(item, _Config) or isinstance(item, Composed):
                raise ValueError(f"compose configs, not {type(item).__name__}")
            out.append(item)
        return out

    @model_validator(mode="after")
    def _one_base(self) -> Composed:
        bases = [c for c in self.configs if c.width_rule]
        if len(bases) > 1:
            raise ValueError(f"compose at most one of SP/MuP/CompleteP, got {[c.kind for c in bases]}")
        depth = [c.kind for c in self.configs if c.depth_rule]
        if len(depth) > 1:
            raise ValueError(
                f"{'+'.join(depth)} applies the depth rule (residual branches x 1/m_L^alpha) twice: CompleteP "
                "already includes it; use 'completep' alone, or 'mup+depthscaled'"
            )
        kinds = [c.kind for c in self.configs]
        twice = sorted({k for k in kinds if kinds.count(k) > 1})
        if twice:
            raise ValueError(f"{twice[0]!r} appears {kinds.count(twice[0])} times: each pass applies once; "
                             f"list it once (e.g. '{'+'.join(dict.fromkeys(kinds))}')")
        return self


AnyConfig = SP | MuP | CompleteP | DepthScaled | SuPar | GNS | Composed

_SHORTCUTS = _REGISTRY  # 0.1 name: the registry itself (filled by the config classes)


def _build(cls: type[_Config], kwargs: dict[str, Any]) -> _Config:
    fields = set(cls.model_fields) - {"kind", "version"}
    return cls(**{k: v for k, v in kwargs.items() if k in fields})


def _explain(name: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        msg = err["msg"]
        if err["type"] == "missing":
            msg = f"is required: pass {loc}=... (e.g. fxparam.transform(model, '{name.lower()}', {loc}=...))"
        parts.append(f"{loc} {msg}" if not msg.startswith(loc) else msg)
    return f"invalid {name} config: " + "; ".join(parts)


def compose(*configs: AnyConfig) -> Composed:
    """Apply several configs in order, e.g. ``compose(CompleteP(...), SuPar(density=0.25))``."""
    flat: list[Any] = []
    for c in configs:
        flat.extend(c.configs if isinstance(c, Composed) else [c])
    return Composed(configs=flat)


def resolve_config(config: str | AnyConfig, **kwargs: Any) -> AnyConfig:
    """Turn ``"completep+supar"`` plus keyword fields into config objects.

    Keyword arguments are handed to each named config that has a field of that name; a
    keyword no config knows is an error (typos must not be silently ignored).
    """
    if isinstance(config, type) and issubclass(config, _Config):
        raise ConfigError(
            f"config is the class {config.__name__}, not a config: pass an instance, e.g. "
            f"fxparam.{config.__name__}(base_width=256), or its name {config.__name__.lower()!r}"
        )
    if not isinstance(config, (str, _Config)):
        hint = " (a saved config dict: fxparam.configs.config_from_json(d))" if isinstance(config, dict) else ""
        raise ConfigError(
            f"config must be a name such as 'mup' or 'completep+supar', or a config object such as "
            f"fxparam.CompleteP(base_width=256, base_depth=4); got {type(config).__name__}{hint}"
        )
    if not isinstance(config, str):
        if kwargs:
            raise ConfigError(
                f"keyword arguments {sorted(kwargs)} only apply to string configs; "
                f"set them on the {type(config).__name__} object instead"
            )
        return config
    names = [n.strip().lower() for n in config.split("+") if n.strip()]
    if not names:
        raise ConfigError("empty config name; use e.g. 'mup', 'completep' or 'completep+supar'")
    used: set[str] = set()
    built = []
    for n in names:
        cls = config_class(n)
        used |= set(kwargs) & set(cls.model_fields)
        built.append(_build(cls, kwargs))
    stray = set(kwargs) - used
    if stray:
        raise ConfigError(f"unknown option(s) {sorted(stray)} for {config!r}")
    return built[0] if len(built) == 1 else compose(*built)


def config_from_json(data: str | dict) -> AnyConfig:
    """Rebuild a config saved in a plan (any registered kind, or a composition of them).

    Raises:
        ConfigError: not a config, an unknown kind, or invalid fields.
    """
    import json

    try:
        obj = json.loads(data) if isinstance(data, str) else data
    except ValueError as exc:
        raise ConfigError(f"invalid saved config: not JSON ({exc})") from None
    kind = obj.get("kind") if isinstance(obj, dict) else None
    if kind == "composed":
        return Composed(**{k: v for k, v in obj.items() if k != "kind"})
    if not isinstance(kind, str) or kind not in _REGISTRY:
        raise ConfigError(f"invalid saved config: unknown kind {kind!r}; choose from {config_names()}")
    return _REGISTRY[kind](**obj)  # type: ignore[return-value]
