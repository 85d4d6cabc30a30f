"""User data edge cases (review R17): non-UTF-8 text, odd .bin, Hugging Face dict batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fxparam.checks.data import FixedBatches, as_batch, load_tokens
from fxparam.errors import ConfigError


def test_byte_level_text_keeps_non_utf8_bytes(tmp_path):
    raw = bytes(range(128, 256)) * 20  # Latin-1 text: every byte invalid as UTF-8
    (tmp_path / "latin.txt").write_bytes(raw)
    tokens = load_tokens(tmp_path / "latin.txt")
    # byte-level ids are the file's bytes, one id per byte (was: 3 bytes of U+FFFD per byte)
    assert tokens.tolist() == list(raw)


def test_byte_level_text_crlf_and_utf8_bytes_exact(tmp_path):
    raw = "héllo\r\nwörld ".encode() * 100
    (tmp_path / "t.txt").write_bytes(raw)
    assert load_tokens(tmp_path / "t.txt").tolist() == list(raw)


def test_tokenizer_on_non_utf8_text_warns(tmp_path):
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9 " * 400)

    class Chars:
        def encode(self, text):
            return [min(ord(c), 255) for c in text]

    with pytest.warns(UserWarning, match=r"not UTF-8 .*0xe9 at offset 3"):
        tokens = load_tokens(tmp_path / "latin.txt", tokenizer=Chars())
    assert tokens.numel() == 5 * 400


def test_empty_and_short_text_refused(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "short.txt").write_bytes(b"x" * 1023)
    for name in ("empty.txt", "short.txt"):
        with pytest.raises(ConfigError, match="need at least 1024"):
            load_tokens(tmp_path / name)


def test_odd_length_bin_refused(tmp_path):
    (tmp_path / "ids.bin").write_bytes(b"\x01" * 4097)
    with pytest.raises(ConfigError, match="odd count"):
        load_tokens(tmp_path / "ids.bin")
    (tmp_path / "ok.bin").write_bytes(np.arange(2048, dtype=np.uint16).tobytes())  # control
    assert load_tokens(tmp_path / "ok.bin").tolist() == list(range(2048))


def test_int64_npy(tmp_path):
    np.save(tmp_path / "ids.npy", np.arange(70_000, 72_000, dtype=np.int64))
    assert load_tokens(tmp_path / "ids.npy").tolist() == list(range(70_000, 72_000))


def test_hf_style_dict_labels_are_shifted():
    ids = torch.randint(0, 50, (4, 17))
    labels = ids.clone()
    labels[:, :3] = -100  # a masked prompt
    x, y = as_batch({"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)})
    # next-token prediction by hand: input t predicts token t+1
    assert torch.equal(x, ids[:, :-1]) and torch.equal(y, labels[:, 1:])
    assert not torch.equal(x, y)
    # negative control: labels already aligned (not equal to input_ids) are kept as given
    x2, y2 = as_batch({"input_ids": ids[:, :-1], "labels": ids[:, 1:]})
    assert torch.equal(x2, ids[:, :-1]) and torch.equal(y2, ids[:, 1:])


def test_dataloader_of_hf_dict_batches():
    ids = torch.randint(0, 50, (24, 9))
    loader = torch.utils.data.DataLoader(
        [{"input_ids": r, "labels": r.clone()} for r in ids], batch_size=4
    )
    fb = FixedBatches(loader, eval_count=1)
    for (x, y), k in zip(fb.train + fb.held_out, range(6), strict=True):
        block = ids[4 * k : 4 * k + 4]
        assert torch.equal(x, block[:, :-1]) and torch.equal(y, block[:, 1:])


def test_float16_refused_with_the_cause(capsys):
    # the mechanism, by hand: Adam's eps is 0 in float16, an embedding row with zero gradient -> 0/0
    assert torch.tensor(1e-8, dtype=torch.float16).item() == 0.0
    emb = torch.nn.Embedding(10, 4).half()
    opt = torch.optim.Adam(emb.parameters(), lr=1e-3)
    emb(torch.tensor([1, 2])).float().sum().backward()
    opt.step()
    assert torch.isnan(emb.weight[5]).all() and not torch.isnan(emb.weight[1]).any()
    # so float16 is refused up front (it read as "FAIL: not invariant" with NaN slopes)
    from fxparam.cli import main

    argv = ["coord-check", "--dtype", "float16", "--widths", "16,32", "--depths", "none", "--no-plots"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "float16" in err and "bfloat16" in err and "Traceback" not in err
    assert main(["transfer", "--dtype", "float16", "--quick"]) == 2
    assert "bfloat16" in capsys.readouterr().err
    import fxparam
    from fxparam.models.gpt import GPT, GPTConfig

    with pytest.raises(ConfigError, match="float16"):
        fxparam.coord_check(lambda width: GPT(GPTConfig(width=width, depth=1)), widths=[16, 32],
                            dtype=torch.float16)


_NO_INPUTS_FACTORY = """
import torch.nn as nn


