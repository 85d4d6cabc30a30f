"""``fxparam coord-check``: argument errors, output files and exit codes, at tiny sizes."""

from __future__ import annotations

import json

import pytest

from fxparam.cli import build_parser, main

TINY = ["--seeds", "1", "--steps", "2", "--jobs", "1", "--no-progress"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--widths", "64,abc"], "'abc' is not an integer"),
        (["--widths", "64,-128"], "-128 is not positive"),
        (["--param", "mup,nonsense"], "unknown parameterization 'nonsense'"),
        (["--seeds", "0"], "0 is not positive"),
        (["--lr", "-1"], "not a positive number"),
    ],
)
def test_bad_options_are_one_line_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["coord-check", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "nonsense"], "unknown model 'nonsense'"),
        (["--model", "no_such_module_xyz:make"], "cannot import 'no_such_module_xyz'"),
        (["--widths", "64,100", "--depths", "none"], "not divisible into heads"),
        (["--widths", "64,128", "--depths", "2,4", "--steps", "1"], "the depth check judges steps >= 2"),
        (["--widths", "64", "--depths", "none"], "nothing to compare"),
        (
            ["--model", "tests.cli.broken_model:make_width_only", "--depths", "2,4", "--widths", "64"],
            "takes no 'depth' argument",
        ),
    ],
)
def test_bad_settings_exit_2_with_one_line(argv, message, capsys, tmp_path):
    assert main(["coord-check", *TINY, *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("fxparam coord-check: error:")


def test_help_names_every_option():
    text = build_parser()._subparsers._group_actions[0].choices["coord-check"].format_help()
    for option in (
        "--model",
        "--param",
        "--widths",
        "--depths",
        "--steps",
        "--out",
        "--seed",
        "--data",
        "Exit status",
    ):
        assert option in text


def test_mup_passes_and_sp_control_fails_as_expected(tmp_path, capsys):
    out = tmp_path / "cc"
    code = main(
        ["coord-check", "--param", "sp,mup", "--widths", "64,128", "--depths", "2", *TINY, "--out", str(out)]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert "SP (control)" in text and "not invariant, as expected" in text
    assert "PASS" in text
    assert {p.name for p in out.iterdir()} == {"summary.txt", "coord_check.json", "records.csv", "slopes.csv", "width.png"}
    data = json.loads((out / "coord_check.json").read_text())
    assert data["ok"] is True
    assert data["verdicts"]["mup"]["width"]["invariant"] is True
    assert data["verdicts"]["sp"]["width"]["invariant"] is False
    assert data["verdicts"]["sp"]["width"]["max_growth"] > 0.6
    table = data["records"]["mup"]["width"]
    assert table["columns"][:2] == ["width", "depth"] and {row[0] for row in table["rows"]} == {64, 128}


def test_broken_user_model_exits_1(tmp_path, capsys):
    code = main(
        [
            "coord-check",
            "--model",
            "tests.cli.broken_model:make_broken",
            "--param",
            "mup",
            "--widths",
            "64,128",
            "--depths",
            "none",
            *TINY,
            "--no-plots",
            "--out",
            str(tmp_path),
        ]
    )
    text = capsys.readouterr().out
    assert code == 1
    assert "NOT invariant" in text and "FAIL: not invariant: μP over width" in text
    failures = json.loads((tmp_path / "coord_check.json").read_text())["verdicts"]["mup"]["width"]["failures"]
    assert any(f["key"] == "embedding:wte#0" and f["step"] == 0 for f in failures)  # sqrt(width) embedding


def test_depth_sweep_writes_depth_plot(tmp_path, capsys):
    # a single width: only the depth sweep runs (at width 64, base width 32)
    code = main(
        [
            "coord-check",
            "--model",
            "tests.cli.broken_model:make",
            "--param",
            "completep",
            "--widths",
            "64",
            "--base-width",
            "32",
            "--depths",
            "2,4,8",
            *TINY,
            "--out",
            str(tmp_path),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert (tmp_path / "depth.png").is_file() and not (tmp_path / "width.png").exists()
    data = json.loads((tmp_path / "coord_check.json").read_text())
    assert data["verdicts"]["completep"]["depth"]["invariant"] is True
    assert "width" not in data["verdicts"]["completep"]
