"""`fxparam recipe` and `fxparam collapse` end to end through the dispatcher."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fxparam.cli import main

from .test_recipes_collapse import synthetic_run


def test_recipe_table_for_the_610m_example(capsys: pytest.CaptureFixture[str]) -> None:
    argv = "recipe --params 610e6 --tokens 48.5e9 --seq-len 2048 --base-lr 1.62e-2 --width-multiplier 8"
    assert main(argv.split()) == 0
    out = capsys.readouterr().out
    assert "0.002025" in out and "d2z" in out and "inf" in out  # hidden LR, schedule, no-decay group
    assert "tau_opt 0.1080" in out


def test_recipe_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = "recipe --params 610e6 --tpp 79.5 --lr 2.025e-3 --batch-size 504 --weight-decay 0.1 --json"
    assert main(argv.split()) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tau"] == pytest.approx(0.105, abs=5e-4)
    assert data["groups"][-1]["tau"] == "Infinity"


def test_recipe_bad_input_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    # a negative size is refused by the size parser (argparse usage error, exit 2), naming the flag
    with pytest.raises(SystemExit) as exc:
        main("recipe --params 1e8 --tokens=-5e9 --lr 1e-3".split())
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --tokens: '-5e9' must be a positive size" in err and "Traceback" not in err
    # a value the parser passes but the recipe refuses is a one-line error too (batch > tokens)
    assert main("recipe --params 1e8 --tokens 1e3 --lr 1e-3 --seq-len 2048 --batch-size 4".split()) == 2
    assert "Traceback" not in capsys.readouterr().err


def _write(path: Path, steps: np.ndarray, losses: np.ndarray) -> Path:
    rows = "\n".join(f"{s},{v:.6f},{1e-3}" for s, v in zip(steps, losses, strict=True))
    path.write_text("step,loss,lr\n" + rows + "\n")
    return path


def test_collapse_ok_exit_zero_with_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = _write(tmp_path / "small.csv", *synthetic_run(2000, 3.2, 0.1, seed=0))
    r1 = _write(tmp_path / "run1.csv", *synthetic_run(6000, 2.8, 0.1, seed=1))
    s2, l2 = synthetic_run(20000, 2.4, 0.1, seed=2)
    r2 = _write(tmp_path / "run2.csv", s2[s2 <= 9000], l2[s2 <= 9000])  # partial: forecast
    out = tmp_path / "collapse.png"
    argv = [str(r1), str(r2), "--ref", str(ref), "--total-steps", "-", "20000", "--out", str(out)]
    assert main(["collapse", *argv]) == 0
    text = capsys.readouterr().out
    assert "collapse ok" in text and "forecast" in text
    forecast = float(text.split("run2")[1].split()[1].rstrip("*"))
    assert forecast == pytest.approx(2.4, rel=0.01)
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_collapse_alarm_exits_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = _write(tmp_path / "small.csv", *synthetic_run(2000, 3.2, 0.1, seed=0))
    bad = _write(tmp_path / "bad.csv", *synthetic_run(6000, 2.8, 0.4, seed=1))  # mismatched tau
    assert main(["collapse", str(bad), "--ref", str(ref)]) == 1
    assert "ALARM" in capsys.readouterr().out


def test_collapse_bad_total_steps_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = _write(tmp_path / "small.csv", *synthetic_run(2000, 3.2, 0.1, seed=0))
    assert main(["collapse", str(ref), "--total-steps", "1", "2"]) == 2
    assert "one per run" in capsys.readouterr().err


def test_collapse_help_documents_columns_and_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["collapse", "--help"])
    text = capsys.readouterr().out
    assert "extra columns are ignored" in text and "exit status" in text