class M(nn.Module):  # no example_inputs(), no config.vocab_size, no depth argument
    def __init__(self, width):
        super().__init__()
        self.e = nn.Embedding(256, width)
        self.h = nn.Linear(width, width)
        self.o = nn.Linear(width, 256, bias=False)

    def forward(self, x):
        return self.o(self.h(self.e(x)).relu())


def make(width):
    return M(width)
"""


def test_completep_width_sweep_on_a_factory_without_example_inputs(tmp_path, monkeypatch, capsys):
    # review R17: the base depth of CompleteP was read with plain fxparam.inspect, which refused a
    # user model that cannot describe its inputs, before any training (the check's batch serves)
    (tmp_path / "r17_noinputs.py").write_text(_NO_INPUTS_FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import json

    from fxparam.cli import main

    argv = ["coord-check", "--model", "r17_noinputs:make", "--param", "completep", "--widths", "16,32",
            "--steps", "1", "--seeds", "1", "--no-plots", "--no-progress", "--jobs", "1", "--out", str(tmp_path / "o")]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc in (0, 1) and "cannot guess example inputs" not in err, err
    data = json.loads((tmp_path / "o" / "coord_check.json").read_text())
    assert data["settings"]["model"] == "r17_noinputs:make"
    import csv

    with open(tmp_path / "o" / "records.csv", newline="") as fh:
        assert {int(r["width"]) for r in csv.DictReader(fh)} == {16, 32}


def test_transfer_seeds_int_refused():
    # review R17: seeds=3 (a count, like the CLI's --seeds) raised TypeError: 'int' object is not iterable
    from fxparam.checks.transfer import transfer

    with pytest.raises(ConfigError, match=r"seeds=range\(3\)"):
        transfer(model="gpt", sizes=[16, 32], params=["mup"], lrs=[2**-8], steps=1, seeds=3)


def test_uint64_ids_beyond_int64_are_named_not_negative(tmp_path):
    # 2^63 + 5 wraps to a negative int64: the message was "negative token ids", about a file with none
    ids = np.arange(2048, dtype=np.uint64)
    ids[100] = np.uint64(2**63 + 5)
    np.save(tmp_path / "ids.npy", ids)
    with pytest.raises(ConfigError) as exc:
        load_tokens(tmp_path / "ids.npy")
    msg = str(exc.value)
    assert "negative" not in msg
    assert f"token id {2**63 + 5} (uint64, at position 100)" in msg and "int64 range" in msg
    assert "vocabulary" in msg
    # ids within int64 but beyond any vocabulary (an embedding of 2^40 rows) are refused too
    ids[100] = np.uint64(2**40)
    np.save(tmp_path / "big.npy", ids)
    with pytest.raises(ConfigError, match=r"token id 1099511627776 \(uint64, at position 100\) is beyond any vocabulary"):
        load_tokens(tmp_path / "big.npy")
    # control: uint64 ids of a real vocabulary size load unchanged
    np.save(tmp_path / "ok.npy", np.arange(150_000, 152_048, dtype=np.uint64))
    assert load_tokens(tmp_path / "ok.npy").tolist() == list(range(150_000, 152_048))


def test_negative_ids_say_where_and_why(tmp_path):
    ids = np.arange(2048, dtype=np.int64).astype(np.int16)
    ids[7] = -3
    np.save(tmp_path / "neg.npy", ids)
    with pytest.raises(ConfigError, match=r"1 negative token id\(s\) \(the first, -3, at position 7\).*int16"):
        load_tokens(tmp_path / "neg.npy")
