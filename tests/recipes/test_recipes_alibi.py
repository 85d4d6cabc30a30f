"""ALiBi slopes and position interpolation (fixed and dynamic)."""

from __future__ import annotations

import pytest
import torch

from fxparam import recipes
from fxparam.errors import RecipeError
from fxparam.models.alibi import ALiBi, alibi_attention_bias, alibi_bias, alibi_slopes, interpolation_factor


def test_slopes_power_of_two_and_interleaved() -> None:
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** (-(h + 1)) for h in range(8)]))
    s6 = alibi_slopes(6)  # 4 from n=4, then every other slope of n=8
    torch.testing.assert_close(s6[:4], alibi_slopes(4))
    torch.testing.assert_close(s6[4:], alibi_slopes(8)[0::2][:2])


def test_bias_signature_used_by_the_reference_gpt() -> None:
    slopes = alibi_slopes(4)
    b = alibi_bias(slopes, 5)
    assert b.shape == (4, 5, 5)
    assert b[1, 4, 1] == pytest.approx(-slopes[1].item() * 3)
    torch.testing.assert_close(alibi_bias(slopes, 5, interpolation=2.5), b / 2.5)
    assert alibi_bias(slopes, 2, 6).shape == (4, 2, 6)  # queries are the last 2 of 6 keys


@pytest.mark.parametrize(
    ("train", "cur", "target", "mode", "expected"),
    [
        (2048, 1024, None, "dynamic", 1.0),
        (2048, 2048, None, "dynamic", 1.0),
        (2048, 6144, None, "dynamic", 3.0),
        (2048, 1024, 8192, "fixed", 4.0),  # fixed: the serving length decides, not the input
        (2048, 1024, 1024, "fixed", 1.0),
        (2048, 9999, None, "none", 1.0),
    ],
)
def test_interpolation_factor(train: int, cur: int, target: int | None, mode: str, expected: float) -> None:
    assert interpolation_factor(train, seq_len=cur, target_len=target, mode=mode) == expected  # type: ignore[arg-type]


def test_module_and_helper_agree_and_slopes_are_not_state() -> None:
    m = ALiBi(4, train_len=16)
    assert "alibi" not in str(m.state_dict().keys()) and len(m.state_dict()) == 0
    torch.testing.assert_close(m(8), alibi_bias(alibi_slopes(4), 8))  # shorter than training: unchanged
    torch.testing.assert_close(m(48), alibi_bias(alibi_slopes(4), 48) / 3)  # dynamic s = 48/16
    torch.testing.assert_close(m(48), alibi_attention_bias(4, 48, train_len=16))
    fixed = ALiBi(4, train_len=16, mode="fixed", target_len=64)
    torch.testing.assert_close(fixed(8), alibi_bias(alibi_slopes(4), 8) / 4)
    assert "train_len=16" in repr(m)
    assert recipes.interpolation_factor is interpolation_factor


def test_gpt_with_alibi_still_runs() -> None:
    from fxparam.models.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(width=32, depth=1, head_dim=16, vocab=17, seq_len=8, pos="alibi"))
    out = model(torch.randint(0, 17, (2, 8)))
    logits = out[0] if isinstance(out, tuple) else out
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: alibi_slopes(0), "positive integer"),
        (lambda: alibi_slopes(2.5), "positive integer"),  # type: ignore[arg-type]
        (lambda: alibi_bias(alibi_slopes(2), 4, interpolation=0.5), ">= 1"),
        (lambda: alibi_bias(alibi_slopes(2), 5, 4), "q_len <= k_len"),
        (lambda: interpolation_factor(2048, mode="dynamic"), "seq_len is required"),
        (lambda: interpolation_factor(2048, seq_len=10, mode="fixed"), "target_len is required"),
        (lambda: interpolation_factor(0, seq_len=10), "train_len"),
        (lambda: ALiBi(4, train_len=16, mode="fixed"), "target_len"),
    ],
)
def test_bad_alibi_inputs(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RecipeError, match=match):
        call()
