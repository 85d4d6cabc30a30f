"""fxparam.checks.transfer: optimum bookkeeping on synthetic curves, and a tiny resumable sweep."""

from __future__ import annotations

import csv
import json
import math

import pytest

from fxparam.checks.transfer import (
    TransferPoint,
    TransferResult,
    TransferSettings,
    load_points,
    lr_grid,
    transfer,
)
from fxparam.errors import ConfigError

LRS = lr_grid(-10, -5)


def _settings(**kw) -> TransferSettings:
    base = dict(
        sizes=[64, 128, 256],
        fixed=2,
        params=["sp", "mup"],
        lrs=LRS,
        base_width=64,
        base_depth=2,
        steps=10,
        batch_size=4,
        seq_len=16,
        warmup_steps=1,
        weight_decay=0.0,
        seeds=[0],
        eval_batches=1,
    )
    return TransferSettings(**{**base, **kw})


def _synthetic(best: dict[tuple[str, int], int]) -> TransferResult:
    """Parabolic loss curves in log2(lr) with the minimum at 2^best[(param, size)]."""
    s = _settings()
    points = []
    for (param, size), k in best.items():
        for lr in s.lrs:
            loss = 2.0 + 0.1 * (math.log2(lr) - k) ** 2 - 0.01 * math.log2(size)
            points.append(
                TransferPoint(
                    key=s.run_key(),
                    param=param,
                    size=size,
                    width=size,
                    depth=2,
                    lr=lr,
                    seed=0,
                    train_loss=loss,
                    eval_loss=loss,
                    diverged=False,
                    seconds=0.0,
                )
            )
    return TransferResult(settings=s, points=points)


def test_lr_grid():
    assert lr_grid(-3, -1) == [0.125, 0.25, 0.5]
    with pytest.raises(ConfigError):
        lr_grid(-1, -3)


def test_optimum_shift_and_spread():
    res = _synthetic(
        {
            ("sp", 64): -7,
            ("sp", 128): -8,
            ("sp", 256): -9,
            ("mup", 64): -7,
            ("mup", 128): -7,
            ("mup", 256): -6,
        }
    )
    assert res.shift("sp") == -2 and res.spread("sp") == 2
    assert res.shift("mup") == 1 and res.spread("mup") == 1
    opt = {(o.param, o.size): o for o in res.optima()}
    assert opt[("sp", 256)].lr == 2.0**-9 and not opt[("sp", 256)].at_edge
    assert opt[("mup", 128)].fitted_log2_lr == pytest.approx(-7.0)
    # the synthetic curves rise 0.1 * (grid steps away)^2: SP at 256 is 2 steps off 64's best LR
    assert res.regret("sp") == pytest.approx({64: 0.0, 128: 0.1, 256: 0.4})
    assert res.regret("mup") == pytest.approx({64: 0.0, 128: 0.0, 256: 0.1})
    table = res.table()
    assert "| SP | 2^-7 (" in table and "| μP |" in table and "| -2 | 2 | +0.400 |" in table
    summary = res.summary()
    assert "SP: the best LR moves by up to 2 grid steps" in summary and "loses at most +0.400" in summary
    assert "μP: the best LR stays within one grid step" in summary


def test_optimum_at_grid_edge_is_flagged():
    res = _synthetic({("sp", 64): -5, ("sp", 128): -5, ("mup", 64): -8, ("mup", 128): -8})
    assert all(o.at_edge for o in res.optima() if o.param == "sp")
    assert "edge of the LR grid" in res.summary()


def test_diverged_runs_are_missing_not_best():
    res = _synthetic({("sp", 64): -7, ("sp", 128): -7})
    bad = res.points[0].model_copy(update={"eval_loss": float("nan"), "diverged": True, "lr": 2.0**-7})
    res = TransferResult(
        settings=res.settings,
        points=[p for p in res.points if not (p.size == 64 and p.lr == 2.0**-7)] + [bad],
    )
    best = {o.size: o.lr for o in res.optima()}
    assert best[128] == 2.0**-7 and best[64] in (2.0**-8, 2.0**-6)  # the diverged best is skipped
    assert "1 run(s) diverged" in res.summary()


