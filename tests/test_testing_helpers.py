"""fxparam.testing: the invariance assertions users put in their own test suites."""

from __future__ import annotations

import pytest

from fxparam.errors import ConfigError
from fxparam.testing import assert_depth_invariant, assert_not_invariant, assert_width_invariant
from tests.cli.broken_model import make, make_broken

TINY = {"steps": 2, "seeds": [0]}


def test_width_invariant_passes_for_mup():
    cc = assert_width_invariant(make, "mup", widths=[64, 128], depth=2, **TINY)
    assert cc.widths == [64, 128] and cc.config == "mup"


def test_width_invariant_fails_with_a_readable_report():
    with pytest.raises(AssertionError) as exc:
        assert_width_invariant(make_broken, "mup", widths=[64, 128], depth=2, **TINY)
    text = str(exc.value)
    assert text.startswith("'mup' is not width-invariant over widths [64, 128] (2 steps, lr 0.003):")
    assert "embedding:wte#0 after 0 step(s): slope +0.4" in text  # which activation, which slope
    assert "activation" in text and "band" in text and "FAIL" in text  # and the table


def test_negative_control_sp_is_detected_and_mup_is_not_a_control():
    assert_not_invariant(make, "sp", widths=[64, 128], **TINY)
    with pytest.raises(AssertionError, match="negative control 'mup' over width did not fail"):
        assert_not_invariant(make, "mup", widths=[64, 128], depth=2, **TINY)


def test_depth_invariant_completep_and_mup_control():
    assert_depth_invariant(make, "completep", depths=[2, 4, 8], width=64, base_width=32, **TINY)
    with pytest.raises(AssertionError, match="'mup' is not depth-invariant over depths"):
        assert_depth_invariant(make, "mup", depths=[2, 4, 8], width=64, base_width=32, **TINY)


def test_argument_errors():
    with pytest.raises(ConfigError, match="at least two distinct widths"):
        assert_width_invariant(make, "mup", widths=[64])
    with pytest.raises(ConfigError, match="nothing would be judged"):
        assert_depth_invariant(make, "completep", depths=[2, 4], width=64, steps=1)
    with pytest.raises(ConfigError, match="needs width"):
        assert_not_invariant(make, "mup", axis="depth")


def test_model_without_example_inputs_is_inspected_with_the_batch():
    from fxparam import coord_check
    from tests.cli.broken_model import make_plain

    cc = coord_check(make_plain, widths=[32, 64], config="mup", steps=0, seeds=[0])
    assert {r.key for r in cc.records} >= {"embedding:inner.wte#0", "residual:final"}
