"""Timescale and Power Lines: worked values from the reference, scaling properties, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fxparam.errors import RecipeError
from fxparam.recipes import GroupTimescale, b_crit, b_opt, lambda_opt, recommend, tau, tau_opt, timescale
from fxparam.recipes.schedules import make_schedule

FAST = settings(max_examples=50, deadline=None)

# The reference's 610M example: base LR 1.62e-2 at proxy width 256, d_model 2048 (x8).
N_610M = 610e6
ETA_610M = 1.62e-2 / 8  # 2.025e-3
B_610M = 504 * 2048  # tokens
D_610M = 48.5e9  # 80 TPP


def test_tau_610m_80tpp_worked_value() -> None:
    assert ETA_610M == pytest.approx(2.025e-3)
    assert tau(lr=ETA_610M, weight_decay=0.1, batch_tokens=B_610M, total_tokens=D_610M) == pytest.approx(
        0.105, abs=5e-4
    )
    r = recommend(
        params=N_610M,
        tokens=D_610M,
        seq_len=2048,
        base_lr=1.62e-2,
        width_multiplier=8,
        batch_size=504,
        weight_decay=0.1 / 8,  # base lambda (fxparam.optimizer units): the hidden weights decay with 0.1
    )
    assert r.hidden_lr == pytest.approx(2.025e-3) and r.hidden_weight_decay == pytest.approx(0.1)
    assert r.tau == pytest.approx(0.105, abs=5e-4)
    assert r.tpp == pytest.approx(79.5, abs=0.01)
    assert not r.warnings  # 0.105 is within 1.5x of tau_opt(79.5) = 0.108


@pytest.mark.parametrize(
    ("tpp", "expected_tau_opt"),
    # 1.084 * TPP**-0.527, computed by hand: exp(-0.527 ln 20) = 0.20618 etc.
    [(20, 0.22356), (80, 0.10767), (234, 0.06116)],
)
def test_tau_opt_and_lambda_opt_at_reference_tpps(tpp: float, expected_tau_opt: float) -> None:
    assert tau_opt(tpp) == pytest.approx(expected_tau_opt, rel=1e-3)
    d = tpp * N_610M
    lam = lambda_opt(lr=ETA_610M, batch_tokens=B_610M, total_tokens=d, params=N_610M)
    assert lam == pytest.approx(B_610M / (ETA_610M * d * expected_tau_opt), rel=1e-3)
    # lambda_opt puts tau exactly at tau_opt
    assert tau(lr=ETA_610M, weight_decay=lam, batch_tokens=B_610M, total_tokens=d) == pytest.approx(
        tau_opt(tpp)
    )


def test_lambda_opt_worked_values() -> None:
    """lambda_opt for the 610M model (eta = 2.025e-3, B = 504 x 2048) at 20 / 80 / 234 TPP."""
    got = [
        lambda_opt(lr=ETA_610M, batch_tokens=B_610M, total_tokens=t * N_610M, params=N_610M)
        for t in (20, 80, 234)
    ]
    assert got == pytest.approx([0.18689, 0.09701, 0.05839], rel=1e-3)
    # Celerity's timescales at those TPPs are ~20% below the default law (same slope)
    celerity = {20: 0.175, 80: 0.087}
    for t, v in celerity.items():
        assert 0.7 < v / tau_opt(t) < 0.9


def test_b_opt_at_12b_tokens_is_about_223_sequences() -> None:
    assert b_opt(12.1e9) == pytest.approx(223, abs=1)
    assert b_opt(12.1e9, seq_len=4096) == pytest.approx(b_opt(12.1e9) / 2)  # same tokens, longer sequences


def test_b_crit_needs_a_coefficient_or_a_measurement() -> None:
    with pytest.raises(RecipeError, match="no B_crit coefficient is published"):
        b_crit(1e10)
    assert b_crit(4e9, measured=(1e6, 1e9)) == pytest.approx(1e6 * 4**0.462)
    assert b_crit(1e9, coefficient=2.0) == pytest.approx(2.0 * 1e9**0.462)
    r = recommend(params=1e8, tokens=2e9, lr=1e-3, batch_size=512, b_crit_measured=(2**18, 2e9))
    assert r.b_crit_tokens == pytest.approx(2**18)
    assert any("B_crit" in w for w in r.warnings)


@FAST
@given(
    batch=st.integers(1, 4096),
    scale=st.floats(0.1, 10.0),
    tokens=st.floats(1e9, 1e12),
    params=st.floats(1e7, 1e10),
)
def test_lambda_opt_is_linear_in_batch(batch: int, scale: float, tokens: float, params: float) -> None:
    b1, b2 = batch * 2048, batch * 2048 * scale
    lam1 = lambda_opt(lr=1e-3, batch_tokens=b1, total_tokens=tokens, params=params)
    lam2 = lambda_opt(lr=1e-3, batch_tokens=b2, total_tokens=tokens, params=params)
    assert lam2 / lam1 == pytest.approx(scale, rel=1e-9)


@FAST
@given(
    eta=st.floats(1e-5, 1e-1),
    lam=st.floats(1e-3, 1.0),
    b=st.floats(1e4, 1e7),
    k_eta=st.floats(0.1, 10.0),
    k_lam=st.floats(0.1, 10.0),
)
def test_tau_invariant_when_eta_lambda_over_b_is_fixed(
    eta: float, lam: float, b: float, k_eta: float, k_lam: float
) -> None:
    d = 1e12
    t1 = tau(lr=eta, weight_decay=lam, batch_tokens=b, total_tokens=d)
    # scale eta and lambda, and B by the product: eta*lambda/B unchanged
    t2 = tau(lr=eta * k_eta, weight_decay=lam * k_lam, batch_tokens=b * k_eta * k_lam, total_tokens=d)
    assert t2 == pytest.approx(t1, rel=1e-9)
    assert t1 * (d / b) == pytest.approx(1 / (eta * lam), rel=1e-9)  # tau_iter = 1/(eta*lambda) steps


def _groups_optimizer() -> torch.optim.AdamW:
    hidden, emb, norm = (torch.nn.Parameter(torch.zeros(4)) for _ in range(3))
    return torch.optim.AdamW(
        [
            {"params": [hidden], "lr": ETA_610M, "name": "hidden"},
            {"params": [emb], "lr": 1.62e-2, "name": "embedding"},
            {"params": [norm], "lr": 1.62e-2, "weight_decay": 0.0, "name": "vector"},
        ],
        weight_decay=0.1,
    )


def test_timescale_per_group_reports_inf_for_no_decay() -> None:
    opt = _groups_optimizer()
    rows = timescale(opt, batch_tokens=B_610M, total_tokens=D_610M)
    assert [r.name for r in rows] == ["hidden", "embedding", "vector"]
    assert rows[0].tau == pytest.approx(0.105, abs=5e-4)
    assert rows[1].tau == pytest.approx(rows[0].tau / 8)  # 8x the LR: 8x shorter timescale
    assert math.isinf(rows[2].tau) and math.isinf(rows[2].tau_iters) and not rows[2].decays
    assert rows[0].tau_iters == pytest.approx(1 / (ETA_610M * 0.1))
    # JSON keeps inf as a string and round-trips
    js = rows[2].model_dump_json()
    assert '"Infinity"' in js and math.isinf(GroupTimescale.model_validate_json(js).tau)


def test_timescale_with_schedule_uses_initial_lr_and_adds_ema_summary() -> None:
    opt = _groups_optimizer()
    from fxparam import schedules

    sched = schedules.d2z(opt, total_steps=round(D_610M / B_610M))
    assert opt.param_groups[0]["lr"] < ETA_610M  # warmup: the current lr is not the peak
    rows = timescale(opt, batch_tokens=B_610M, total_tokens=D_610M, schedule=sched)
    assert rows[0].peak_lr == pytest.approx(ETA_610M)
    assert rows[0].tau == pytest.approx(0.105, abs=5e-4)
    # c_{T,0} = prod(1 - alpha_t) ~ exp(-sum alpha_t) = exp(-area / tau); D2Z with 10% warmup has area 0.5
    assert rows[0].initial_weight == pytest.approx(math.exp(-0.5 / rows[0].tau), rel=0.01)
    assert rows[2].initial_weight == 1.0 and math.isinf(rows[2].effective_updates)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: tau(lr=1e-3, weight_decay=0.0, batch_tokens=1e6, total_tokens=1e9), "infinite"),
        (lambda: tau(lr=1e-3, weight_decay=0.1, batch_tokens=1e6, total_tokens=-1e9), "total_tokens"),
        (
            lambda: tau(lr=1e-3, weight_decay=0.1, batch_tokens=2e9, total_tokens=1e9),
            "larger than total_tokens",
        ),
        (lambda: tau(lr=-1e-3, weight_decay=0.1, batch_tokens=1e6, total_tokens=1e9), "lr"),
        (lambda: tau(lr=1e-3, weight_decay=float("nan"), batch_tokens=1e6, total_tokens=1e9), "NaN"),
        (lambda: tau_opt(0), "tpp"),
        (lambda: lambda_opt(lr=1e-3, batch_tokens=1e6, total_tokens=1e9, params=-5), "params"),
        (lambda: b_opt(-1e9), "total_tokens"),
        (lambda: recommend(params=1e8, tokens=-1e9, lr=1e-3), "tokens"),
        (lambda: recommend(params=1e8, tokens=1e9, lr=1e-3, weight_decay=0.0), "weight_decay=0"),
        (lambda: recommend(params=1e8, tokens=1e6, lr=1e-3, batch_size=1024), "larger than tokens"),
        (lambda: recommend(params=1e8, tokens=1e9), "exactly one of lr"),
        (lambda: recommend(params=1e8, tokens=1e9, tpp=10, lr=1e-3), "exactly one of tokens"),
        (lambda: recommend(params=1e8, tokens=1e9, lr=1e-3, schedule="step"), "unknown schedule"),
        (lambda: timescale(_groups_optimizer(), batch_tokens=1e6, total_tokens=0), "total_tokens"),
        (
            lambda: timescale(
                _groups_optimizer(),
                batch_tokens=1e6,
                total_tokens=1e9,
                schedule=make_schedule("d2z", total_steps=500),
            ),
            "spans 500 updates",
        ),
    ],
)
def test_bad_inputs_raise_clear_recipe_errors(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RecipeError, match=match):
        call()
