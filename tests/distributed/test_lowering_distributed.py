"""A transformed model under DDP and FSDP2 (2 CPU processes, gloo) trains as one process does.

Both scenarios run in the same two spawned workers (one spawn: each worker imports torch and
fxparam once).  Each rank takes half of the global batch; the reference is one process on the
full batch with the same init, the same plan and ``fxparam.optimizer`` (AdamW).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from _dist_helpers import gloo_available, run

import fxparam
from fxparam.models.gpt import GPT, GPTConfig

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not gloo_available(), reason="torch.distributed with the gloo backend is unavailable"),
]

WORLD, GLOBAL_B, T, STEPS = 2, 8, 16, 5
LR, WD, EPS = 1e-2, 0.1, 1e-8
PLAN_KW = {"base_width": 16, "base_depth": 1, "base_head_dim": 8, "embedding_multiplier": 2.0,
           "output_multiplier": 1.5}
# The all-reduce (DDP) and reduce-scatter (FSDP2) average gradients in a different order from a
# single backward over the full batch: float32 rounding, compounded through 5 Adam steps.
LOSS_TOL = 1e-5


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = GPT(GPTConfig(width=32, depth=2, heads=2, vocab=256, seq_len=T))
    torch.manual_seed(1)  # the plan's re-init: identical on every rank
    return fxparam.transform(model, "completep", **PLAN_KW)


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    idx = torch.randint(0, 256, (GLOBAL_B, T + 1), generator=g)
    return idx[:, :-1], idx[:, 1:]


def _groups(opt: torch.optim.Optimizer) -> list[tuple[list[str], float, float, float]]:
    return [(list(g["param_names"]), g["lr"], g["weight_decay"], g["eps"]) for g in opt.param_groups]


def _train(forward: Any, opt: torch.optim.Optimizer, rank: int | None) -> list[float]:
    losses = []
    for step in range(STEPS):
        idx, tgt = _batch(step)
        if rank is not None:  # this rank's half of the global batch
            local = GLOBAL_B // WORLD
            idx, tgt = idx[rank * local:(rank + 1) * local], tgt[rank * local:(rank + 1) * local]
        opt.zero_grad(set_to_none=True)
        _logits, loss = forward(idx, tgt)
        loss.backward()
        opt.step()
        value = loss.detach().clone()
        if rank is not None:
            dist.all_reduce(value)
            value /= WORLD
        losses.append(value.item())
    return losses


def _ddp(rank: int) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(_model())
    opt = fxparam.optimizer(ddp, torch.optim.AdamW, lr=LR, weight_decay=WD, eps=EPS)
    return {"groups": _groups(opt), "losses": _train(ddp, opt, rank)}


def _fsdp(rank: int) -> dict[str, Any] | str:
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError as exc:
        return f"torch.distributed.fsdp.fully_shard is unavailable: {exc}"
    model = _model()
    ids_before = {n: id(p) for n, p in model.named_parameters()}
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    params = dict(model.named_parameters())
    opt = fxparam.optimizer(model, torch.optim.AdamW, lr=LR, weight_decay=WD, eps=EPS)
    return {
        "groups": _groups(opt),
        "losses": _train(model, opt, rank),
        "names": list(params),
        "dtensor": all(type(p).__name__ == "DTensor" for p in params.values()),
        "replaced": all(id(params[n]) != i for n, i in ids_before.items()),
        "fingerprint": fxparam.plan_of(model).fingerprint(),
    }


def _worker(rank: int, world: int, out_dir: str) -> None:
    torch.save({"ddp": _ddp(rank), "fsdp": _fsdp(rank)}, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("dist")
    run(_worker, WORLD, str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    model = _model()
    opt = fxparam.optimizer(model, torch.optim.AdamW, lr=LR, weight_decay=WD, eps=EPS)
    return {"groups": _groups(opt), "losses": _train(model, opt, None), "plan": fxparam.plan_of(model),
            "names": [n for n, _ in model.named_parameters()]}


def _assert_losses(got: list[float], want: list[float]) -> None:
    assert len(got) == len(want) == STEPS
    assert all(math.isclose(a, b, abs_tol=LOSS_TOL, rel_tol=0) for a, b in zip(got, want, strict=True)), (got, want)


def _assert_groups_follow_plan(groups: list[tuple[list[str], float, float, float]], plan: fxparam.Plan) -> None:
    seen = set()
    for names, lr, wd, eps in groups:
        for name in names:
            rules = plan.rules_for(name)
            assert math.isclose(lr, LR * rules.lr_mult), name
            assert math.isclose(wd, WD * rules.wd_mult), name
            assert math.isclose(eps, EPS * rules.eps_mult), name
            seen.add(name)
    assert seen == {n for n, p in plan.params.items() if not p.tied_to}


def test_ddp_matches_one_process(results: list[dict[str, Any]], reference: dict[str, Any]) -> None:
    assert len({p.lr_mult for p in reference["plan"].params.values()}) > 1  # the groups really differ
    for rank, res in enumerate(results):
        assert res["ddp"]["groups"] == reference["groups"], rank
        _assert_losses(res["ddp"]["losses"], reference["losses"])


def test_fsdp2_matches_one_process_and_keeps_the_plans_groups(results: list[dict[str, Any]],
                                                              reference: dict[str, Any]) -> None:
    if isinstance(results[0]["fsdp"], str):
        pytest.skip(results[0]["fsdp"])
    for rank, res in enumerate(results):
        fsdp = res["fsdp"]
        assert fsdp["dtensor"] and fsdp["replaced"], "fully_shard should swap in DTensor parameters"
        assert fsdp["names"] == reference["names"], "FQNs must survive fully_shard"
        assert fsdp["fingerprint"] == reference["plan"].fingerprint()
        assert fsdp["groups"] == reference["groups"], rank
        _assert_groups_follow_plan(fsdp["groups"], reference["plan"])
        _assert_losses(fsdp["losses"], reference["losses"])
