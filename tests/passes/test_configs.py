import pydantic
import pytest

import fxparam
from fxparam.configs import config_from_json, resolve_config

CONFIGS = [
    fxparam.SP(),
    fxparam.SP(init_std=0.01),
    fxparam.MuP(base_width=256),
    fxparam.MuP(base_width=64, embedding_multiplier=10.0, output_multiplier=2.0, attention="sp"),
    fxparam.MuP(base_width=64, base_head_dim=16, zero_readout=True),
    fxparam.CompleteP(base_width=256, base_depth=2),
    fxparam.CompleteP(base_width=256, base_depth=4, alpha=0.5, attn_multiplier=8.0),
    fxparam.DepthScaled(base_depth=2, alpha=0.5),
    fxparam.SuPar(density=0.25, seed=3, overrides={"re:.*mlp.*": 0.5}),
    fxparam.GNS(),
    fxparam.compose(fxparam.CompleteP(base_width=64, base_depth=2), fxparam.SuPar(density=0.5), fxparam.GNS()),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_config_json_round_trip(cfg):
    again = config_from_json(cfg.model_dump_json())
    assert again == cfg and type(again) is type(cfg)


def test_strings_are_shortcuts():
    assert resolve_config("mup", base_width=64) == fxparam.MuP(base_width=64)
    c = resolve_config("completep+supar", base_width=64, base_depth=2, density=0.5)
    assert isinstance(c, fxparam.Composed)
    assert c.configs == [fxparam.CompleteP(base_width=64, base_depth=2), fxparam.SuPar(density=0.5)]


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: fxparam.CompleteP(base_width=64, base_depth=2, alpha=1.5), "alpha"),
        (lambda: fxparam.CompleteP(base_width=64, base_depth=2, alpha=0.4), "alpha"),
        (lambda: fxparam.MuP(base_width=0), "base_width"),
        (lambda: fxparam.MuP(base_width=-3), "base_width"),
        (lambda: fxparam.SuPar(density=0.0), "density"),
        (lambda: fxparam.SuPar(density=1.5), "density"),
        (lambda: fxparam.MuP(base_width=64, typo=1), "typo"),
        (lambda: resolve_config("mupp"), "unknown parameterization 'mupp'"),
        (lambda: resolve_config("mup"), "base_width is required"),
        (lambda: resolve_config("mup", base_width=64, base_widht=3), "base_widht"),
        (lambda: fxparam.compose(fxparam.SP(), fxparam.MuP(base_width=4)), "at most one"),
    ],
)
def test_invalid_configs_raise_config_error(make, fragment):
    with pytest.raises(fxparam.ConfigError, match=fragment.replace("(", r"\(")):
        make()


def test_configs_are_frozen():
    cfg = fxparam.MuP(base_width=64)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.base_width = 128  # type: ignore[misc]
