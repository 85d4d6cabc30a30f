"""The plan travels with the checkpoint (issue 14, cases 3 and 7; item 5) and the meta-device init flow.

Reference outputs are the transformed model's own logits in the saving process; the
negative control is the untransformed model (its logits must differ, or the test could
not fail).  Fresh-process tests run the loading side in a subprocess: nothing process-
global (SDPA wrapper, registries) survives from the saving side.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import fxparam
from fxparam.models.gpt import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
CFG = GPTConfig(width=32, depth=2, heads=2, vocab=256, seq_len=32, tie_embeddings=True)
KW = {"base_width": 16, "base_depth": 1, "base_head_dim": 8, "output_multiplier": 1.5}


def _run(code: str, tmp_path: Path) -> str:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "PATH": "/usr/bin:/bin",
                              "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_safetensors_round_trip_applies_the_plan_and_refuses_mismatches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = fxparam.transform(GPT(CFG), "completep+supar", density=0.5, **KW)
    idx = torch.randint(0, 256, (2, 8))
    ref = model(idx).detach()
    path = tmp_path / "ckpt.safetensors"
    fxparam.save(model, path)

    with pytest.raises(fxparam.LoweringError, match="is an fxparam checkpoint.*not transformed"):
        fxparam.load(GPT(CFG), path, apply=False)
    loaded = fxparam.load(lambda: GPT(CFG), path)
    assert fxparam.plan_of(loaded).fingerprint() == fxparam.plan_of(model).fingerprint()
    torch.testing.assert_close(loaded(idx), ref, rtol=0, atol=0)
    assert fxparam.verify(loaded).ok
    # negative control: the same weights in an untransformed model compute something else
    plain = GPT(CFG)
    plain.load_state_dict(model.state_dict())
    assert not torch.allclose(plain(idx), ref)

    other = fxparam.transform(GPT(CFG), "mup", base_width=8)
    with pytest.raises(fxparam.LoweringError, match="another plan"):
        fxparam.load(other, path)
    from safetensors.torch import save_model

    save_model(GPT(CFG), str(tmp_path / "plain.safetensors"))
    with pytest.warns(UserWarning, match="carries no fxparam plan"):
        fxparam.load(fxparam.transform(GPT(CFG), "mup", base_width=16), tmp_path / "plain.safetensors")


def test_case3_torch_save_load_in_a_fresh_process_keeps_the_attention_rule(tmp_path: Path) -> None:
    """nanoGPT-style attention (SDPA without a scale attribute): the planned scale survives pickling."""
    import nanogpt_style

    torch.manual_seed(0)
    model = nanogpt_style.make(64, 2)
    untouched = nanogpt_style.make(64, 2)
    fxparam.transform(model, "mup", base_width=32, base_head_dim=4)  # head dim 16: scale 2/16, not 1/4
    untouched.load_state_dict(model.state_dict())
    idx = torch.randint(0, 128, (2, 16))
    ref, _ = model(idx, idx)
    plain, _ = untouched(idx, idx)
    assert not torch.allclose(ref, plain)  # negative control: the rule changes the outputs
    torch.save(model, tmp_path / "model.pt")
    torch.save({"idx": idx, "ref": ref.detach()}, tmp_path / "ref.pt")
    out = _run(f"""
        import torch, fxparam, nanogpt_style
        model = torch.load({str(tmp_path / 'model.pt')!r}, weights_only=False)
        data = torch.load({str(tmp_path / 'ref.pt')!r})
        logits, _ = model(data["idx"], data["idx"])
        print("max_diff", float((logits - data["ref"]).abs().max()))
        print("verify_ok", fxparam.verify(model).ok)
    """, tmp_path)
    assert "max_diff 0.0" in out and "verify_ok True" in out, out


@pytest.mark.slow
def test_case7_save_pretrained_then_from_pretrained_in_a_fresh_process(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from fxparam.models.hf import hf_model

    torch.manual_seed(0)
    model = fxparam.transform(hf_model("llama"), "completep", **KW)
    idx = torch.randint(0, 256, (2, 8))
    ref = model(input_ids=idx).logits.detach()
    model.save_pretrained(tmp_path / "ckpt")
    assert "fxparam_plan" in (tmp_path / "ckpt" / "config.json").read_text()
    torch.save({"idx": idx, "ref": ref}, tmp_path / "ref.pt")
    out = _run(f"""
        import torch, fxparam
        from transformers import LlamaForCausalLM
        data = torch.load({str(tmp_path / 'ref.pt')!r})
        plain = LlamaForCausalLM.from_pretrained({str(tmp_path / 'ckpt')!r})
        print("plain_diff", float((plain(input_ids=data["idx"]).logits - data["ref"]).abs().max()))
        try:
            fxparam.optimizer(plain, torch.optim.AdamW, lr=1e-3)
        except fxparam.LoweringError as exc:
            print("detected", "fxparam.from_pretrained" in str(exc))
        model = fxparam.from_pretrained(LlamaForCausalLM, {str(tmp_path / 'ckpt')!r})
        print("max_diff", float((model(input_ids=data["idx"]).logits - data["ref"]).abs().max()))
        print("verify_ok", fxparam.verify(model).ok)
    """, tmp_path)
    values = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert float(values["plain_diff"]) > 1e-3, out  # negative control: plain loading loses the plan
    assert values["detected"] == "True", out
    assert float(values["max_diff"]) <= 1e-5 and values["verify_ok"] == "True", out


def test_meta_init_is_refused_and_init_weights_draws_the_planned_stds() -> None:
    with torch.device("meta"):
        model = GPT(GPTConfig(width=64, depth=2, heads=2, vocab=256, seq_len=32))
    with pytest.raises(fxparam.ConfigError, match=r"meta device.*init=False.*to_empty.*fxparam.init_weights"):
        fxparam.transform(model, "mup", base_width=16)
    fxparam.transform(model, "mup", base_width=16, init=False)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(7.0)  # what to_empty may leave: garbage
    assert not fxparam.verify(model, init=True, probe=False).ok  # negative control
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reference GPT's keep-params all have reset_parameters
        fxparam.init_weights(model)
    report = fxparam.verify(model, init=True)
    assert report.ok, str(report)
    assert all(float(p.abs().max()) != 7.0 for p in model.parameters())


def test_a_load_that_fails_after_the_plan_was_applied_leaves_the_model_as_handed_in(tmp_path: Path) -> None:
    """The model has a persistent buffer the checkpoint lacks: the plan applies (same parameters), then
    safetensors' strict load fails.  The model must come back untransformed with its own weights (a
    half-loaded transformed model would be scaled by the plan with the wrong weights)."""
    torch.manual_seed(0)
    path = tmp_path / "ckpt.safetensors"
    fxparam.save(fxparam.transform(GPT(CFG), "completep+supar", density=0.5, **KW), path)
    target = GPT(CFG)
    target.register_buffer("step_count", torch.zeros(()))  # not in the checkpoint
    before = {n: (id(p), p.detach().clone()) for n, p in target.named_parameters()}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in target.modules())
    with pytest.raises(RuntimeError, match="step_count"):
        fxparam.load(target, path)
    assert not hasattr(target, "_fxparam_plan")
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in target.modules()) == hooks
    assert not any(type(m).__module__.startswith(("fxparam.lowering", "fxparam.kernels")) for m in target.modules())
    after = {n: (id(p), p.detach()) for n, p in target.named_parameters()}
    assert all(after[n][0] == before[n][0] and torch.equal(after[n][1], before[n][1]) for n in before)
    loaded = fxparam.load(target, path, strict=False)  # control: the same load, non-strict, goes through
    assert fxparam.verify(loaded).ok


def test_init_weights_restores_the_tie_that_to_empty_breaks_and_verify_flags_it() -> None:
    """GPT-2 ties lm_head to wte.  to_empty of a meta model replaces each Parameter separately (meta storage
    cannot be swapped in place), so the two come back as two weights, each initialised and trained apart.
    verify flags the broken tie (negative control); init_weights re-ties them per the plan's tied_to."""
    pytest.importorskip("transformers")
    from fxparam.models.hf import hf_model

    model = fxparam.transform(hf_model("gpt2", device="meta"), "mup", base_width=16, init=False)
    assert fxparam.plan_of(model).params["lm_head.weight"].tied_to == "transformer.wte.weight"
    model.to_empty(device="cpu")
    assert model.lm_head.weight is not model.transformer.wte.weight  # PyTorch's to_empty, not fxparam
    report = fxparam.verify(model, probe=False)
    assert [(c.site, c.kind) for c in report.failures] == [("lm_head.weight", "tie")]
    fxparam.init_weights(model)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert len(list(model.parameters())) == len(list(hf_model("gpt2").parameters()))
    report = fxparam.verify(model, init=True)
    assert report.ok, str(report)
