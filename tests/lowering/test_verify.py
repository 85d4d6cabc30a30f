"""Verify after lowering (issue 14, item 1): the running model realizes its plan, or the transform is refused.

Expected values come from first principles: SDPA's default logit scale is 1/sqrt(d_head),
the muP scale with base head dim b is sqrt(b)/d_head (Tensor Programs V), a depth
multiplier of CompleteP (alpha=1) is base_depth/depth.  Every positive check has a
negative control (a tampered model must fail the same check).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

import fxparam
from fxparam.lowering._hooks import OutputScale
from fxparam.lowering.verify import verify
from fxparam.models.gpt import GPT, GPTConfig

SDPA_BY_NAME = torch._C._nn.scaled_dot_product_attention  # what `from torch.nn.functional import ...` binds


def _gpt(width: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return GPT(GPTConfig(width=width, depth=2, heads=2, vocab=256, seq_len=32))


def _snapshot(model: nn.Module) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, m in model.named_modules():
        out[name] = (type(m), len(m._forward_hooks), len(m._forward_pre_hooks), sorted(m.__dict__))
    for name, p in model.named_parameters():
        out["p:" + name] = (id(p), p.detach().clone())
    return out


def _same(a: dict[str, object], b: dict[str, object]) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if k.startswith("p:"):
            if x[0] != y[0] or not torch.equal(x[1], y[1]):  # type: ignore[index]
                return False
        elif x != y:
            return False
    return True


def test_transformed_gpt_realizes_every_planned_site() -> None:
    model = fxparam.transform(_gpt(), "completep", base_width=16, base_depth=1, base_head_dim=8)
    plan = fxparam.plan_of(model)
    report = verify(model, init=True)
    assert report.ok, str(report)
    assert report.probed
    probed = {c.site for c in report.checks if c.how == "probe" and c.kind == "multiplier"}
    assert probed == set(plan.multipliers), "every planned multiplier is measured on a forward"
    # first principles: depth 2 over base depth 1 (alpha=1) -> 1/2 on every residual branch; readout 1/m_d = 1/2
    branches = [c for c in report.checks if c.how == "probe" and c.kind == "multiplier" and "proj" in c.site]
    assert branches and all(math.isclose(c.realized, 0.5, rel_tol=1e-5) for c in branches)
    attention = [c for c in report.checks if c.how == "probe" and c.kind == "attention"]
    head_dim = 32 // 2
    assert len(attention) == 2 and all(math.isclose(c.realized, math.sqrt(8) / head_dim, rel_tol=1e-6)
                                       for c in attention)
    assert any(c.kind == "init" for c in report.checks)
    assert "0 failed" in str(report)


def test_a_tampered_multiplier_is_found_with_its_realized_factor() -> None:
    """Negative control: double scaling at one site (0.25 where 0.5 is planned) is named, planned vs realized."""
    model = fxparam.transform(_gpt(), "completep", base_width=16, base_depth=1)
    target = "blocks.1.mlp.proj"
    module = dict(model.named_modules())[target]
    module.fxparam_out *= 0.5  # what a second, un-refused transform would do
    report = verify(model)
    bad = {c.site: c for c in report.failures if c.how == "probe"}
    assert set(bad) == {target}
    assert math.isclose(bad[target].planned, 0.5) and math.isclose(bad[target].realized, 0.25, rel_tol=1e-5)
    with pytest.raises(fxparam.LoweringError, match=r"blocks\.1\.mlp\.proj.*planned 0\.5, realized 0\.25"):
        report.raise_if_failed()


def test_the_users_own_hooks_on_a_planned_site_are_not_mistaken_for_a_wrong_multiplier() -> None:
    """A pre-hook that edits a branch's input and a soft-cap on the readout are the model's, not the plan's:
    the transform is accepted and the hooked site computes, by hand, 0.5 * (W (x + 0.1) + b) (CompleteP's
    branch factor base_depth/depth = 1/2).  Negative control: with the hooks in place, a doubled factor
    is still found (planned 0.5, realized 1.0)."""
    torch.manual_seed(0)
    model = _gpt()
    target = "blocks.0.mlp.proj"
    module = dict(model.named_modules())[target]
    module.register_forward_pre_hook(lambda m, args: (args[0] + 0.1,))
    model.lm_head.register_forward_hook(lambda m, args, out: 0.05 * torch.tanh(out / 0.05))  # far from linear
    fxparam.transform(model, "completep", base_width=16, base_depth=1)  # was refused: the hooks read as a mismatch
    seen = {}
    module.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0].clone()), prepend=True)
    module.register_forward_hook(lambda m, args, out: seen.__setitem__("y", out.clone()))
    model.eval()
    with torch.no_grad():
        model(torch.randint(0, 256, (2, 8)))
        by_hand = 0.5 * torch.nn.functional.linear(seen["x"] + 0.1, module.weight, module.bias)
    torch.testing.assert_close(seen["y"], by_hand, rtol=1e-5, atol=1e-6)
    assert verify(model).ok
    module.fxparam_out *= 2.0
    bad = {c.site: c for c in verify(model).failures if c.how == "probe"}
    assert set(bad) == {target} and math.isclose(bad[target].realized, 1.0, rel_tol=1e-5)


def test_scaling_outside_the_plan_is_found() -> None:
    model = fxparam.transform(_gpt(), "mup", base_width=16)
    assert verify(model).ok
    dict(model.named_modules())["blocks.0.mlp.fc"].register_forward_hook(OutputScale(3.0, "blocks.0.mlp.fc"))
    report = verify(model)
    assert [(c.site, c.kind) for c in report.failures] == [("blocks.0.mlp.fc", "untouched")]


def test_init_std_check_has_a_negative_control() -> None:
    model = fxparam.transform(_gpt(64), "mup", base_width=16)
    assert verify(model, init=True).ok
    name, param = next((n, p) for n, p in model.named_parameters()
                       if fxparam.plan_of(model).params[n].init == "normal" and p.ndim == 2)
    with torch.no_grad():
        param.mul_(1.5)
    bad = [c for c in verify(model, init=True).failures if c.kind == "init"]
    assert [c.site for c in bad] == [name]
    assert math.isclose(bad[0].realized / bad[0].planned, 1.5, rel_tol=0.1)


# --------------------------------------------------------------------------- case 4: SDPA imported by name


class ByNameAttention(nn.Module):
    """Calls SDPA through a name bound at import (``from torch.nn.functional import ...``)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in self.qkv(x).split(C, 2))
        y = SDPA_BY_NAME(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class TinyLM(nn.Module):
    def __init__(self, d: int = 128, heads: int = 2, depth: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(256, d)
        self.norms = nn.ModuleList([nn.LayerNorm(d) for _ in range(depth)])
        self.attn = nn.ModuleList([ByNameAttention(d, heads) for _ in range(depth)])
        self.head = nn.Linear(d, 256, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        for norm, attn in zip(self.norms, self.attn, strict=True):
            x = x + attn(norm(x))
        return self.head(x)


def test_case4_sdpa_imported_by_name_gets_the_planned_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    idx = torch.randint(0, 256, (2, 8))
    # d_head 64: SDPA's own scale 1/8 = 0.125; muP with base_head_dim 16: sqrt(16)/64 = 0.0625
    model = fxparam.transform(TinyLM(), "mup", base_width=32, base_head_dim=16, example_inputs=(idx,))
    report = verify(model, example_inputs=(idx,))
    attention = [c for c in report.checks if c.kind == "attention" and c.how == "probe"]
    assert len(attention) == 2 and all(math.isclose(c.realized, 0.0625, rel_tol=1e-9) for c in attention)
    assert report.ok, str(report)
    import pickle

    with torch.no_grad():
        ref = model(idx)
        for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):  # the rule is module state
            torch.testing.assert_close(twin(idx), ref, rtol=0, atol=0)
            assert verify(twin, example_inputs=(idx,)).ok

    # negative control: without the module-local mode (the old process-global wrapper only), the by-name
    # call bypasses the override; verify finds it, the transform is refused and rolled back
    from fxparam.lowering import sdpa

    class Blind(torch.overrides.TorchFunctionMode):
        def __init__(self, scale: float) -> None:
            super().__init__()

        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(sdpa, "_ModuleScale", Blind)
    torch.manual_seed(0)
    fresh = TinyLM()
    before = _snapshot(fresh)
    with pytest.raises(fxparam.LoweringError, match=r"attn\.0.*planned 0\.0625, realized 0\.125") as info:
        fxparam.transform(fresh, "mup", base_width=32, base_head_dim=16, example_inputs=(idx,))
    assert "imported" in str(info.value) and "attention='sp'" in str(info.value)
    assert _same(before, _snapshot(fresh)), "the refused transform left the model changed"
    with pytest.raises(fxparam.LoweringError, match="not transformed"):
        fxparam.plan_of(fresh)


# --------------------------------------------------------------------------- case 5: nn.MultiheadAttention


class MHABlock(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class MHALM(nn.Module):
    def __init__(self, d: int = 32, depth: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(256, d)
        self.blocks = nn.ModuleList([MHABlock(d) for _ in range(depth)])
        self.head = nn.Linear(d, 256)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


@pytest.mark.parametrize(("attention", "base_head_dim"), [("mup", None), ("sp", None), ("mup", 8)])
def test_case5_multihead_attention_works_or_is_refused_at_transform_time(attention: str,
                                                                         base_head_dim: int | None) -> None:
    """Never a transform that succeeds and a first forward that raises."""
    torch.manual_seed(0)
    model = MHALM()  # d 32, 2 heads: d_head 16
    idx = torch.randint(0, 256, (2, 8))
    reference = copy.deepcopy(model)
    before = _snapshot(model)
    extra = {} if base_head_dim is None else {"base_head_dim": base_head_dim}
    if base_head_dim is not None:  # sqrt(8)/16 != 1/4: a logit scale nn.MultiheadAttention cannot take
        with pytest.raises(fxparam.LoweringError, match=r"MultiheadAttention.*attention='sp'"):
            fxparam.transform(model, "completep", base_width=16, base_depth=1, attention=attention,
                              example_inputs=(idx,), init=False, **extra)
        assert _same(before, _snapshot(model))
        return
    fxparam.transform(model, "completep", base_width=16, base_depth=1, attention=attention,
                      example_inputs=(idx,), init=False)
    # accepted: it runs and realizes the plan; residual branches (the MHA output too) x base_depth/depth = 1/2
    report = verify(model, example_inputs=(idx,))
    assert report.ok, str(report)
    mha = [c for c in report.checks if c.site == "blocks.0.attn" and c.how == "probe"]
    assert mha and math.isclose(mha[0].realized, 0.5, rel_tol=1e-5)
    model.train()  # the training path (F.multi_head_attention_forward) as well as the fused eval path
    out = model(idx)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, reference(idx))  # negative control: the plan changed the function


def test_graph_lowering_is_verified_against_the_eager_lowering(monkeypatch: pytest.MonkeyPatch) -> None:
    from fxparam.lowering import graph as graph_lowering

    idx = torch.randint(0, 256, (2, 8))
    gm = fxparam.transform(_gpt(), "completep", base_width=16, base_depth=1, lowering="graph", example_inputs=(idx,))
    assert fxparam.plan_of(gm).m_L == 2.0
    # negative control: a graph rewrite that forgets one multiplier node is refused, the model untouched
    original = graph_lowering._scale_output
    skipped: list[str] = []

    def forgetful(graph, nodes, out, factor, aten, owner):  # noqa: ANN001, ANN202
        if not skipped:
            skipped.append(str(owner))
            return None
        return original(graph, nodes, out, factor, aten, owner)

    monkeypatch.setattr(graph_lowering, "_scale_output", forgetful)
    model = _gpt()
    before = _snapshot(model)
    with pytest.raises(fxparam.LoweringError, match=r"<graph>.*planned 1\.0"):
        fxparam.transform(model, "completep", base_width=16, base_depth=1, lowering="graph", example_inputs=(idx,))
    assert skipped and _same(before, _snapshot(model))


@pytest.mark.parametrize("arch", ["gpt", "nanogpt", "llama"])
def test_at_base_width_and_depth_the_transformed_model_computes_the_original(arch: str) -> None:
    """Nothing else changed: at m_d = m_L = 1 every multiplier and attention ratio is 1 (muP/CompleteP tables)."""
    import importlib.util
    from pathlib import Path

    torch.manual_seed(0)
    if arch == "gpt":
        make, width, depth, call = (lambda: _gpt(32)), 32, 2, (lambda m, i: m(i))
    elif arch == "nanogpt":
        path = Path(__file__).resolve().parents[1] / "nanogpt_style.py"
        spec = importlib.util.spec_from_file_location("nanogpt_style_verify", path)
        mod = importlib.util.module_from_spec(spec)
        assert spec.loader is not None
        spec.loader.exec_module(mod)
        make, width, depth, call = (lambda: mod.make(32, 2)), 32, 2, (lambda m, i: m(i, i)[0])
    else:
        from fxparam.models.hf import hf_model

        make, width, depth, call = (lambda: hf_model("llama")), 64, 2, (lambda m, i: m(input_ids=i).logits)
    original = make().eval()
    idx = torch.randint(0, 128, (2, 8))
    with torch.no_grad():
        ref = call(original, idx)
    same = fxparam.transform(copy.deepcopy(original), "completep", base_width=width, base_depth=depth, init=False)
    assert verify(same).ok
    with torch.no_grad():
        torch.testing.assert_close(call(same.eval(), idx), ref, rtol=1e-6, atol=1e-6)
    # negative control: half the base width (m_d = 2) changes the function
    half = fxparam.transform(copy.deepcopy(original), "completep", base_width=width // 2, base_depth=depth, init=False)
    with torch.no_grad():
        assert not torch.allclose(call(half.eval(), idx), ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_is_verified_within_its_rounding_and_a_wrong_factor_still_fails(dtype) -> None:
    """A half-precision Llama: scaling the weight instead of the activation rounds differently (fp16 gave a
    relative 1.4e-4 and the transform was refused).  Tolerance 4 ulps of the dtype; the CompleteP branch
    factor base_depth/depth = 1/2 doubled to 1 is still found."""
    pytest.importorskip("transformers")
    from fxparam.models.hf import hf_model

    torch.manual_seed(0)
    model = fxparam.transform(hf_model("llama").to(dtype), "completep", base_width=16, base_depth=1,
                              base_head_dim=4, output_multiplier=1.3)
    assert verify(model).ok
    target = "model.layers.1.mlp.down_proj"
    dict(model.named_modules())[target].fxparam_out *= 2.0
    bad = {c.site: c for c in verify(model).failures if c.how == "probe"}
    assert set(bad) == {target} and math.isclose(bad[target].realized, 1.0, rel_tol=0.02)


def test_verify_without_inputs_for_a_model_they_cannot_be_guessed_for_asks_for_them() -> None:
    """Not being able to probe is not a failed site: it was reported as 'the forward raised' (ok=False)."""

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.fc, self.head = nn.Embedding(64, 32), nn.Linear(32, 32), nn.Linear(32, 64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.fc(self.emb(x))))

    idx = torch.randint(0, 64, (2, 8))
    model = fxparam.transform(Tiny(), "mup", base_width=16, example_inputs=idx)
    with pytest.raises(fxparam.CaptureError, match="example_inputs"):
        verify(model)
    report = verify(model, example_inputs=idx)
    assert report.ok and report.probed
    checks = {c.site: c for c in report.checks if c.how == "probe"}
    assert math.isclose(checks["input:head"].realized, 16 / 32, rel_tol=1e-5)  # muP readout base_width/width
