"""Property-based invariance tests: muP / CompleteP keep activation scale flat in width
(and CompleteP in depth); SP and deliberately broken variants must fail the same test.

Statistical tests: fixed seeds, 3-seed averages, calibrated bands (fxparam.checks.coord), and a
negative control for every positive claim, so a test that cannot fail is caught.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fxparam.checks.coord import CONTROL_THRESHOLD, coord_check
from fxparam.models import GPT, GPTConfig

SEEDS = (0, 1, 2)
LR = 1e-2
PROPS = settings(max_examples=2, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

archs = st.fixed_dictionaries(
    {
        "mlp": st.sampled_from(["gelu", "swiglu"]),
        "norm": st.sampled_from(["layernorm", "rmsnorm"]),
        "parallel_residual": st.booleans(),
        "tie_embeddings": st.booleans(),
        "bias": st.booleans(),
        "pos": st.sampled_from(["learned", "rope", "alibi"]),
    }
)
width_ranges = st.tuples(st.sampled_from([32, 64]), st.just(3)).map(
    lambda t: [t[0] * 2**i for i in range(t[1])]
)


def gpt_factory(**options):
    options = {"head_dim": 16, "vocab": 256, "seq_len": 32, **options}

    def make(width, depth=2):
        return GPT(GPTConfig(width=width, depth=depth, **options))

    return make


def check(make, config, widths, **kw):
    return coord_check(make, widths=widths, config=config, steps=3, lr=LR, seeds=SEEDS, **kw)


@PROPS
@given(arch=archs, widths=width_ranges)
def test_mup_width_invariant_and_sp_is_not(arch, widths):
    make = gpt_factory(**arch)
    mup = check(make, "mup", widths)
    verdict = mup.verdict("width")
    assert verdict.invariant, f"muP not width-invariant for {arch}:\n{verdict.table}"
    sp = check(make, "sp", widths)
    assert not sp.verdict("width").invariant
    assert sp.max_growth("width") > CONTROL_THRESHOLD, "negative control: SP must grow with width"


@PROPS
@given(arch=archs, widths=width_ranges)
def test_completep_width_invariant(arch, widths):
    make = gpt_factory(**arch)
    cp = check(make, "completep", widths)
    verdict = cp.verdict("width")
    assert verdict.invariant, f"CompleteP not width-invariant for {arch}:\n{verdict.table}"


def test_completep_depth_invariant_and_mup_is_not():
    make = gpt_factory()
    # width 2x the base so that muP differs from SP; measured: CompleteP -0.08..-0.03, muP +0.78..+1.1
    kw = dict(widths=[64], depths=[2, 4, 8, 16], steps=3, lr=3e-3, seeds=(0, 1), base_width=32)
    cp = coord_check(make, config="completep", **kw)
    verdict = cp.verdict("depth", min_step=2)
    assert verdict.invariant, verdict.table
    mup = coord_check(make, config="mup", **kw)
    assert not mup.verdict("depth", min_step=2).invariant
    assert mup.max_growth("depth", min_step=2) > CONTROL_THRESHOLD


def test_broken_variant_one_lr_for_all_groups_fails():
    make = gpt_factory()
    broken = check(make, "mup", [64, 128, 256], plan_optimizer=False)
    assert not broken.verdict("width").invariant
    assert broken.max_growth("width") > CONTROL_THRESHOLD


def test_broken_variant_missing_output_multiplier_fails():
    def drop_readout_multiplier(plan):
        plan.input_multipliers = {}  # the readout's alpha_out/m_d is its only input multiplier
        return plan

    make = gpt_factory()
    broken = check(make, "mup", [64, 128, 256], edit_plan=drop_readout_multiplier)
    verdict = broken.verdict("width")
    assert not verdict.invariant
    assert any(f.kind == "logits" for f in verdict.failures)


def test_growing_head_dim_needs_the_1_over_d_rule():
    """With the head count fixed, the attention rule is visible: 1/sqrt(d) must fail."""
    make = gpt_factory(heads=2)
    widths = [64, 128, 256]
    good = check(make, "mup", widths, base_head_dim=32)
    assert good.verdict("width").invariant, good.verdict("width").table
    bad = check(make, "mup", widths, attention="sp")
    logit_slopes = [s.slope for s in bad.slopes("width") if s.kind == "attn_logits" and s.step >= 1]
    good_slopes = [s.slope for s in good.slopes("width") if s.kind == "attn_logits" and s.step >= 1]
    assert max(logit_slopes) > max(good_slopes) + 0.3


def test_hf_llama_mup_invariant_and_sp_is_not():
    pytest.importorskip("transformers")
    from fxparam.checks.targets import resolve

    make = resolve("hf:llama")
    widths = [32, 64, 128]
    mup = check(make, "mup", widths)
    assert mup.verdict("width").invariant, mup.verdict("width").table
    sp = check(make, "sp", widths)
    assert sp.max_growth("width") > CONTROL_THRESHOLD


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
