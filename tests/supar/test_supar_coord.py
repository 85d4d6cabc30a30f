"""Coordinate checks: SμPar activations are invariant across density and width; masks alone drift.

Setup (shared/reference/parameterizations.md, "Sparse check"): reference GPT, depth 2,
head dim 16, vocab 128, seq 32, batch 8 of Python-docs bytes, Adam lr 3e-3 (a low LR:
the reference notes show that higher LRs make even correct muP noisy), 3 steps, 2
seeds.  The statistic is the slope of log2(activation RMS, mean over seeds) against
log2(density), per call site (branch outputs, attention logits, final residual,
logits) and step, at a fixed width.

Calibration (measured here, 1 thread; widths 64/128/256, mask seeds 0-2):

- SμPar, fit over densities 1, 1/2, 1/4, 1/16: every site -0.27 .. +0.05 after steps
  (branch outputs -0.19 .. +0.05, attention logits -0.27 .. 0, final residual
  -0.10 .. +0.02, logits 0 .. +0.03), -0.02 .. +0.03 at init.
  Two-point slopes 1 -> rho: -0.33 .. +0.15 for rho <= 1/4, but -0.57 .. +0.36 for
  rho = 1/2 at widths <= 128 (seed noise divided by log2(1/rho) = 1), so the property
  test draws rho <= 1/4 and the sweep covers 1/2 with a fit.
- Negative control, muP + masks without the density correction (``correct=False``):
  fit: branch outputs +0.34 .. +0.87 after steps (median +0.72; +0.99 .. +1.08 at
  init), attention logits +1.00 .. +1.14, final residual +0.36 .. +0.47; two-point
  slopes for rho <= 1/4: branch outputs >= +0.37 (median >= +0.74).  Activations fall
  as density drops, as the reference predicts (two masked matmuls in series: RMS ~ rho
  at init).

Bands: SμPar within [-0.15, +0.15] at init and [-0.50, +0.25] after steps.  The control
must have every branch-output slope after steps above +0.25 (outside the band) and their
median at or above +0.60.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fxparam
from fxparam.checks.coord import CONTROL_THRESHOLD, WIDTH_BANDS, Band, CoordCheck
from fxparam.checks.data import ByteCorpus
from fxparam.models import GPT, GPTConfig

LR, STEPS, SEEDS = 3e-3, 3, (0, 1)
KINDS = ("branch", "attn_logits", "residual", "logits")
#: Allowed slope of log2(RMS) vs log2(density) for SμPar.
DENSITY_BAND = Band(init=(-0.15, 0.15), trained=(-0.50, 0.25))
#: The uncorrected control: every branch slope after steps above the band, their median >= CONTROL_MEDIAN.
CONTROL_MIN, CONTROL_MEDIAN = DENSITY_BAND.trained[1], 0.60


def make(width: int) -> GPT:
    return GPT(GPTConfig(width=width, depth=2, head_dim=16, vocab=128, seq_len=32))


@pytest.fixture(scope="module")
def runs() -> Iterator[dict]:
    """Coordinate checks memoised by (config, widths): hypothesis examples share the dense runs.

    Capture is deterministic per architecture, so ``fxparam.inspect`` is memoised per width too:
    the tests are about activations, not capture.
    """
    x, y = ByteCorpus().batch(8, 32, seed=1234)
    data = (x % 128, y % 128)
    analyses: dict[int, fxparam.Analysis] = {}
    original = fxparam.inspect

    def inspect(model, example_inputs=None):
        width = model.config.width
        if width not in analyses:
            analyses[width] = original(model, example_inputs)
        return analyses[width]

    cache: dict[tuple, CoordCheck] = {}

    def run(config, widths: tuple[int, ...]) -> CoordCheck:
        key = (config.model_dump_json(), widths)
        if key not in cache:
            cache[key] = fxparam.coord_check(
                make, widths=widths, config=config, steps=STEPS, lr=LR, seeds=SEEDS, data=data
            )
        return cache[key]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fxparam, "inspect", inspect)
        yield {"run": run}
    torch.set_num_threads(threads)


def supar(density: float, *, seed: int = 0, correct: bool = True, base: fxparam.MuP | None = None):
    base = base or fxparam.MuP(base_width=64)
    if density == 1.0:
        return base
    return fxparam.compose(base, fxparam.SuPar(density=density, seed=seed, correct=correct))


def density_slopes(checks: dict[float, CoordCheck]) -> dict[tuple[str, str, int, int], float]:
    """Least-squares slope of log2(mean RMS over seeds) vs log2(density), per (kind, site, step, width)."""
    series: dict[tuple[str, str, int, int], list[tuple[float, float]]] = defaultdict(list)
    for density, cc in checks.items():
        for (kind, key, step, width, _depth), value in cc.mean_table("rms").items():
            if kind in KINDS and value > 0:
                series[(kind, key, step, width)].append((math.log2(density), math.log2(value)))
    out = {}
    for k, pts in series.items():
        assert len(pts) == len(checks), f"site {k} missing at some density"
        mx, my = statistics.fmean(p[0] for p in pts), statistics.fmean(p[1] for p in pts)
        out[k] = sum((p[0] - mx) * (p[1] - my) for p in pts) / sum((p[0] - mx) ** 2 for p in pts)
    return out


def outside(slopes: dict[tuple[str, str, int, int], float], band: Band) -> list[str]:
    bad = []
    for (_kind, key, step, width), s in slopes.items():
        lo, hi = band.init if step == 0 else band.trained
        if not lo <= s <= hi:
            bad.append(f"{key} step {step} width {width}: {s:+.2f} not in [{lo:+.2f}, {hi:+.2f}]")
    return bad


def branch_after_steps(slopes: dict[tuple[str, str, int, int], float]) -> list[float]:
    return [s for (kind, _key, step, _w), s in slopes.items() if kind == "branch" and step >= 1]


def test_density_sweep_is_flat_with_supar_and_falls_without_correction(runs):
    widths, densities = (64, 128, 256), (1.0, 0.5, 0.25, 1 / 16)
    good = density_slopes({d: runs["run"](supar(d), widths) for d in densities})
    control = density_slopes({d: runs["run"](supar(d, correct=False), widths) for d in densities})
    assert {k[3] for k in good} == set(widths)
    assert not outside(good, DENSITY_BAND), "\n".join(outside(good, DENSITY_BAND))
    # negative control: the same test fails for masks without the density correction
    ctl = branch_after_steps(control)
    assert min(ctl) > CONTROL_MIN and statistics.median(ctl) >= CONTROL_MEDIAN, sorted(ctl)
    assert len(outside(control, DENSITY_BAND)) > len(control) // 2


def test_supar_is_width_invariant_and_sp_with_masks_is_not(runs):
    widths = (64, 128, 256)
    cc = runs["run"](supar(0.25), widths)
    verdict = cc.verdict("width", bands=WIDTH_BANDS)
    assert verdict.invariant, verdict.table
    # negative control: SP (density-corrected, but no width rules) grows with width
    sp = runs["run"](fxparam.compose(fxparam.SP(), fxparam.SuPar(density=0.25)), widths)
    assert not sp.verdict("width", bands=WIDTH_BANDS).invariant
    assert sp.max_growth("width") >= CONTROL_THRESHOLD


@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    width=st.sampled_from([64, 128, 256]),
    density=st.sampled_from([0.25, 0.125, 1 / 16]),
    mask_seed=st.integers(0, 2**16),
)
def test_property_any_density_width_and_mask_seed(runs, width, density, mask_seed):
    widths = (width,)
    dense = runs["run"](supar(1.0), widths)
    good = density_slopes({1.0: dense, density: runs["run"](supar(density, seed=mask_seed), widths)})
    assert not outside(good, DENSITY_BAND), "\n".join(outside(good, DENSITY_BAND))
    control = density_slopes(
        {1.0: dense, density: runs["run"](supar(density, seed=mask_seed, correct=False), widths)}
    )
    ctl = branch_after_steps(control)
    assert min(ctl) > CONTROL_MIN and statistics.median(ctl) >= CONTROL_MEDIAN, sorted(ctl)
