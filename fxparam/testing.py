"""pytest-friendly invariance checks: put fxparam's guarantee into your own test suite.

Each helper runs a small :func:`fxparam.coord_check` (a few Adam steps on one fixed batch of
real text, per width or depth and seed) and raises ``AssertionError`` with a readable report —
which activation, at which step, which slope, against which band, and the whole table — when
the parameterization does not hold activation scale fixed.  Pair each positive check with a
negative control (:func:`assert_not_invariant` on ``"sp"``) so a check that cannot fail is
caught.

Example (a test file of your own)::

    from fxparam.testing import assert_depth_invariant, assert_not_invariant, assert_width_invariant
    from mypkg.models import make  # make(width=..., depth=...) -> nn.Module

    def test_mup_width():
        assert_width_invariant(make, "mup", widths=[64, 128, 256], steps=3)

    def test_completep_depth():
        assert_depth_invariant(make, "completep", depths=[2, 4, 8], width=128, base_width=64)

    def test_control_sp_is_caught():
        assert_not_invariant(make, "sp", widths=[64, 128, 256])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn as nn

from fxparam.checks.coord import (
    CONTROL_THRESHOLD,
    DEPTH_BANDS,
    WIDTH_BANDS,
    Axis,
    Band,
    CoordCheck,
    Stat,
    Verdict,
    coord_check,
)
from fxparam.configs import AnyConfig
from fxparam.errors import ConfigError

#: Default learning rate of the helpers' checks: high enough that SP's blow-up shows within
#: 3 Adam steps, low enough that the reference GPT stays out of its unstable first steps
#: (at 1e-2 the depth sweep of a 2-block model catapults at step 3).
DEFAULT_LR = 3e-3


def _name(config: str | AnyConfig | None) -> str:
    if config is None:
        return "None"
    return config if isinstance(config, str) else type(config).__name__


def _report(what: str, config: str | AnyConfig | None, cc: CoordCheck, verdict: Verdict, axis: Axis) -> str:
    sizes = cc.widths if axis == "width" else cc.depths
    lines = [
        f"{_name(config)!r} is not {what}-invariant over {axis}s {sizes} ({cc.steps} steps, lr {cc.lr:g}):"
    ]
    for s in sorted(verdict.failures, key=lambda s: -abs(s.slope))[:8]:
        lines.append(f"  {s.key} after {s.step} step(s): slope {s.slope:+.2f} of log2 RMS vs log2 {axis}")
    if len(verdict.failures) > 8:
        lines.append(f"  ... and {len(verdict.failures) - 8} more")
    table = "\n".join(line.rstrip() for line in verdict.table.splitlines())
    if not verdict.failures:
        lines.append(f"  {table}")
    else:
        lines += ["", table]
    return "\n".join(lines)


def _require_distinct(who: str, axis: Axis, sizes: Sequence[int]) -> None:
    if len(set(sizes)) < 2:
        raise ConfigError(f"{who}: need at least two distinct {axis}s, got {list(sizes)}")


def _sweep(make_model: Callable[..., nn.Module], axis: Axis, *, widths: Sequence[int], depths: Sequence[int],
           width: int | None, depth: int | None, kwargs: dict[str, Any]) -> CoordCheck:
    """The coordinate check of one sweep: widths at ``depth``, or depths at ``width``."""
    if axis == "width":
        return coord_check(make_model, widths=widths, depths=None if depth is None else [depth], **kwargs)
    return coord_check(make_model, widths=[width], depths=depths, **kwargs)


def assert_width_invariant(
    make_model: Callable[..., nn.Module],
    config: str | AnyConfig = "mup",
    *,
    widths: Sequence[int] = (64, 128, 256),
    steps: int = 3,
    seeds: Sequence[int] = (0, 1),
    lr: float = DEFAULT_LR,
    depth: int | None = None,
    bands: dict[str, Band] | None = None,
    stat: Stat = "rms",
    **kwargs: Any,
) -> CoordCheck:
    """Assert that activation scale does not grow or shrink with width under ``config``.

    Args:
        make_model: ``make_model(width=...)`` (and ``depth=...`` when ``depth`` is given)
            returning a fresh model that maps byte tokens ``[B, T]`` to logits.
        config: "mup", "completep" (or a config object); ``base_width`` defaults to the
            smallest width.
        widths: at least two widths, ideally spanning 4x or more.
        steps: Adam steps on one fixed batch; slopes are judged at init and after each step.
        seeds: seeds averaged before fitting slopes.
        lr: base learning rate.
        depth: fixed depth passed to ``make_model`` (None: the model's own).
        bands: allowed slopes per activation kind (default ``fxparam.checks.coord.WIDTH_BANDS``).
        stat: ``"rms"`` or ``"delta"`` (change since init, for low learning rates).
        **kwargs: more ``coord_check`` arguments (``data=``, ``loss_fn=``, ``batch_size=``...)
            and config fields (``base_width=``, ``output_multiplier=``...).

    Returns:
        The :class:`fxparam.checks.coord.CoordCheck`, for further inspection or plotting.

    Raises:
        AssertionError: with the failing activations and the slope table.

    Example:
        >>> from fxparam.models import GPT, GPTConfig
        >>> make = lambda width: GPT(GPTConfig(width=width, depth=2, head_dim=16, seq_len=32))
        >>> cc = assert_width_invariant(make, "mup", widths=[32, 64, 128], steps=2, seeds=[0])
    """
    _require_distinct("assert_width_invariant", "width", widths)
    cc = _sweep(make_model, "width", widths=widths, depths=(), width=None, depth=depth,
                kwargs=dict(config=config, steps=steps, lr=lr, seeds=seeds, **kwargs))
    verdict = cc.verdict("width", bands=bands or WIDTH_BANDS, stat=stat)
    if not verdict.invariant:
        raise AssertionError(_report("width", config, cc, verdict, "width"))
    return cc


def assert_depth_invariant(
    make_model: Callable[..., nn.Module],
    config: str | AnyConfig = "completep",
    *,
    depths: Sequence[int] = (2, 4, 8, 16),
    width: int,
    steps: int = 3,
    seeds: Sequence[int] = (0, 1, 2),
    lr: float = DEFAULT_LR,
    min_step: int = 2,
    bands: dict[str, Band] | None = None,
    stat: Stat = "rms",
    **kwargs: Any,
) -> CoordCheck:
    """Assert that the final residual stream keeps its scale as depth grows under ``config``.

    Judged after ``min_step`` steps (default 2): with CompleteP's alpha = 1 the branches are
    scaled by 1 / m_L, so at init the stream shrinks with depth by design.

    Args:
        make_model: ``make_model(width=..., depth=...)`` returning a fresh model.
        config: "completep" (or a config object); ``base_depth`` defaults to the smallest
            depth and ``base_width`` to ``width``.  Pass ``base_width`` smaller than ``width``
            to exercise the width rules at the same time (at the base width muP and SP agree).
        depths: at least two depths, ideally spanning 4x or more.
        width: the fixed width.
        steps: Adam steps on one fixed batch (at least ``min_step``).
        seeds: seeds averaged before fitting slopes (depth slopes are noisier: use >= 3).
        lr: base learning rate.
        min_step: first step judged.
        bands: allowed slopes (default ``fxparam.checks.coord.DEPTH_BANDS``: the final residual stream).
        stat: ``"rms"`` or ``"delta"``.
        **kwargs: more ``coord_check`` arguments and config fields.

    Returns:
        The :class:`fxparam.checks.coord.CoordCheck`.

    Raises:
        AssertionError: with the failing activations and the slope table.

    Example:
        >>> from fxparam.models import GPT, GPTConfig
        >>> make = lambda width, depth: GPT(GPTConfig(width=width, depth=depth, head_dim=16, seq_len=32))
        >>> cc = assert_depth_invariant(make, "completep", depths=[2, 4, 8], width=64, base_width=32)
    """
    _require_distinct("assert_depth_invariant", "depth", depths)
    if steps < min_step:
        raise ConfigError(
            f"assert_depth_invariant: steps={steps} < min_step={min_step}: nothing would be judged"
        )
    cc = _sweep(make_model, "depth", widths=(), depths=depths, width=width, depth=None,
                kwargs=dict(config=config, steps=steps, lr=lr, seeds=seeds, **kwargs))
    verdict = cc.verdict("depth", bands=bands or DEPTH_BANDS, min_step=min_step, stat=stat)
    if not verdict.invariant:
        raise AssertionError(_report("depth", config, cc, verdict, "depth"))
    return cc


def assert_not_invariant(
    make_model: Callable[..., nn.Module],
    config: str | AnyConfig | None = "sp",
    *,
    axis: Axis = "width",
    widths: Sequence[int] = (64, 128, 256),
    depths: Sequence[int] = (2, 4, 8, 16),
    width: int | None = None,
    depth: int | None = None,
    steps: int = 3,
    seeds: Sequence[int] = (0, 1),
    lr: float = DEFAULT_LR,
    threshold: float = CONTROL_THRESHOLD,
    min_step: int = 1,
    kinds: Sequence[str] | None = None,
    **kwargs: Any,
) -> CoordCheck:
    """Negative control: assert that some activation grows at least as fast as ``threshold``.

    Run it with SP over width (or muP over depth) next to a positive check: if the control
    does not fail either, the check is too weak to detect anything on this model (too few
    steps, too low a learning rate, or an activation fxparam cannot see).

    Args:
        make_model: the same factory as in the positive check.
        config: the parameterization expected to fail ("sp", or "mup" over depth); None
            leaves the model as built.
        axis: ``"width"`` (sweeps ``widths`` at ``depth``) or ``"depth"`` (sweeps ``depths``
            at ``width``).
        threshold: the largest slope after ``min_step`` steps must exceed this.
        kinds: only these activation kinds count (default: all over width, the final
            residual stream over depth).
        **kwargs: more ``coord_check`` arguments and config fields.

    Returns:
        The :class:`fxparam.checks.coord.CoordCheck`.

    Raises:
        AssertionError: when nothing grows faster than ``threshold``.

    Example:
        >>> from fxparam.models import GPT, GPTConfig
        >>> make = lambda width: GPT(GPTConfig(width=width, depth=2, head_dim=16, seq_len=32))
        >>> cc = assert_not_invariant(make, "sp", widths=[32, 64, 128], steps=2, seeds=[0])
    """
    if axis == "width":
        _require_distinct("assert_not_invariant", "width", widths)
    elif width is None:
        raise ConfigError("assert_not_invariant(axis='depth') needs width=...")
    cc = _sweep(make_model, axis, widths=widths, depths=depths, width=width, depth=depth,
                kwargs=dict(config=config, steps=steps, lr=lr, seeds=seeds, **kwargs))
    if axis != "width":
        kinds = kinds or ["residual"]
    slopes = [s for s in cc.slopes(axis) if s.step >= min_step and (kinds is None or s.kind in kinds)]
    worst = max(slopes, key=lambda s: s.slope, default=None)
    if worst is None or worst.slope <= threshold:
        found = (
            "no slope at all"
            if worst is None
            else f"at most {worst.slope:+.2f} ({worst.key}, step {worst.step})"
        )
        raise AssertionError(
            f"negative control {_name(config)!r} over {axis} did not fail: expected some activation to grow "
            f"faster than {axis}^{threshold:g} after {min_step}+ steps, found {found}. The check cannot tell "
            "a broken parameterization from a correct one here: raise lr or steps, or widen the sweep."
        )
    return cc


__all__ = ["DEFAULT_LR", "assert_depth_invariant", "assert_not_invariant", "assert_width_invariant"]
