"""``fxparam transfer``: argument errors, output files and resuming, at tiny sizes."""

from __future__ import annotations

import json

import pytest

from fxparam.cli import build_parser, main

TINY = [
    "--lrs",
    "2^-8..2^-7",
    "--steps",
    "3",
    "--batch-size",
    "2",
    "--seq-len",
    "16",
    "--eval-batches",
    "1",
    "--jobs",
    "1",
    "--no-progress",
]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lrs", "2^-5..2^-8"], "the range is empty"),
        (["--lrs", "x"], "'x' is not a learning rate"),
        (["--lrs", "1e-3..1e-2"], "a range is written 2^LO..2^HI"),
        (["--lrs", "1e-3,-1"], "must be positive"),
        (["--vary", "height"], "invalid choice: 'height'"),
        (["--param", "sp,bogus"], "unknown parameterization 'bogus'"),
        (["--steps", "0"], "0 is not positive"),
    ],
)
def test_bad_options_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["transfer", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--depths", "2,4"], "--depths applies to --vary depth"),
        (["--vary", "depth", "--widths", "64,128"], "--widths applies to --vary width"),
        (["--widths", "64"], "at least two widths"),
        (["--widths", "64,100"], "not divisible into heads"),
        (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
        (["--widths", "32,64", "--data", "/no/such/file.txt"], "no such file"),
    ],
)
def test_bad_settings_exit_2(argv, message, capsys, tmp_path):
    assert main(["transfer", *TINY, *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_lr_list_forms():
    from fxparam.cli.transfer import lr_list

    assert lr_list("2^-3..2^-1") == [0.125, 0.25, 0.5]
    assert lr_list("1e-3, 2^-8") == [1e-3, 2.0**-8]


def test_help_mentions_quick_and_vary():
    text = build_parser()._subparsers._group_actions[0].choices["transfer"].format_help()
    for option in ("--quick", "--vary", "--lrs", "--widths", "--fresh", "--data", "--out"):
        assert option in text


def test_writes_results_and_resumes(tmp_path, capsys):
    argv = ["transfer", *TINY, "--widths", "32,64", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Optimal base LR" in out and "| SP |" in out and "| μP |" in out and "8 run(s) trained" in out
    for name in ("width.jsonl", "width.json", "width.csv", "width.png", "width_summary.md"):
        assert (tmp_path / name).is_file(), name
    data = json.loads((tmp_path / "width.json").read_text())
    assert len(data["points"]) == 8 and data["settings"]["sizes"] == [32, 64]

    assert main(argv) == 0  # nothing left to train
    out = capsys.readouterr().out
    assert "0 run(s) trained" in out and "8 re-used" in out
    assert len((tmp_path / "width.jsonl").read_text().splitlines()) == 8

    assert main([*argv, "--fresh", "--no-plot"]) == 0
    assert "8 run(s) trained" in capsys.readouterr().out


def test_depth_variant_with_text_file(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    argv = [
        "transfer",
        *TINY,
        "--vary",
        "depth",
        "--depths",
        "1,2",
        "--width",
        "32",
        "--data",
        str(text),
        "--out",
        str(tmp_path / "o"),
        "--no-plot",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| μP |" in out and "| CompleteP |" in out and "depth 1" in out
    data = json.loads((tmp_path / "o" / "depth.json").read_text())
    assert {p["depth"] for p in data["points"]} == {1, 2} and {p["width"] for p in data["points"]} == {32}


def test_output_multiplier_is_a_base_hyperparameter(tmp_path, capsys):
    import fxparam
    from fxparam.models import GPT, GPTConfig

    assert main(["transfer", *TINY, "--widths", "32,64", "--param", "mup", "--out", str(tmp_path / "w")]) == 0
    settings = json.loads((tmp_path / "w" / "width.json").read_text())["settings"]
    assert settings["output_multiplier"] == 8.0  # the tuned default over width
    argv = ["transfer", *TINY, "--vary", "depth", "--depths", "1,2", "--width", "32", "--out", str(tmp_path / "d")]
    assert main(argv) == 0
    assert json.loads((tmp_path / "d" / "depth.json").read_text())["settings"]["output_multiplier"] == 1.0
    # what the runs apply: the readout output scaled by alpha_out / m_d (MuP config, Tensor Programs V)
    plan = fxparam.plan(GPT(GPTConfig(width=64, depth=2, head_dim=16)), "mup", base_width=32, output_multiplier=8.0)
    assert plan.multipliers["input:lm_head"] == pytest.approx(8.0 / 2)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["transfer", "--output-multiplier", "0"])
    assert "not a positive number" in capsys.readouterr().err
