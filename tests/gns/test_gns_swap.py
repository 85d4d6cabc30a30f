"""swap_norms: in place, same parameters and state_dict, same outputs, idempotent, all-or-nothing errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _gns_helpers import tiny_gpt

from fxparam.errors import GNSError
from fxparam.gns import swap_norms, unswap_norms
from fxparam.kernels import PerExampleLayerNorm, PerExampleNormMixin, PerExampleRMSNorm
from fxparam.models.gpt import GPT, GPTConfig

GPT_NORMS = ["blocks.0.ln_1", "blocks.0.ln_2", "blocks.1.ln_1", "blocks.1.ln_2", "ln_f"]


def _snapshot(model):
    return (
        [(n, id(p)) for n, p in model.named_parameters()],
        list(model.state_dict().keys()),
        {k: v.clone() for k, v in model.state_dict().items()},
    )


@pytest.mark.parametrize("norm,bias", [("layernorm", True), ("layernorm", False), ("rmsnorm", True)])
def test_gpt_swap_keeps_everything(norm, bias):
    model = tiny_gpt(norm, bias)
    idx = torch.randint(0, 64, (3, 10))
    y0 = model(idx)
    params0, keys0, sd0 = _snapshot(model)
    modules0 = {n: id(m) for n, m in model.named_modules()}
    eps0 = {n: m.eps for n, m in model.named_modules() if n in GPT_NORMS}

    assert swap_norms(model) == GPT_NORMS
    params1, keys1, sd1 = _snapshot(model)
    assert params1 == params0 and keys1 == keys0  # identity, names and order
    assert all(torch.equal(sd0[k], sd1[k]) for k in keys0)
    assert {n: id(m) for n, m in model.named_modules()} == modules0  # same module objects
    target = PerExampleLayerNorm if norm == "layernorm" else PerExampleRMSNorm
    for n in GPT_NORMS:
        m = model.get_submodule(n)
        assert type(m) is target and m.eps == eps0[n]
        if norm == "layernorm":
            assert (m.bias is not None) == bias
    assert torch.equal(model(idx), y0)  # outputs unchanged (bitwise on the PyTorch path)
    # Loading an old checkpoint works and gradients agree with the original model.
    ref = tiny_gpt(norm, bias)
    model.load_state_dict(ref.state_dict())
    tgt = torch.randint(0, 64, (3, 10))
    ref(idx, tgt)[1].backward()
    model(idx, tgt)[1].backward()
    for (n, a), (_, b) in zip(ref.named_parameters(), model.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-4, msg=n)


def test_swap_is_idempotent_and_reversible():
    model = tiny_gpt()
    assert swap_norms(model) == GPT_NORMS
    assert swap_norms(model) == []
    assert swap_norms(model, GPT_NORMS) == []
    assert unswap_norms(model) == GPT_NORMS
    assert all(type(model.get_submodule(n)) is nn.LayerNorm for n in GPT_NORMS)


def test_explicit_fqns_only_those():
    model = tiny_gpt()
    assert swap_norms(model, ["ln_f", "blocks.1.ln_2"]) == ["ln_f", "blocks.1.ln_2"]
    swapped = [n for n, m in model.named_modules() if isinstance(m, PerExampleNormMixin)]
    assert swapped == ["blocks.1.ln_2", "ln_f"]


def test_hooks_survive():
    model = tiny_gpt()
    seen = []
    model.ln_f.register_forward_hook(lambda m, i, o: seen.append(type(m).__name__))
    swap_norms(model)
    model(torch.zeros(1, 4, dtype=torch.long))
    assert seen == ["PerExampleLayerNorm"]


class TwoD(nn.Module):
    def __init__(self):
        super().__init__()
        self.ok = nn.LayerNorm(8)
        self.bad = nn.LayerNorm((4, 8))
        self.lin = nn.Linear(8, 8)


def test_unswappable_raises_and_leaves_model_unmodified():
    model = TwoD()
    before = copy.deepcopy(model)
    with pytest.raises(GNSError) as ei:
        swap_norms(model, ["ok", "bad", "lin", "missing"])
    msg = str(ei.value)
    assert "'bad'" in msg and "2 dims" in msg and "'lin'" in msg and "'missing'" in msg
    assert "'ok'" not in msg and "not modified" in msg
    assert type(model.ok) is nn.LayerNorm and type(model.bad) is nn.LayerNorm
    assert repr(model) == repr(before)
    # Auto-detection skips the 2-D one with a warning and swaps the rest.
    with pytest.warns(UserWarning, match="'bad'"):
        assert swap_norms(model) == ["ok"]


class NanoGPTLayerNorm(nn.Module):
    """nanoGPT's LayerNorm: optional bias, eps hard-coded (no eps attribute)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class T5StyleNorm(nn.Module):
    def __init__(self, n, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states


class GemmaStyleNorm(T5StyleNorm):
    def forward(self, hidden_states):
        return super().forward(hidden_states) / self.weight * (1.0 + self.weight)


class Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.nano = NanoGPTLayerNorm(12, bias=True)
        self.nano_nobias = NanoGPTLayerNorm(12, bias=False)
        self.t5 = T5StyleNorm(12)
        self.gemma = GemmaStyleNorm(12)
        with torch.no_grad():
            for p in self.parameters():
                p.normal_()


def test_foreign_norms_detected_by_probe():
    model = Holder()
    x = torch.randn(3, 4, 12)
    outs = {n: m(x) for n, m in model.named_children()}
    keys = list(model.state_dict())
    with pytest.warns(UserWarning, match="'gemma'"):
        swapped = swap_norms(model)
    assert swapped == ["nano", "nano_nobias", "t5"]
    assert model.nano.norm_kind == "layernorm" and model.nano._fxparam_eps == 1e-5
    assert model.nano_nobias.norm_kind == "layernorm"  # mean-centred: not RMSNorm
    assert model.t5.norm_kind == "rmsnorm" and model.t5._fxparam_eps == 1e-6
    assert list(model.state_dict()) == keys
    for n in swapped:  # their own forward still computes the output
        assert torch.equal(getattr(model, n)(x), outs[n])
    with pytest.raises(GNSError, match="'gemma'.*does not compute"):
        swap_norms(model, ["gemma"])


def test_foreign_backward_gives_per_example_norms():
    model = Holder()
    swap_norms(model, ["t5", "nano"])
    x = torch.randn(3, 4, 12)
    for name in ("t5", "nano"):
        m = getattr(model, name)
        m.gns_accumulator.keep_per_example = True
        m(x).pow(2).sum().backward()
        plain = copy.deepcopy(m)
        unswap_norms(plain)
        per = []
        for b in range(3):
            plain.zero_grad()
            plain(x[b : b + 1]).pow(2).sum().backward()
            per.append(plain.weight.grad.pow(2).sum())
        torch.testing.assert_close(
            m.gns_accumulator.per_example["weight"][0], torch.stack(per), rtol=1e-4, atol=1e-6
        )


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_hf_llama_rmsnorm():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    lm = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for n, p in lm.named_parameters():
            if "norm" in n:
                p.normal_()
    idx = torch.randint(0, 64, (2, 7))
    y0 = lm(idx).logits
    keys = list(lm.state_dict())
    swapped = swap_norms(lm)
    assert swapped == [
        "model.layers.0.input_layernorm",
        "model.layers.0.post_attention_layernorm",
        "model.layers.1.input_layernorm",
        "model.layers.1.post_attention_layernorm",
        "model.norm",
    ]
    assert isinstance(lm.model.norm, transformers.models.llama.modeling_llama.LlamaRMSNorm)
    assert torch.equal(lm(idx).logits, y0) and list(lm.state_dict()) == keys
    lm(idx, labels=idx).loss.backward()
    assert lm.model.norm.gns_accumulator.count == 2


def test_meta_device_swap_on_structure():
    with torch.device("meta"):
        model = GPT(GPTConfig(width=32, depth=1, head_dim=16))
        holder = Holder()
    assert swap_norms(model) == ["blocks.0.ln_1", "blocks.0.ln_2", "ln_f"]
    # Foreign classes on meta need an eps attribute and a telling class name.
    with pytest.raises(GNSError, match="meta"):
        swap_norms(holder, ["nano"])
