"""``fxparam recipe``: sizes with suffixes, optional LR, range validation (issue 17, case 6)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fxparam.cli import main


@pytest.mark.parametrize(
    ("text", "value"),
    [("1B", 1e9), ("20B", 2e10), ("610M", 6.1e8), ("1.5T", 1.5e12), ("48.5e9", 4.85e10), ("7g", 7e9), ("2k", 2e3)],
)
def test_sizes_with_suffixes(text, value):
    from fxparam.cli.recipe import size

    assert size(text) == pytest.approx(value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--params", "1X", "--tpp", "20"], "'1X' is not a size"),
        (["--params", "1B", "--tpp", "20", "--seq-len", "0"], "must be a positive integer"),
        (["--params", "1B", "--tpp", "20", "--lr", "3"], "the learning rate 3 is outside (0, 1]"),
        (["--params", "1B", "--tpp", "20", "--base-lr", "0"], "the learning rate 0 is outside"),
        (["--params", "1B", "--tpp", "20", "--lr", "1e-3", "--weight-decay", "-1"], "the weight decay -1"),
        (["--params", "1B", "--tpp", "20", "--batch-size", "1.5"], "must be a positive integer"),
        (["--params", "1B", "--tpp", "20", "--width-multiplier", "0"], "the width multiplier 0"),
    ],
)
def test_out_of_range_values_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["recipe", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_sizes_reach_the_recipe(capsys):
    assert main(["recipe", "--params", "1B", "--tokens", "20B", "--lr", "1e-3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == 1e9 and data["tokens"] == 2e10 and data["tpp"] == 20


def test_without_lr_gives_lambda_times_lr_from_power_lines(capsys):
    assert main(["recipe", "--params", "1B", "--tpp", "20", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["lr"] is None and data["weight_decay"] is None
    # Power Lines by hand: B_opt = 0.0306 D^0.383 sequences of 2048, tau_opt = 1.084 TPP^-0.527,
    # tau = B / (lr * lambda * D)  =>  lambda * lr = B_tokens / (D * tau_opt)
    d = 20 * 1e9
    b_seq = round(0.0306 * d**0.383)
    tau_opt = 1.084 * 20**-0.527
    assert data["batch_size"] == b_seq
    assert data["lambda_times_lr"] == pytest.approx(b_seq * 2048 / (d * tau_opt), rel=1e-6)
    assert main(["recipe", "--params", "1B", "--tpp", "20"]) == 0
    text = capsys.readouterr().out
    assert "lambda x LR" in text and "no LR given" in text


@pytest.mark.parametrize(
    ("argv", "flag", "value"),
    [
        (["--params", "-1B", "--tpp", "20"], "--params", "-1B"),  # was "expected one argument": read as a flag
        (["--params=-1B", "--tpp", "20"], "--params", "-1B"),
        (["--params", "1B", "--tokens", "-5e9"], "--tokens", "-5e9"),
        (["--params", "1B", "--tpp", "-.5"], "--tpp", "-.5"),
        (["--params", "0", "--tpp", "20"], "--params", "0"),
        (["--params", "1B", "--tpp", "20", "--b-crit", "-1M", "1B"], "--b-crit", "-1M"),
    ],
)
def test_negative_size_is_refused_naming_the_flag(argv, flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["recipe", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: {value!r} must be a positive size" in err and "expected one argument" not in err
    assert "Traceback" not in err


def test_weight_decay_needs_an_lr(capsys):
    assert main(["recipe", "--params", "1B", "--tpp", "20", "--weight-decay", "0.1"]) == 2
    assert "--weight-decay without an LR" in capsys.readouterr().err


def test_schedule_choices_match_the_library():
    from fxparam.cli.recipe import SCHEDULE_CHOICES
    from fxparam.recipes.schedules import SCHEDULE_NAMES

    assert tuple(SCHEDULE_CHOICES) == tuple(SCHEDULE_NAMES)


def test_version(capsys):
    import fxparam

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"fxparam {fxparam.__version__}"


def test_building_the_parser_imports_nothing_heavy():
    # `fxparam --help` builds every sub-command's parser: none may load plotting, HF or tables.
    code = (
        "import sys; from fxparam.cli import build_parser; before = set(sys.modules); build_parser(); "
        "heavy = {'matplotlib', 'transformers', 'pandas', 'rich', 'tqdm', 'fxparam.recipes', 'fxparam.checks'}; "
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in heavy or "
        "m.rsplit('.', 1)[0] in heavy or m in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
