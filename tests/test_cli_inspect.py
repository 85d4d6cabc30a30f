import json

import pytest

from fxparam.cli import main


def test_inspect_gpt_table(capsys):
    assert main(["inspect", "gpt", "--width", "64", "--depth", "2"]) == 0
    out = capsys.readouterr().out
    assert "GPT: width 64, depth 2" in out and "lm_head.weight" in out


def test_inspect_hf_json(capsys):
    pytest.importorskip("transformers")
    assert main(["inspect", "hf:llama", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["depth"] == 2 and data["params"]["lm_head.weight"]["role"] == "readout"


def test_inspect_user_factory(capsys):
    assert main(["inspect", "tests.nanogpt_style:GPT"]) == 2  # needs a config: clear one-line error
    err = capsys.readouterr().err
    assert err.startswith("fxparam inspect: error:") and "Traceback" not in err


def test_inspect_unknown_target(capsys):
    assert main(["inspect", "nonsense"]) == 2
    assert "unknown model 'nonsense'" in capsys.readouterr().err


def test_inspect_user_factory_ok(capsys):
    assert main(["inspect", "tests.nanogpt_style:make", "--depth", "5"]) == 0
    assert "depth 5" in capsys.readouterr().out


def test_inspect_plan_shows_multipliers_and_density(capsys):
    assert main(["inspect", "gpt", "--width", "128", "--depth", "2", "--plan", "completep+supar",
                 "--base-width", "64", "--base-depth", "1", "--density", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "density" in out and "0.5" in out and "blocks.1.mlp.proj" in out


def test_inspect_plan_missing_base_width_is_one_line(capsys):
    assert main(["inspect", "gpt", "--plan", "mup"]) == 2
    err = capsys.readouterr().err
    assert "base_width is required" in err and "Traceback" not in err
