"""The checks on the user's own model, data and device (issue 17, case 1), at tiny sizes.

A user's factory module in the current directory and a user's text file, token files, a
local tokenizer, --device/--dtype, DataLoaders to the Python API, CSV and DataFrame output.
"""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import torch

from fxparam.cli import main

CC_TINY = ["--seeds", "1", "--steps", "2", "--jobs", "1", "--no-progress", "--no-plots", "--depths", "2"]
TR_TINY = ["--lrs", "2^-8", "--steps", "3", "--batch-size", "2", "--seq-len", "16", "--eval-batches", "1",
           "--jobs", "1", "--no-progress", "--no-plot"]

USER_MODEL = '''
import torch.nn as nn
from fxparam.models import GPT, GPTConfig


def make(width=64, depth=2, vocab=256):
    """The user's model: a small GPT over their vocabulary."""
    return GPT(GPTConfig(width=width, depth=depth, head_dim=16, vocab=vocab, seq_len=32))
'''

TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light. "
) * 40


@pytest.fixture
def user_dir(user_module):
    """A user's project folder: their model module and a text file, as the current directory."""
    folder = user_module("h4_usermodel", USER_MODEL)
    (folder / "corpus.txt").write_text(TEXT)
    return folder


def test_coord_check_on_user_factory_and_text_file(user_dir, capsys):
    argv = ["coord-check", "--model", "h4_usermodel:make", "--data", "corpus.txt", "--param", "sp,mup",
            "--widths", "64,128", *CC_TINY, "--out", "cc"]
    assert main(argv) == 0, capsys.readouterr()
    data = json.loads((user_dir / "cc" / "coord_check.json").read_text())
    assert data["settings"]["data"] == "corpus.txt" and data["verdicts"]["mup"]["width"]["invariant"]
    with open(user_dir / "cc" / "records.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["param"] for r in rows} == {"sp", "mup"} and {r["width"] for r in rows} == {"64", "128"}
    assert {r["kind"] for r in rows} >= {"embedding", "branch", "logits"}


def test_transfer_on_user_factory_and_text_file(user_dir, capsys):
    argv = ["transfer", "--model", "h4_usermodel:make", "--data", "corpus.txt", "--widths", "32,64",
            *TR_TINY, "--out", "tr"]
    assert main(argv) == 0, capsys.readouterr()
    data = json.loads((user_dir / "tr" / "width.json").read_text())
    assert data["settings"]["data"] == "corpus.txt" and len(data["points"]) == 4
    assert all(np.isfinite(p["eval_loss"]) for p in data["points"])


def test_token_files_set_the_vocabulary(tmp_path, capsys):
    ids = (np.arange(6000) * 7919 % 1000).astype(np.int64)  # ids up to 999: not bytes
    np.save(tmp_path / "tok.npy", ids)
    ids.astype(np.uint16).tofile(tmp_path / "tok.bin")
    for name in ("tok.npy", "tok.bin"):
        argv = ["transfer", "--widths", "32,64", "--data", str(tmp_path / name), *TR_TINY, "--out", str(tmp_path / name[-3:])]
        assert main(argv) == 0, capsys.readouterr()
        settings = json.loads((tmp_path / name[-3:] / "width.json").read_text())["settings"]
        assert settings["model_options"]["vocab"] == 1000
    from fxparam.checks.data import load_tokens

    assert torch.equal(load_tokens(tmp_path / "tok.bin"), torch.from_numpy(ids))


def test_token_ids_beyond_a_user_models_vocabulary_are_one_line_errors(user_dir, capsys):
    np.save(user_dir / "tok.npy", (np.arange(6000) % 700).astype(np.int64))
    argv = ["coord-check", "--model", "h4_usermodel:make", "--data", "tok.npy", "--widths", "64,128", *CC_TINY,
            "--param", "mup", "--out", "cc"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "token ids up to" in err and "outside the model's vocabulary" in err and "Traceback" not in err
    assert main([*argv, "--vocab", "700"]) == 0  # the option reaches the user's factory


def test_local_tokenizer_for_text(tmp_path, capsys):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([TEXT], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "corpus.txt").write_text(TEXT * 3)
    from fxparam.checks.data import load_tokens

    ids = load_tokens(tmp_path / "corpus.txt", tokenizer=tmp_path / "tokenizer.json")
    assert ids.max() < tok.get_vocab_size() and ids.numel() == len(tok.encode(TEXT * 3).ids)
    argv = ["coord-check", "--data", str(tmp_path / "corpus.txt"), "--tokenizer", str(tmp_path / "tokenizer.json"),
            "--param", "mup", "--widths", "64,128", *CC_TINY, "--out", str(tmp_path / "cc")]
    assert main(argv) in (0, 1), capsys.readouterr()  # ran and judged (1 seed on a tiny word vocabulary)
    settings = json.loads((tmp_path / "cc" / "coord_check.json").read_text())["settings"]
    assert settings["tokenizer"].endswith("tokenizer.json")
    assert main([*argv[:3], "--tokenizer", str(tmp_path / "missing"), *argv[5:]]) == 2
    assert "never downloaded" in capsys.readouterr().err


def test_bad_device_and_dtype(tmp_path, capsys):
    assert main(["coord-check", "--device", "nonsense", *CC_TINY, "--out", str(tmp_path)]) == 2
    assert "device 'nonsense'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["transfer", "--device", "cuda", "--widths", "32,64", *TR_TINY, "--out", str(tmp_path)]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["coord-check", "--dtype", "int8"])
    assert "invalid choice: 'int8'" in capsys.readouterr().err


def test_bfloat16_runs_and_keeps_the_verdict(tmp_path, capsys):
    argv = ["coord-check", "--dtype", "bfloat16", "--param", "sp,mup", "--widths", "64,128", *CC_TINY,
            "--out", str(tmp_path)]
    assert main(argv) == 0, capsys.readouterr()
    data = json.loads((tmp_path / "coord_check.json").read_text())
    assert data["settings"]["dtype"] == "bfloat16" and data["verdicts"]["sp"]["width"]["max_growth"] > 0.6


def test_datasets_folder_needs_datasets(tmp_path, capsys):
    if __import__("importlib").util.find_spec("datasets") is not None:
        pytest.skip("datasets is installed")
    (tmp_path / "ds").mkdir()
    assert main(["coord-check", "--data", str(tmp_path / "ds"), *CC_TINY, "--out", str(tmp_path / "o")]) == 2
    assert "needs 'datasets'" in capsys.readouterr().err


def test_python_api_takes_a_dataloader():
    import fxparam
    from fxparam.checks.data import ByteCorpus
    from fxparam.checks.targets import resolve
    from fxparam.checks.transfer import transfer

    corpus = ByteCorpus(TEXT)
    rows = torch.cat([torch.cat([x[:, :1], y], 1) for x, y in (corpus.batch(2, 16, seed=i) for i in range(6))])
    loader = torch.utils.data.DataLoader(rows, batch_size=2)  # batches of [2, 17] token ids
    make = resolve("gpt", head_dim=16, seq_len=16)
    cc = fxparam.coord_check(make, widths=[32, 64], config="mup", steps=1, seeds=[0], data=loader)
    assert {r.width for r in cc.records} == {32, 64}
    first = next(iter(loader))
    direct = fxparam.coord_check(make, widths=[32, 64], config="mup", steps=1, seeds=[0],
                                 data=(first[:, :-1], first[:, 1:]))
    assert [r.rms for r in cc.records] == [r.rms for r in direct.records]  # the loader's first batch
    res = transfer(sizes=[32, 64], params=["mup"], lrs=[2**-8], steps=4, data=loader, eval_batches=1)
    assert (res.settings.batch_size, res.settings.seq_len) == (2, 16) and len(res.points) == 2


def test_dataframe_needs_pandas(monkeypatch):
    from fxparam.checks.coord import CoordCheck, Record
    from fxparam.errors import ConfigError

    cc = CoordCheck(config="mup", widths=[32], depths=[], steps=0, lr=1e-3,
                    records=[Record(width=32, depth=2, seed=0, step=0, key="k", kind="branch", rms=1.0, delta=0.0)])
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ConfigError, match="pip install pandas"):
        cc.to_frame()


def test_dataframe_with_pandas():
    pytest.importorskip("pandas")
    from fxparam.checks.coord import CoordCheck, Record

    cc = CoordCheck(config="mup", widths=[32], depths=[], steps=0, lr=1e-3,
                    records=[Record(width=32, depth=2, seed=0, step=0, key="k", kind="branch", rms=1.0, delta=0.0)])
    assert list(cc.to_frame()["rms"]) == [1.0]
