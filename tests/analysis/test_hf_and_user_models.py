"""Analysis of Hugging Face models (small configs, no downloads) and user-written models."""

import pytest
import torch
import torch.nn as nn

import fxparam
from fxparam.models.hf import hf_model

pytest.importorskip("transformers")


def _roles(a):
    return {n: p.role for n, p in a.params.items()}


def _check_roles(a, embeddings, readouts, hidden_suffixes):
    for name, p in a.params.items():
        if name in embeddings:
            assert p.role == "embedding", name
        elif name in readouts:
            assert p.role == "readout", name
        elif name.endswith(".weight") and any(s in name for s in hidden_suffixes):
            assert p.role == "hidden", name
        else:
            assert p.role == "vector", name


@pytest.mark.parametrize("depth", [2, 4])
def test_gpt2(depth):
    a = fxparam.inspect(hf_model("gpt2", n_layer=depth))
    assert a.depth == depth and len(a.residuals) == 2 * depth
    assert a.blocks == [f"transformer.h.{i}" for i in range(depth)]
    _check_roles(a, {"transformer.wte.weight", "transformer.wpe.weight"}, {"lm_head.weight"},
                 ["c_attn", "c_proj", "c_fc"])
    assert a.tied == [["transformer.wte.weight", "lm_head.weight"]]
    # HF Conv1D stores [in, out]: fan-in is dim 0
    assert a.params["transformer.h.0.mlp.c_fc.weight"].fan_in_dim == 0
    assert a.params["transformer.h.0.mlp.c_fc.weight"].fan_in == 64
    assert all(s.scale == pytest.approx(0.25) and s.scale_attr == "scaling" for s in a.attention)
    assert len(a.norms) == 2 * depth + 1


def test_llama():
    a = fxparam.inspect(hf_model("llama", num_hidden_layers=3))
    assert a.depth == 3 and len(a.residuals) == 6
    _check_roles(a, {"model.embed_tokens.weight"}, {"lm_head.weight"}, ["_proj"])
    assert {n.kind for n in a.norms} == {"rmsnorm"} and len(a.norms) == 7
    assert {r.output_modules[0].rsplit(".", 1)[1] for r in a.residuals} == {"o_proj", "down_proj"}
    assert all(s.head_dim == 16 and s.scale_attr == "scaling" for s in a.attention)
    assert a.tied == []


def test_gpt_neox_parallel_residual():
    a = fxparam.inspect(hf_model("gpt_neox", num_hidden_layers=3))
    assert a.depth == 3
    assert len(a.residuals) == 3  # one site per block, two branches
    for r in a.residuals:
        assert sorted(r.branches) == sorted([f"{r.block}.attention", f"{r.block}.mlp"])
    _check_roles(a, {"gpt_neox.embed_in.weight"}, {"lm_head.weight"},
                 ["query_key_value", "attention.dense", "dense_h_to_4h", "dense_4h_to_h"])


def test_bert_post_norm_encoder():
    a = fxparam.inspect(hf_model("bert", num_hidden_layers=3))
    assert a.depth == 3 and len(a.residuals) == 6
    assert a.blocks == [f"bert.encoder.layer.{i}" for i in range(3)]
    emb = {f"bert.embeddings.{k}.weight" for k in ("word_embeddings", "position_embeddings", "token_type_embeddings")}
    _check_roles(a, emb, {"cls.predictions.decoder.weight"},
                 ["query", "key", "value", ".dense"])
    assert ["bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"] in a.tied
    assert ["cls.predictions.bias", "cls.predictions.decoder.bias"] in a.tied  # HF ties the bias too
    assert a.params["cls.predictions.decoder.weight"].tied_to == "bert.embeddings.word_embeddings.weight"


def test_nanogpt_style_model():
    from tests.nanogpt_style import GPT, GPTConfig

    model = GPT(GPTConfig(n_layer=4))
    a = fxparam.inspect(model, example_inputs=(torch.zeros(2, 16, dtype=torch.long),))
    assert a.depth == 4 and len(a.residuals) == 8
    # nanoGPT registers lm_head first, then ties wte to it
    assert a.tied == [["transformer.wte.weight", "lm_head.weight"]] or a.tied == [["lm_head.weight", "transformer.wte.weight"]]
    assert a.params["transformer.wte.weight"].role == "embedding"
    assert a.params["lm_head.weight"].role == "readout"
    assert a.params["transformer.h.3.attn.c_attn.weight"].role == "hidden"
    assert a.params["transformer.ln_f.weight"].role == "vector"
    assert all(s.scale == pytest.approx(0.25) and s.scale_attr is None for s in a.attention)
    assert len(a.norms) == 9


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        h = self.fc(x)
        if h.sum() > 0:  # Python branch on a tensor value
            h = h * 2
        return h


def test_data_dependent_control_flow_gets_capture_error():
    with pytest.raises(fxparam.CaptureError) as info:
        fxparam.inspect(_DataDependent(), example_inputs=torch.zeros(2, 8))
    msg = str(info.value)
    assert "_DataDependent" in msg
    assert "data-dependent" in msg
    assert "test_hf_and_user_models.py" in msg and "h.sum() > 0" in msg  # the user's line
    assert "Traceback" not in msg


def test_missing_example_inputs_is_explained():
    with pytest.raises(fxparam.CaptureError, match="example_inputs"):
        fxparam.inspect(nn.Sequential(nn.Linear(4, 4)))


def test_plain_mlp_roles():
    mlp = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    a = fxparam.inspect(mlp, example_inputs=torch.zeros(4, 10))
    assert a.depth == 0 and a.residuals == []
    assert a.params["0.weight"].role == "embedding"
    assert (a.params["0.weight"].fan_in_width, a.params["0.weight"].fan_out_width) == (False, True)
    assert a.params["2.weight"].role == "hidden"
    assert a.params["4.weight"].role == "readout"
    assert a.width == 64


class _Out:
    """A custom output class that is not a pytree: plain torch.export rejects it."""

    def __init__(self, logits):
        self.logits = logits


class _CustomOutputModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(32, 64)
        self.blocks = nn.ModuleList([nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 64)) for _ in range(3)])
        self.head = nn.Linear(64, 32)

    def forward(self, idx):
        x = self.emb(idx)
        for block in self.blocks:
            x = x + block(x)
        return _Out(self.head(x))


def test_fallback_for_outputs_export_rejects():
    a = fxparam.inspect(_CustomOutputModel(), example_inputs=torch.zeros(2, 4, dtype=torch.long))
    assert "flattened" in a.capture_method
    assert a.depth == 3
    assert a.params["head.weight"].role == "readout"
    assert a.params["blocks.2.1.weight"].role == "hidden"