def test_tiny_sweep_writes_and_resumes(tmp_path):
    kw = dict(
        sizes=[32, 64],
        params=["sp", "mup"],
        lrs=[2.0**-8, 2.0**-6],
        steps=4,
        batch_size=2,
        seq_len=16,
        eval_batches=1,
        model_options={"head_dim": 16},
        results=tmp_path / "runs.jsonl",
    )
    seen = []
    first = transfer(**kw, progress=seen.append)
    assert len(first.points) == 8 and first.resumed == 0 and len(seen) == 8
    assert all(math.isfinite(p.eval_loss) and 0 < p.eval_loss < 7 for p in first.points)
    # identical at the base width: muP is SP there
    at_base = {(p.param, p.lr): p.eval_loss for p in first.points if p.size == 32}
    assert at_base[("sp", 2.0**-8)] == pytest.approx(at_base[("mup", 2.0**-8)], rel=1e-5)
    assert len(load_points(tmp_path / "runs.jsonl")) == 8

    again = transfer(**kw)  # everything re-used
    assert again.resumed == 8 and [p.eval_loss for p in again.points] == [p.eval_loss for p in first.points]
    more = transfer(**{**kw, "lrs": [2.0**-8, 2.0**-6, 2.0**-4]})  # only the new LR is trained
    assert more.resumed == 8 and len(more.points) == 12
    changed = transfer(**{**kw, "steps": 3})  # other settings: nothing matches
    assert changed.resumed == 0

    more.save(tmp_path / "t.json")
    more.to_csv(tmp_path / "t.csv")
    more.plot(tmp_path / "t.png")
    data = json.loads((tmp_path / "t.json").read_text())
    assert set(data["shift_grid_steps"]) == {"sp", "mup"} and len(data["points"]) == 12
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert len(rows) == 12 and {"param", "size", "lr", "eval_loss"} <= set(rows[0])
    assert (tmp_path / "t.png").stat().st_size > 10_000


def test_bad_arguments():
    with pytest.raises(ConfigError, match="unknown parameterization"):
        transfer(sizes=[32, 64], params=["nope"])
    with pytest.raises(ConfigError, match="sizes must be positive"):
        transfer(sizes=[0, 64])
    with pytest.raises(ConfigError, match="warmup_steps=5 must be smaller"):
        transfer(sizes=[32, 64], steps=5, warmup_steps=5)


# ---------------------------------------------------------------- wider is better (issue 17, case 2)


def _seeded(losses: dict[tuple[str, int], float], noise: float, seeds=(0, 1, 2)) -> TransferResult:
    """Parabolic curves with the minimum at 2^-7 and the given loss there, plus seed offsets of size ``noise``."""
    s = _settings(seeds=list(seeds), params=sorted({p for p, _ in losses}))
    offsets = [noise * (i - (len(seeds) - 1) / 2) for i in range(len(seeds))]  # sample sd = noise * ~1
    points = [
        TransferPoint(key=s.run_key(), param=param, size=size, width=size, depth=2, lr=lr, seed=seed,
                      train_loss=0.0, eval_loss=best + 0.1 * (math.log2(lr) + 7) ** 2 + off, diverged=False,
                      seconds=0.0)
        for (param, size), best in losses.items() for lr in s.lrs for seed, off in zip(seeds, offsets, strict=True)
    ]
    return TransferResult(settings=s, points=points)


def test_wider_is_better_passes_when_the_optimum_improves():
    res = _seeded({("mup", 64): 2.40, ("mup", 128): 2.35, ("mup", 256): 2.30}, noise=0.01)
    check = res.wider_is_better()["mup"]
    assert check.ok and check.expected and check.rises == pytest.approx([-0.05, -0.05])
    assert "Wider is better?" in res.summary() and "2.400 -> 2.350 -> 2.300" in res.summary()


def test_wider_is_better_flags_a_rise_beyond_seed_noise():
    res = _seeded({("mup", 64): 2.40, ("mup", 128): 2.45, ("mup", 256): 2.50}, noise=0.005)
    check = res.wider_is_better()["mup"]
    assert not check.ok and "NO, the loss rises" in res.summary()
    # the same rise within much larger seed noise is not evidence
    noisy = _seeded({("mup", 64): 2.40, ("mup", 128): 2.41, ("mup", 256): 2.42}, noise=0.05)
    assert noisy.wider_is_better()["mup"].ok
    # tolerance from first principles: z(0.05/2 one-sided) * sqrt(2) * sd/sqrt(3), sd = 0.05 here
    from statistics import NormalDist

    assert noisy.wider_is_better()["mup"].tolerance[0] == pytest.approx(
        NormalDist().inv_cdf(1 - 0.025) * math.sqrt(2) * 0.05 / math.sqrt(3), rel=1e-6)


def test_sp_is_reported_not_judged_and_depth_promise_is_completep_only():
    res = _seeded({("sp", 64): 2.40, ("sp", 128): 2.50}, noise=0.001)
    check = res.wider_is_better()["sp"]
    assert not check.ok and not check.expected and "for comparison" in res.summary()
    deep = _seeded({("mup", 64): 2.40, ("mup", 128): 2.50}, noise=0.001)
    deep.settings.__dict__["vary"] = "depth"  # same numbers read as a depth sweep
    assert not deep.wider_is_better()["mup"].expected


def test_wider_is_better_flags_a_deliberately_broken_model():
    # a real tiny sweep of a model that gets worse as it widens (a width-growing logit bias), 2 seeds
    res = transfer(model="tests.cli.broken_model:make_worse_when_wider", sizes=[32, 64, 128], params=["mup"],
                   lrs=[2**-8, 2**-7], steps=8, batch_size=2, seq_len=16, eval_batches=2, seeds=[0, 1])
    check = res.wider_is_better()["mup"]
    assert not check.ok and check.rises[-1] > max(check.tolerance[-1], 1.0)  # +3 nats of bias at 128
    assert "μP should not get worse as it grows" in res.summary()
