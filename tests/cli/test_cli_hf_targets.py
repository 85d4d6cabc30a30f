"""``hf:`` targets beyond gpt2/llama/gpt_neox/bert (issue 17): mistral, qwen2, mixtral; t5 refused.

Expected values come from the architectures' definitions (shapes a config implies, which weights
have biases, grouped-query attention's key/value heads), not from fxparam's output.
"""

from __future__ import annotations

import json

import pytest

from fxparam.cli import main

pytest.importorskip("transformers")


def inspect_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["inspect", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_inspect_mistral_7b_sized_on_meta(capsys):
    # 32 heads of 4096 / 32 = 128; grouped-query attention keeps the small config's 2 query heads per
    # key/value head, so k/v project to 16 heads x 128 = 2048; the MLP scales 176/64 -> 11264
    data = inspect_json(["hf:mistral", "--width", "4096", "--depth", "32", "--heads", "32"], capsys)
    assert data["model_class"] == "MistralForCausalLM" and data["width"] == 4096 and data["depth"] == 32
    assert {a["head_dim"] for a in data["attention"]} == {128}
    params = data["params"]
    assert params["model.layers.0.self_attn.q_proj.weight"]["shape"] == [4096, 4096]
    assert params["model.layers.0.self_attn.k_proj.weight"]["shape"] == [2048, 4096]
    assert params["model.layers.31.mlp.gate_proj.weight"]["shape"] == [11264, 4096]
    assert not any(name.endswith(".bias") for name in params)  # Mistral has no biases
    assert params["model.embed_tokens.weight"]["role"] == "embedding"
    assert params["lm_head.weight"]["role"] == "readout"


def test_mistral_builds_on_meta_without_memory():
    from fxparam.checks.targets import resolve

    model = resolve("hf:mistral", heads=32)(width=4096, depth=32, device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert model.config.num_key_value_heads == 16 and model.config.head_dim == 128


@pytest.mark.parametrize(
    ("argv", "field", "expected"),
    [
        (["hf:qwen2", "--vocab", "512"], "model.embed_tokens.weight", [512, 64]),
        (["hf:mixtral", "--vocab", "300"], "lm_head.weight", [300, 64]),
        # each expert widens with the model; the expert count (4) is fixed: [experts, 2 x 96 x 2, width]
        (["hf:mixtral", "--width", "128"], "model.layers.0.mlp.experts.gate_up_proj", [4, 384, 128]),
        (["hf:mixtral", "--width", "128"], "model.layers.0.mlp.gate.weight", [4, 128]),
        # Qwen2's q/k/v carry biases (its definition), o_proj does not
        (["hf:qwen2"], "model.layers.0.self_attn.q_proj.bias", [64]),
    ],
)
def test_new_hf_options_are_honoured(argv, field, expected, capsys):
    assert inspect_json(argv, capsys)["params"][field]["shape"] == expected


def test_qwen2_tie_and_seq_len_reach_the_config(capsys):
    from fxparam.checks.targets import resolve

    data = inspect_json(["hf:qwen2", "--tie-embeddings"], capsys)
    assert data["params"]["lm_head.weight"]["tied_to"] == "model.embed_tokens.weight"
    model = resolve("hf:qwen2", seq_len=128, tie_embeddings=True)(device="meta")
    assert model.config.max_position_embeddings == 128 and model.lm_head.weight is model.model.embed_tokens.weight
    # control: without the option the small config's readout is untied
    assert resolve("hf:qwen2")(device="meta").lm_head.weight is not None
    assert not resolve("hf:qwen2")(device="meta").config.tie_word_embeddings


def test_no_bias_on_a_bias_free_architecture_holds_already(capsys):
    data = inspect_json(["hf:mistral", "--no-bias"], capsys)
    assert not any(name.endswith(".bias") for name in data["params"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["hf:mistral", "--mlp", "gelu"], "--mlp gelu is not available"),
        (["hf:mixtral", "--norm", "layernorm"], "--norm layernorm is not available"),
        (["hf:qwen2", "--pos", "alibi"], "--pos alibi is not available"),
        (["hf:qwen2", "--no-bias"], "--no-bias is not available"),  # q/k/v biases have no switch
        (["hf:mixtral", "--parallel-residual"], "--parallel-residual is not available"),
        (["hf:mistral", "--width", "96", "--heads", "3"], "grouped-query attention (2 query heads per key/value head)"),
        (["hf:t5"], "hf:t5 is not available: T5 is an encoder-decoder"),
        (["hf:falcon"], "unknown Hugging Face architecture 'falcon'"),
    ],
)
def test_options_the_architecture_cannot_honour_are_refused(argv, message, capsys):
    assert main(["inspect", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bias_true_on_a_bias_free_architecture_is_refused():
    from fxparam.checks.targets import resolve
    from fxparam.errors import ConfigError

    with pytest.raises(ConfigError, match="has no biases"):
        resolve("hf:mixtral", bias=True)


def test_help_and_unknown_model_list_the_new_names(capsys):
    assert main(["inspect", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in ("mistral", "qwen2", "mixtral"))


def test_tiny_coord_check_on_mixtral(tmp_path, capsys):
    # a mixture of experts end to end through coord-check: widths 32, 64, one Adam step
    argv = ["coord-check", "--model", "hf:mixtral", "--param", "sp,mup", "--widths", "32,64", "--depths", "none",
            "--seeds", "1", "--steps", "1", "--jobs", "1", "--no-progress", "--no-plots", "--out", str(tmp_path)]
    assert main(argv) in (0, 1), capsys.readouterr().out
    data = json.loads((tmp_path / "coord_check.json").read_text())
    assert data["settings"]["model"] == "hf:mixtral" and data["settings"]["widths"] == [32, 64]
    slopes = data["slopes"]  # {param: {"width": [{"kind", "key", "step", "slope", ...}, ...]}}
    assert any("mlp.gate" in s["key"] for s in slopes["mup"]["width"])  # the router's logits are measured
    # SP (control) blows up with width: its hidden branches grow ~ width^1 (slope near +1)
    assert not data["verdicts"]["sp"]["width"]["invariant"] and data["verdicts"]["sp"]["width"]["max_growth"] > 0.6

    def worst(param: str, kind: str) -> float:
        return max(abs(s["slope"]) for s in slopes[param]["width"] if s["kind"] == kind)

    # muP keeps the residual-branch outputs (attention and the experts' MoE block) width-independent,
    # where SP's grow: the same sites, side by side
    assert worst("mup", "branch") < 0.4 < 1.0 < worst("sp", "branch")
