"""HF Trainer: 5 steps on a transformed tiny Llama whose param groups carry the planned LRs (issue 16 case 6)."""

from __future__ import annotations

import warnings

import pytest
import torch

import fxparam

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from fxparam.integrations import hf_trainer  # noqa: E402
from fxparam.models.hf import hf_model  # noqa: E402

LR, WD, M_D = 1e-2, 0.1, 2  # width 128 / base 64


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    m = hf_model("llama", hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=4,
                 num_hidden_layers=2, vocab_size=128)
    return fxparam.transform(m, "completep", base_width=64, base_depth=2)


def _dataset(n: int = 10) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": (ids := torch.randint(0, 128, (16,), generator=g)), "labels": ids.clone()} for _ in range(n)]


def _args(tmp_path, max_steps: int = 5, **kw) -> transformers.TrainingArguments:
    return transformers.TrainingArguments(
        output_dir=str(tmp_path), learning_rate=LR, weight_decay=WD, max_steps=max_steps, per_device_train_batch_size=2,
        warmup_steps=2, lr_scheduler_type="constant_with_warmup", report_to=[], save_strategy="no", use_cpu=True,
        logging_strategy="no", disable_tqdm=True, **kw)


def _group_of(opt: torch.optim.Optimizer, fqn: str) -> dict:
    return next(g for g in opt.param_groups if fqn in g.get("param_names", []))


def test_trainer_five_steps_with_the_planned_groups(model: torch.nn.Module, tmp_path) -> None:
    args = _args(tmp_path)
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_dataset(),
                                   optimizer_cls_and_kwargs=hf_trainer.optimizer_cls_and_kwargs(args))
    with warnings.catch_warnings():
        warnings.simplefilter("error", fxparam.optim.PlanLRWarning)
        trainer.train()
    assert trainer.state.global_step == 5
    assert not torch.equal(before, model.model.layers[0].mlp.up_proj.weight)
    opt = trainer.optimizer
    hidden = _group_of(opt, "model.layers.0.mlp.up_proj.weight")
    emb = _group_of(opt, "model.embed_tokens.weight")
    norm = _group_of(opt, "model.layers.0.input_layernorm.weight")
    # the muP/CompleteP Adam table (alpha = 1, m_L = 1): hidden eta/m_d, decay lambda*m_d; embedding eta;
    # norm gains eta without decay
    assert hidden["initial_lr"] == pytest.approx(LR / M_D) and hidden["weight_decay"] == pytest.approx(WD * M_D)
    assert emb["initial_lr"] == pytest.approx(LR) and emb["weight_decay"] == pytest.approx(WD)
    assert norm["initial_lr"] == pytest.approx(LR) and norm["weight_decay"] == 0.0
    assert hidden["lr"] > 0 and hidden["lr"] / emb["lr"] == pytest.approx(1 / M_D)  # Trainer's schedule kept it


def test_control_trainers_own_optimizer_is_one_lr_and_is_flagged(model: torch.nn.Module, tmp_path) -> None:
    trainer = transformers.Trainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=_dataset(2))
    with pytest.warns(UserWarning, match="standard parameterization"):
        trainer.train()
    assert len({g["initial_lr"] for g in trainer.optimizer.param_groups}) == 1


def test_recipe_and_errors() -> None:
    r = fxparam.recipes.recommend(params=1e6, tokens=1e8, base_lr=LR, width_multiplier=M_D, seq_len=16)
    cls, kw = hf_trainer.optimizer_cls_and_kwargs(recipe=r)
    assert cls is hf_trainer.PlannedOptimizerFactory and kw["recipe"] is r
    with pytest.raises(fxparam.OptimizerError, match="base LR"):
        hf_trainer.optimizer_cls_and_kwargs()


def test_args_optim_picks_the_class_or_is_refused(model: torch.nn.Module, tmp_path) -> None:
    """Trainer ignores args.optim once optimizer_cls_and_kwargs is given: the helper honours it or refuses it."""
    cls, kw = hf_trainer.optimizer_cls_and_kwargs(_args(tmp_path, optim="sgd"))
    assert kw["opt_cls"] is torch.optim.SGD
    opt = cls()(model, **kw)
    # SGD column (Tensor Programs V Table 8; CompleteP at m_L = 1): hidden eta, embedding eta * m_d
    assert _group_of(opt, "model.layers.0.mlp.up_proj.weight")["lr"] == pytest.approx(LR)
    assert _group_of(opt, "model.embed_tokens.weight")["lr"] == pytest.approx(LR * M_D)
    assert hf_trainer.optimizer_cls_and_kwargs(_args(tmp_path, optim="adamw_torch"))[1]["opt_cls"] is torch.optim.AdamW
    with pytest.raises(fxparam.OptimizerError, match="lion_32bit"):
        hf_trainer.optimizer_cls_and_kwargs(_args(tmp_path, optim="lion_32bit"))
    explicit = hf_trainer.optimizer_cls_and_kwargs(_args(tmp_path, optim="lion_32bit"), torch.optim.AdamW)
    assert explicit[1]["opt_cls"] is torch.optim.AdamW  # an explicit class wins
    nadam = hf_trainer.optimizer_cls_and_kwargs(_args(tmp_path, adam_beta1=0.8, adam_epsilon=1e-6), torch.optim.NAdam)
    assert (nadam[1]["betas"], nadam[1]["eps"]) == ((0.8, 0.999), 1e-6)  # args' Adam settings reach NAdam too
