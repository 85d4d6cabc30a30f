"""Issue 13, zoo coordinate checks: regressions the zoo's muP width checks found (fast).

- OPT folds its logit scale into the query (``q_proj(x) * self.scaling``, then SDPA with
  ``scale=1.0``): the lowering sets the ``scaling`` attribute, and its self-check compared
  the SDPA call's scale (1.0) with the planned logit scale (0.25), so ``transform`` raised a
  LoweringError on a correctly transformed model.  Expected values: muP at base width is the
  identity (same outputs); with the head dim doubled (heads fixed, width 64 -> 128,
  ``base_head_dim=16``) the
  effective logit scale, measured on the forward, is muP's ``sqrt(d0) / d`` = 4 / 32 (Yang et
  al. 2022, Tensor Programs V, attention 1/d matched to 1/sqrt(d0) at the base head dim d0).
- Encoder-decoders (HF T5): ``inspect`` without example inputs gave the decoder no ids
  (CaptureError), and ``coord_check`` probed the model with encoder ids only.  Expected: T5's
  default example inputs include ``decoder_input_ids``; the next-token ``lm_loss`` is refused
  naming ``loss_fn`` (one stream would show the encoder the targets).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import fxparam
from fxparam.errors import ConfigError
from fxparam.lowering import sdpa

T = pytest.importorskip("transformers")


def _opt(width: int, heads: int) -> torch.nn.Module:
    cfg = T.OPTConfig(
        hidden_size=width,
        ffn_dim=2 * width,
        num_hidden_layers=2,
        word_embed_proj_dim=width,
        num_attention_heads=heads,
        max_position_embeddings=64,
        vocab_size=96,
    )
    cfg._attn_implementation = "sdpa"
    cfg.use_cache = False
    torch.manual_seed(0)
    return T.OPTForCausalLM(cfg).eval()


IDS = torch.randint(0, 96, (2, 8), generator=torch.Generator().manual_seed(0))


def test_opt_scale_folded_into_query_base_width_is_identity():
    model = _opt(64, 4)
    with torch.no_grad():
        before = model(input_ids=IDS).logits.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fxparam.transform(model, "mup", base_width=64, init=False)  # raised LoweringError (SDPA scale 1.0)
    with torch.no_grad():
        after = model(input_ids=IDS).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    assert fxparam.verify(model, example_inputs={"input_ids": IDS}).ok


def test_opt_scale_folded_into_query_effective_logit_scale_is_mup():
    model = _opt(128, 4)  # head dim 32 at width 128; 16 at the base width 64 (heads fixed: say so)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fxparam.transform(model, "mup", base_width=64, base_head_dim=16, init=False)
    attn = model.model.decoder.layers[0].self_attn
    raw: list[torch.Tensor] = []
    seen: list[tuple[torch.Tensor, float]] = []
    handle = attn.q_proj.register_forward_hook(lambda m, a, out: raw.append(out.detach()))
    try:
        with sdpa.observe(lambda q, k, scale: seen.append((q.detach(), float(scale)))), torch.no_grad():
            model(input_ids=IDS)
    finally:
        handle.remove()
    q_sdpa, sdpa_scale = seen[0]  # layer 0's call: [B, heads, T, head_dim], already scaled by the module
    q_raw = raw[0].view(2, 8, 4, 32).transpose(1, 2)  # the query before any logit scale
    effective = float((q_sdpa * sdpa_scale * q_raw).sum() / (q_raw * q_raw).sum())
    d0, d = 16, 32
    assert effective == pytest.approx(math.sqrt(d0) / d, rel=1e-5)  # 0.125; SP would be 1/sqrt(32) = 0.177
    sp_scale = 1 / math.sqrt(d)
    assert abs(effective - sp_scale) > 0.04  # the check can tell muP from SP


def _t5(width: int = 64) -> torch.nn.Module:
    cfg = T.T5Config(
        d_model=width,
        d_kv=16,
        d_ff=2 * width,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        vocab_size=96,
        decoder_start_token_id=0,
        tie_word_embeddings=False,
    )
    cfg.use_cache = False
    torch.manual_seed(0)
    return T.T5ForConditionalGeneration(cfg)


def test_t5_default_example_inputs_feed_the_decoder():
    from fxparam.capture import default_example_inputs

    args, kwargs = default_example_inputs(_t5())
    assert args == () and set(kwargs) >= {"input_ids", "decoder_input_ids"}
    a = fxparam.inspect(_t5())  # raised CaptureError: the decoder had no ids
    assert any(n.startswith("decoder.") for n in a.params) and any(n.startswith("encoder.") for n in a.params)


def test_t5_lm_loss_refused_naming_loss_fn():
    from fxparam.checks.coord import lm_loss

    x = IDS[:, :-1]
    with pytest.raises(ConfigError, match="loss_fn"):
        lm_loss(_t5(), (x, IDS[:, 1:]))


def test_t5_coord_check_measures_both_stacks():
    """T5's forward looks tokens up through ``encoder.embed_tokens`` and ``decoder.embed_tokens``
    (weights tied to ``shared``, which is never called): both lookups are measured, as are the
    2 residual branches of each encoder block and the 3 of each decoder block (2 + 2 layers)."""

    def make(width):
        return _t5(width)

    def loss(model, batch):
        x, y = batch
        logits = model(input_ids=x[:, :4], decoder_input_ids=x[:, 4:]).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[:, 4:].reshape(-1))

    data = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cc = fxparam.coord_check(
            make, config="mup", widths=(32, 64), steps=0, seeds=(0,), data=data, loss_fn=loss
        )
    keys = {r.key for r in cc.records}
    assert {"embedding:encoder.embed_tokens#0", "embedding:decoder.embed_tokens#0"} <= keys
    branches = {k for k in keys if k.startswith("branch:")}
    assert len([k for k in branches if k.startswith("branch:encoder.")]) == 2 * 2
    assert len([k for k in branches if k.startswith("branch:decoder.")]) == 2 * 3
    # two residual streams, each with its own final stream (the encoder's last block is not the model's end)
    assert {"residual:final@stream0", "residual:final@stream1"} <= keys and "residual:final" not in keys
