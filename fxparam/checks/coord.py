"""Coordinate checks: does activation scale stay put as width (and depth) grow?

For each width/depth/seed, build the model, transform it, and take a few optimizer
steps on one fixed batch, recording with hooks — per call site, not per module — the
RMS of each activation and the RMS of its change since init:

- ``embedding``: outputs of embedding modules,
- ``branch``: every residual-branch output (after fxparam's multiplier),
- ``attn_logits``: the attention logits ``scale * q k^T`` of every attention call,
- ``logits``: the readout output,
- ``residual``: the final residual stream (output of the last block).

``slopes()`` fits log2(statistic) against log2(width) or log2(depth), averaged over
seeds; ``verdict()`` compares them with calibrated bands (flat is a band, not zero).
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from statistics import NormalDist
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

import fxparam
from fxparam.configs import AnyConfig, required_fields_of, resolve_config
from fxparam.errors import ConfigError
from fxparam.lowering import sdpa

Stat = Literal["rms", "delta"]
Axis = Literal["width", "depth"]


class Record(BaseModel):
    model_config = ConfigDict(frozen=True)
    width: int
    depth: int
    seed: int
    step: int
    key: str  # call site, e.g. "branch:blocks.1.mlp.proj#0"
    kind: str  # embedding | branch | attn_logits | logits | residual
    rms: float
    delta: float


class Slope(BaseModel):
    model_config = ConfigDict(frozen=True)
    kind: str
    key: str
    step: int
    stat: Stat
    axis: Axis
    slope: float


class Band(BaseModel):
    """Allowed slope range for a kind of activation, at init (step 0) and after steps."""

    model_config = ConfigDict(frozen=True)
    init: tuple[float, float]
    trained: tuple[float, float]


#: Calibrated on the reference GPT (docs/reference/parameterizations.md, "what correct
#: muP looks like"): branches within +-0.15 at init and [-0.55, 0.40] after steps; logits
#: shrink like width^-1/2 at init (benign) and stay in [-0.60, 0.25] after steps.
WIDTH_BANDS: dict[str, Band] = {
    "embedding": Band(init=(-0.15, 0.15), trained=(-0.55, 0.40)),
    "branch": Band(init=(-0.15, 0.15), trained=(-0.55, 0.40)),
    # attention logits shrink ~width^-1/2 while q and k are still independent (init, and
    # step 1 when the head dim grows: measured -0.91); the rule's failure mode is growth.
    "attn_logits": Band(init=(-0.65, 0.15), trained=(-1.0, 0.40)),
    "logits": Band(init=(-0.70, 0.15), trained=(-0.60, 0.25)),
    "residual": Band(init=(-0.15, 0.15), trained=(-0.55, 0.40)),
}
#: Depth: the final residual stream vs depth 2 -> 16 after >= 2 steps.  Measured here on the
#: reference GPT (width 64-128, lr 1e-3..1e-2, 3 seeds): CompleteP alpha=1 gives -0.25 .. +0.06,
#: muP and SP +0.79 .. +0.99.  (The reference notes report -0.09 .. +0.08 for their setup; ours
#: drifts slightly negative, so the band is one-sided-wider below.)  Steps 0-1 are skipped for
#: alpha = 1: branches are scaled 1/m_L, so the stream at init shrinks with depth by design.
DEPTH_BANDS: dict[str, Band] = {"residual": Band(init=(-math.inf, math.inf), trained=(-0.35, 0.25))}
#: A negative control "fails" when some activation grows at least this fast after steps.
CONTROL_THRESHOLD = 0.6


#: The bands above were calibrated on means over this many seeds.
CALIBRATION_SEEDS = 3
#: Probability that seed noise alone fails a correct model, over all slopes judged together.
FALSE_FAILURE = 0.05


class SlopeNoise(BaseModel):
    """Seed-to-seed standard deviation of one seed's slope, for one kind of activation.

    Attributes:
        kind: activation kind.
        sd: standard deviation of the slope of a single seed.
        dof: degrees of freedom of the estimate.
        source: ``"seeds"`` (spread of per-seed slopes) or ``"residuals"`` (scatter of the
            seed-mean points about their fitted line, one seed's share).
    """

    model_config = ConfigDict(frozen=True)
    kind: str
    sd: float
    dof: int
    source: Literal["seeds", "residuals"]


class Verdict(BaseModel):
    invariant: bool
    failures: list[Slope]
    worst: Slope | None
    table: str
    bands: dict[str, Band] = {}  # the bands applied (widened for fewer seeds than the calibration)
    allowance: dict[str, float] = {}  # kind -> how much each band was widened on both sides
    note: str = ""  # how the noise was accounted for (or why it could not be)

    def __bool__(self) -> bool:
        return self.invariant


class CoordCheck(BaseModel):
    """Raw records of a coordinate check, with slope fits, verdicts and plots."""

    config: str
    widths: list[int]
    depths: list[int]
    steps: int
    lr: float
    records: list[Record]

    # ---------------------------------------------------------------- statistics

    def mean_table(self, stat: Stat = "rms") -> dict[tuple[str, str, int, int, int], float]:
        """Mean over seeds: (kind, key, step, width, depth) -> statistic."""
        acc: dict[tuple, list[float]] = defaultdict(list)
        for r in self.records:
            acc[(r.kind, r.key, r.step, r.width, r.depth)].append(getattr(r, stat))
        return {k: sum(v) / len(v) for k, v in acc.items()}

    def slopes(self, axis: Axis = "width", stat: Stat = "rms") -> list[Slope]:
        """Least-squares slope of log2(statistic) vs log2(width or depth), per site and step."""
        table = self.mean_table(stat)
        series: dict[tuple[str, str, int, int], list[tuple[float, float]]] = defaultdict(list)
        for (kind, key, step, width, depth), value in table.items():
            fixed = depth if axis == "width" else width
            x = width if axis == "width" else depth
            if value > 0 and math.isfinite(value):
                series[(kind, key, step, fixed)].append((math.log2(x), math.log2(value)))
        out = []
        for (kind, key, step, _fixed), pts in sorted(series.items()):
            if len({p[0] for p in pts}) < 2:
                continue
            out.append(Slope(kind=kind, key=key, step=step, stat=stat, axis=axis, slope=_fit(pts)))
        return out

    def seeds(self) -> list[int]:
        """The seeds recorded."""
        return sorted({r.seed for r in self.records})

    def slope_noise(self, axis: Axis = "width", stat: Stat = "rms") -> dict[str, SlopeNoise]:
        """Seed noise of a single seed's slope, per kind of activation, estimated from this run.

        With two or more seeds: the spread of per-seed slopes of each site and step, pooled
        over the sites and steps of a kind. With one seed and three or more sizes: the scatter
        of the points about each fitted line (residual variance, pooled over sites and steps,
        ``n - 2`` degrees of freedom per line) divided by ``sum (x - mean x)^2``. With one seed
        and two sizes nothing can be estimated: the kind is absent.
        """
        n_seeds = len(self.seeds())
        per_seed: dict[tuple[str, str, int, int, int], list[tuple[float, float]]] = defaultdict(list)
        for r in self.records:
            value = getattr(r, stat)
            if value > 0 and math.isfinite(value):
                x = r.width if axis == "width" else r.depth
                fixed = r.depth if axis == "width" else r.width
                per_seed[(r.kind, r.key, r.step, fixed, r.seed)].append((math.log2(x), math.log2(value)))
        ss: dict[str, float] = defaultdict(float)
        dof: dict[str, int] = defaultdict(int)
        if n_seeds >= 2:
            slopes: dict[tuple[str, str, int, int], list[float]] = defaultdict(list)
            for (kind, key, step, fixed, _seed), pts in per_seed.items():
                if len({p[0] for p in pts}) >= 2:
                    slopes[(kind, key, step, fixed)].append(_fit(pts))
            for (kind, *_), values in slopes.items():
                if len(values) >= 2:
                    mean = sum(values) / len(values)
                    ss[kind] += sum((v - mean) ** 2 for v in values)
                    dof[kind] += len(values) - 1
            return {k: SlopeNoise(kind=k, sd=math.sqrt(ss[k] / dof[k]), dof=dof[k], source="seeds")
                    for k in ss if dof[k] > 0}
        sxx: dict[str, list[float]] = defaultdict(list)
        for (kind, _key, _step, _fixed, _seed), pts in per_seed.items():
            xs = {p[0] for p in pts}
            if len(xs) < 3:
                continue
            b = _fit(pts)
            mx = sum(p[0] for p in pts) / len(pts)
            my = sum(p[1] for p in pts) / len(pts)
            ss[kind] += sum((p[1] - my - b * (p[0] - mx)) ** 2 for p in pts)
            dof[kind] += len(pts) - 2
            sxx[kind].append(sum((p[0] - mx) ** 2 for p in pts))
        return {k: SlopeNoise(kind=k, sd=math.sqrt(ss[k] / dof[k] / (sum(sxx[k]) / len(sxx[k]))), dof=dof[k],
                              source="residuals") for k in ss if dof[k] > 0}

    def verdict(
        self,
        axis: Axis = "width",
        *,
        bands: dict[str, Band] | None = None,
        min_step: int = 0,
        stat: Stat = "rms",
        calibration_seeds: int = CALIBRATION_SEEDS,
        false_failure: float = FALSE_FAILURE,
    ) -> Verdict:
        """Whether every slope lies in its band (kinds without a band are not judged).

        Bands account for the number of seeds. They were calibrated on means over
        ``calibration_seeds`` seeds; a mean over ``s`` seeds has slope variance ``sd^2 / s``
        (``sd`` from :meth:`slope_noise`, this run's own seed noise). With fewer seeds than the
        calibration the extra standard error ``sqrt(sd^2 / s - sd^2 / calibration_seeds)`` widens
        each band on both sides, ``z`` times, with ``z`` the two-sided normal quantile at
        ``false_failure / m`` for the ``m`` slopes judged (Bonferroni): seed noise alone then
        fails a correct model with probability at most about ``false_failure`` beyond the
        calibration's own. With as many seeds as the calibration or more, the bands are used as
        calibrated. When the noise cannot be estimated (one seed, two sizes) the bands are used
        as they are and ``note`` says so.
        """
        bands = bands or (WIDTH_BANDS if axis == "width" else DEPTH_BANDS)
        slopes = [s for s in self.slopes(axis, stat) if s.step >= min_step and s.kind in bands]
        n_seeds = len(self.seeds())
        allowance: dict[str, float] = {}
        note = ""
        if slopes and n_seeds < calibration_seeds:
            noise = self.slope_noise(axis, stat)
            z = NormalDist().inv_cdf(1 - false_failure / (2 * len(slopes)))
            extra = math.sqrt(1 / n_seeds - 1 / calibration_seeds)
            allowance = {k: z * n.sd * extra for k, n in noise.items() if k in bands}
            missing = sorted({s.kind for s in slopes} - set(allowance))
            if allowance:
                note = (f"{n_seeds} seed(s) < {calibration_seeds} of the calibration: bands widened by "
                        + ", ".join(f"{k} {a:.2f}" for k, a in sorted(allowance.items()))
                        + f" (z = {z:.2f} x this run's seed noise x sqrt(1/{n_seeds} - 1/{calibration_seeds}))")
            if missing:
                note += ("; " if note else "") + (
                    f"seed noise of {', '.join(missing)} not estimable ({n_seeds} seed, "
                    f"{len({s.step for s in slopes})} step(s), too few sizes): bands as calibrated for "
                    f"{calibration_seeds} seeds; use more seeds or three or more sizes")
            bands = {k: Band(init=(b.init[0] - allowance.get(k, 0.0), b.init[1] + allowance.get(k, 0.0)),
                             trained=(b.trained[0] - allowance.get(k, 0.0), b.trained[1] + allowance.get(k, 0.0)))
                     for k, b in bands.items()}
        failures = []
        for s in slopes:
            lo, hi = bands[s.kind].init if s.step == 0 else bands[s.kind].trained
            if not lo <= s.slope <= hi:
                failures.append(s)
        worst = max(slopes, key=lambda s: abs(s.slope)) if slopes else None
        if not slopes:  # nothing judged is not a pass
            return Verdict(invariant=False, failures=[], worst=None,
                           table=f"no activation could be compared across {axis} (need >= 2 {axis}s)")
        return Verdict(invariant=not failures, failures=failures, worst=worst,
                       table=format_slopes(slopes, bands, axis), bands=bands, allowance=allowance, note=note)

    def max_growth(self, axis: Axis = "width", *, min_step: int = 1, stat: Stat = "rms") -> float:
        """Largest slope after ``min_step`` steps: the negative-control statistic."""
        values = [s.slope for s in self.slopes(axis, stat) if s.step >= min_step]
        return max(values) if values else float("nan")

    # ---------------------------------------------------------------- output

    def to_csv(self, path: str) -> str:
        """Write one row per record (width, depth, seed, step, key, kind, rms, delta); returns the path."""
        import csv

        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(Record.model_fields))
            w.writeheader()
            for r in self.records:
                w.writerow(r.model_dump())
        return path

    def to_frame(self) -> Any:
        """The records as a pandas DataFrame (one row per record).

        Raises:
            ConfigError: pandas is not installed (``pip install pandas``).
        """
        return _frame([r.model_dump() for r in self.records])

    def plot(self, path: str, *, axis: Axis = "width", stat: Stat = "rms") -> str:
        from fxparam.checks.coord_plot import plot_coord_check

        return plot_coord_check(self, path, axis=axis, stat=stat)


def _frame(rows: list[dict[str, Any]]) -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise ConfigError("a DataFrame needs pandas: pip install pandas (or use to_csv / the JSON)") from None
    return pd.DataFrame(rows)


def format_slopes(slopes: Sequence[Slope], bands: dict[str, Band], axis: str) -> str:
    """Summary table: per kind and step, the slope range across sites and pass/fail."""
    from fxparam._text import table as _table

    groups: dict[tuple[str, int], list[float]] = defaultdict(list)
    for s in slopes:
        groups[(s.kind, s.step)].append(s.slope)
    rows = []
    for (kind, step), values in sorted(groups.items()):
        band = bands.get(kind)
        lo, hi = (band.init if step == 0 else band.trained) if band else (-math.inf, math.inf)
        ok = all(lo <= v <= hi for v in values)
        rows.append([kind, step, f"{min(values):+.2f} .. {max(values):+.2f}", f"[{lo:+.2f}, {hi:+.2f}]",
                     "pass" if ok else "FAIL"])
    return "\n".join(_table(rows, ["activation", "step", f"slope vs log2 {axis}", "band", "result"]))


def _fit(pts: list[tuple[float, float]]) -> float:
    n = len(pts)
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pts)
    return sxy / sxx


# ------------------------------------------------------------------ recording


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().float().pow(2).mean().sqrt())


class _Recorder:
    """Forward hooks that store activations per call site for one model."""

    def __init__(self, model: nn.Module, analysis: fxparam.Analysis) -> None:
        self.acts: dict[str, tuple[str, torch.Tensor]] = {}
        self.handles: list[Any] = []
        self.calls: dict[str, int] = defaultdict(int)
        self.current_attn: list[str] = []
        modules = dict(model.named_modules())
        sites: dict[str, str] = {}
        for info in analysis.params.values():
            if info.role == "embedding":  # tied copies too: T5 looks up through encoder/decoder.embed_tokens,
                sites[info.module] = "embedding"  # never through the canonical `shared`
            if info.role == "readout":
                sites[info.module] = "logits"
        for r in analysis.residuals:
            for m in r.output_modules:
                sites[m] = "branch"
        # the final stream of each residual stream (an encoder-decoder has two: its encoder's last block
        # is not the end of the model); residuals are sorted by (stream, block, application)
        finals = {r.stream: r.block for r in analysis.residuals}
        if not finals and analysis.blocks:
            finals = {0: analysis.blocks[-1]}
        self.final_key = {block: "residual:final" + (f"@stream{stream}" if len(finals) > 1 else "")
                          for stream, block in finals.items()}
        for block in self.final_key:
            sites[block] = "residual"
        for name, kind in sites.items():
            if name in modules:
                self.handles.append(modules[name].register_forward_hook(self._hook(name, kind)))
        # attention without SDPA: its logits are read at its softmax (_SoftmaxObserver), not from SDPA's q, k
        self.manual_attention = {site.module for site in analysis.attention if site.kind == "manual"}
        # which softmax of a call is the attention's (a router's or gate's softmax in the same module is not)
        self.softmax_index: dict[str, set[int]] = defaultdict(set)
        for site in analysis.attention:
            if site.kind == "manual" and site.softmax_index is not None:
                self.softmax_index[site.module].add(site.softmax_index)
        self.softmax_seen: list[int] = []  # softmax calls so far in each open attention call
        for site in analysis.attention:
            mod = modules.get(site.module)
            if mod is not None:
                self.handles.append(mod.register_forward_pre_hook(self._enter(site.module)))
                self.handles.append(mod.register_forward_hook(self._leave, always_call=True))

    def _hook(self, name: str, kind: str) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else getattr(output, "logits", output)
            if isinstance(out, torch.Tensor):
                self._store(kind, name, out)

        return hook

    def _store(self, kind: str, name: str, value: torch.Tensor) -> None:
        index = self.calls[name]
        self.calls[name] += 1
        # the last block's name changes with depth: key the final stream by its meaning
        key = self.final_key.get(name, "residual:final") if kind == "residual" else f"{kind}:{name}#{index}"
        self.acts[key] = (kind, value.detach().float().clone())

    def _enter(self, name: str) -> Callable:
        def pre(module: nn.Module, args: Any) -> None:
            self.current_attn.append(name)
            self.softmax_seen.append(0)

        return pre

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.current_attn:
            self.current_attn.pop()
            self.softmax_seen.pop()

    def attention_logits(self, q: torch.Tensor, k: torch.Tensor, scale: float) -> None:
        if not self.current_attn:
            return
        if k.shape[-3] != q.shape[-3]:  # grouped-query attention
            k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
        logits = (q.detach().float() @ k.detach().float().transpose(-2, -1)) * scale
        self._store("attn_logits", self.current_attn[-1], logits)

    def softmax_logits(self, scores: torch.Tensor) -> None:
        """A hand-written attention's softmax input (eager Gemma2, manual ``q @ k.T * s``): its logits.

        Masked entries (-inf or the dtype's minimum) are left out: they are the same at every width.
        """
        if not self.current_attn or self.current_attn[-1] not in self.manual_attention:
            return
        index, self.softmax_seen[-1] = self.softmax_seen[-1], self.softmax_seen[-1] + 1
        wanted = self.softmax_index.get(self.current_attn[-1])
        if wanted and index not in wanted:
            return  # another softmax of this module (a router, a gate): not attention logits
        scores = scores.detach().float()
        self._store("attn_logits", self.current_attn[-1], scores[torch.isfinite(scores) & (scores > -1e4)])

    def reset(self) -> None:
        self.acts = {}
        self.calls = defaultdict(int)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class _SoftmaxObserver(torch.overrides.TorchFunctionMode):
    """Hands every softmax input to ``fn`` (the recorder keeps those inside a manual attention module)."""

    _SOFTMAX = (torch.softmax, F.softmax, torch.Tensor.softmax, torch.nn.functional.log_softmax)

    def __init__(self, fn: Callable[[torch.Tensor], None]) -> None:
        super().__init__()
        self.fn = fn

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func in self._SOFTMAX and args and isinstance(args[0], torch.Tensor):
            self.fn(args[0])
        return func(*args, **(kwargs or {}))


def _logits_of(model: nn.Module, out: Any) -> torch.Tensor:
    """Logits from a tensor, ``(logits, ...)``, a dict or an HF output (``.logits``)."""
    if isinstance(out, Mapping):
        if "logits" not in out:
            raise ConfigError(
                f"lm_loss: {type(model).__name__} returned a dict without 'logits' (keys {sorted(out)}); return the "
                "logits, a dict with 'logits', or pass loss_fn=..."
            )
        return out["logits"]
    return out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)


def _table_error(who: str, ids: torch.Tensor, exc: IndexError) -> ConfigError:
    """An IndexError from the forward on token ids [B, T]: a token or position table too small for the data."""
    return ConfigError(
        f"{who}: the model failed on token ids up to {int(ids.max())} and {ids.shape[-1]} positions ({exc}): ids "
        "outside the model's vocabulary (build it with a vocabulary that covers the data: --vocab, or --tokenizer "
        "for text) or positions past its position table (a shorter --seq-len, or a model with more positions)"
    )


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy for models returning logits, (logits, ...), a dict or an HF output.

    Args:
        batch: ``(x, y)``, token ids [B, T] and next-token targets [B, T].

    Returns:
        The mean cross-entropy in nats per token (float32).

    Raises:
        ConfigError: an encoder-decoder (its encoder would see the targets), ids past the model's
            token or position table, logits not [B, T, vocab].
    """
    x, y = batch
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise ConfigError(
            f"lm_loss: {type(model).__name__} is an encoder-decoder: a next-token loss on one stream would show its "
            "encoder the targets; pass loss_fn=... (e.g. encoder on the first half of each sequence, decoder "
            "predicting the second half from decoder_input_ids)"
        )
    try:
        out = model(x)
    except IndexError as exc:  # a lookup past a table: token ids past the vocabulary or positions past the table
        raise _table_error("lm_loss", x, exc) from exc
    logits = _logits_of(model, out)
    if logits.shape[:2] != y.shape:
        raise ConfigError(
            f"lm_loss: logits of shape {tuple(logits.shape)} do not match targets {tuple(y.shape)}; "
            "pass loss_fn=... to coord_check for this model"
        )
    if y.numel() and int(y.max()) >= logits.shape[-1]:
        raise ConfigError(
            f"lm_loss: token id {int(y.max())} is outside the model's vocabulary of {logits.shape[-1]}; "
            "build the model with a vocabulary that covers the data (--vocab, or --tokenizer for text)"
        )
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))


def looks_ahead(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether the model's output at a position depends on later tokens (a bidirectional encoder).

    Measured, not guessed from the class: the token at position j of one sequence is changed and
    the logits at positions before j compared, for j = 1, T // 2 and T - 1 (j = 1 catches a
    prefix-LM, whose prefix positions see each other: changing only the last token would not). A
    next-token loss on such a model shows it each target in its input (BERT-style encoders,
    prefix-LMs), so its loss says nothing about language modelling.

    Args:
        x: token ids [B, T] (T >= 2); the first sequence is used.
    """
    if x.dim() != 2 or x.shape[1] < 2:
        return False
    one = x[:1]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            a = _logits_of(model, model(one))
            if a.dim() < 2 or a.shape[:2] != one.shape:
                return False
            for j in sorted({1, one.shape[1] // 2, one.shape[1] - 1}):
                other = one.clone()
                other[0, j:] = one[0, 0] if int(one[0, 0]) != int(one[0, j]) else one[0, j - 1]
                if torch.equal(one[0, j], other[0, j]):
                    other[0, j] = int(one[0, j]) - 1 if int(one[0, j]) > 0 else int(one[0, j]) + 1
                b = _logits_of(model, model(other))
                if (a[:, :j] - b[:, :j]).abs().max() > 1e-5 * (a.abs().max() + 1e-12):
                    return True
    finally:
        model.train(was_training)
    return False


def coord_check(
    make_model: Callable[..., nn.Module],
    *,
    widths: Iterable[int] = (64, 128, 256, 512),
    depths: Iterable[int] | None = None,
    config: str | AnyConfig | None = "mup",
    steps: int = 3,
    lr: float = 1e-2,
    seeds: Iterable[int] = (0, 1, 2),
    data: Any = None,
    batch_size: int = 8,
    seq_len: int = 32,
    optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] = lm_loss,
    progress: Callable[[], None] | None = None,
    plan_optimizer: bool = True,
    edit_plan: Callable[[Any], Any] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **config_kwargs: Any,
) -> CoordCheck:
    """Train each (width, depth, seed) a few steps on one batch and record activation scales.

    Args:
        make_model: ``make_model(width=..., depth=...)`` -> model (``depth`` only passed
            when ``depths`` is given).
        config: parameterization applied to each model ("sp", "mup", "completep", a config
            object, or None for the model untouched). Keyword arguments fill its fields;
            ``base_width`` defaults to the smallest width and ``base_depth`` to the smallest depth.
        steps: optimizer steps; records are taken at step 0 (init) .. steps.
        data: the fixed batch: ``(inputs, targets)``, a ``[B, T+1]`` token tensor, a dict with
            ``input_ids``, or a DataLoader / iterable of these (its first batch is used; see
            :func:`fxparam.checks.data.as_batch`); default: Python docs text, bytes.
        device, dtype: where and in which precision the models train (default: as built);
            activations are measured in float32 either way. ``torch.float16`` is refused (Adam's
            eps rounds to 0 in float16: untouched parameters become NaN); use ``torch.bfloat16``.
        plan_optimizer: build the optimizer with the plan's LR groups (False reproduces the
            classic "one LR for everything" bug: a negative control).
        edit_plan: optional ``Plan -> Plan`` applied before lowering ("what if" checks and
            deliberately broken variants, e.g. dropping the readout multiplier).

    Raises:
        ConfigError: non-positive widths, negative steps, ``dtype=torch.float16``, or data the
            model cannot take.

    Example:
        >>> cc = fxparam.coord_check(lambda width: GPT(GPTConfig(width=width, depth=2)),
        ...                          widths=[64, 128, 256], config="mup")
        >>> cc.verdict().invariant
        True
    """
    widths = sorted(set(widths))
    depth_list = sorted(set(depths)) if depths is not None else [None]
    if len(widths) < 1 or any(w <= 0 for w in widths):
        raise ConfigError(f"coord_check: widths must be positive, got {widths}")
    if steps < 0:
        raise ConfigError("coord_check: steps must be >= 0")
    if dtype == torch.float16:
        from fxparam.checks.transfer import FLOAT16_REFUSAL

        raise ConfigError(f"coord_check: {FLOAT16_REFUSAL}")
    if data is None:
        from fxparam.checks.data import ByteCorpus

        data = ByteCorpus().batch(batch_size, seq_len, seed=1234)
    from fxparam.checks.data import as_batch

    data = as_batch(data)
    cfg_name = config if isinstance(config, str) or config is None else type(config).__name__
    kwargs = dict(config_kwargs)
    if isinstance(config, str):
        needs = required_fields_of(config)  # what the named configs cannot default (fxparam.configs)
        if "base_width" in needs:
            kwargs.setdefault("base_width", widths[0])
        if "base_depth" in needs and "base_depth" not in kwargs:
            if depth_list[0] is not None:
                kwargs["base_depth"] = depth_list[0]
            else:  # no depth sweep: the model's own depth is the base (m_L = 1)
                kwargs["base_depth"] = _inspect(make_model(width=widths[0]), data).depth or 1
    cfg = resolve_config(config, **kwargs) if config is not None else None

    records: list[Record] = []
    for depth in depth_list:
        for width in widths:
            cache: dict[str, Any] = {}  # analysis and plan are the same for every seed
            for seed in seeds:
                records += _run_one(make_model, width, depth, seed, cfg, steps, lr, data, optimizer, loss_fn,
                                    plan_optimizer, cache, edit_plan, device=device, dtype=dtype)
                if progress is not None:
                    progress()
    return CoordCheck(config=str(cfg_name), widths=widths, depths=[d for d in depth_list if d is not None],
                      steps=steps, lr=lr, records=records)


def _inspect(model: nn.Module, data: Any) -> fxparam.Analysis:
    """``fxparam.inspect``; for a model fxparam cannot make inputs for, a slice of the check's batch."""
    from fxparam.errors import CaptureError

    try:
        return fxparam.inspect(model)
    except CaptureError as exc:
        inputs = data[0] if isinstance(data, (tuple, list)) and data else None
        if not isinstance(inputs, torch.Tensor) or "example inputs" not in str(exc):
            raise
        return fxparam.inspect(model, example_inputs(data, model))


def example_inputs(data: Any, model: nn.Module | None = None) -> tuple[torch.Tensor] | dict[str, torch.Tensor]:
    """Two sequences of the check's batch: example inputs for models fxparam cannot make them for.

    For an encoder-decoder (an HF config with ``is_encoder_decoder``: T5, BART) a dict that
    gives the decoder the same ids (``decoder_input_ids``): its forward needs both.
    """
    ids = data[0][:2]
    if model is not None and getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return {"input_ids": ids, "decoder_input_ids": ids}
    return (ids,)


def _run_one(make_model, width, depth, seed, cfg, steps, lr, data, optimizer, loss_fn, plan_optimizer,
             cache, edit_plan=None, *, device=None, dtype=None) -> list[Record]:
    from fxparam.passes import build_plan

    torch.manual_seed(seed)
    model = make_model(width=width) if depth is None else make_model(width=width, depth=depth)
    model.train()
    if "analysis" not in cache:
        cache["analysis"] = _inspect(model, data)
        # the check's own inputs for the lowering's self-check (the model runs on them anyway)
        cache["example"] = example_inputs(data, model)
        try:  # ids past the model's vocabulary: one clear error, before the lowering probes the forward
            with torch.no_grad():
                ex = cache["example"]
                model(**ex) if isinstance(ex, dict) else model(*ex)
        except IndexError as exc:
            raise _table_error("coord_check", data[0], exc) from exc
        cache["plan"] = build_plan(cache["analysis"], cfg) if cfg is not None else None
        if edit_plan is not None and cache["plan"] is not None:
            cache["plan"] = edit_plan(cache["plan"])
    analysis = cache["analysis"]
    if cfg is not None:
        fxparam.apply_plan(model, cache["plan"].model_copy(deep=True), init=True, example_inputs=cache["example"])
    if device is not None or dtype is not None:  # after the (CPU, seeded) init: same weights on any device
        model.to(device=device, dtype=dtype)
        data = tuple(t.to(device) for t in data)
    if cfg is not None and plan_optimizer:
        opt = fxparam.optimizer(model, optimizer, lr=lr)
    else:
        opt = optimizer(model.parameters(), lr=lr)
    recorder = _Recorder(model, analysis)
    initial: dict[str, torch.Tensor] = {}
    out: list[Record] = []
    actual_depth = analysis.depth if depth is None else depth
    try:
        # the softmax mode sees every torch call of the forward: only where some attention is hand-written
        softmax = _SoftmaxObserver(recorder.softmax_logits) if recorder.manual_attention else contextlib.nullcontext()
        with sdpa.observe(recorder.attention_logits), softmax:
            for step in range(steps + 1):
                recorder.reset()
                loss = loss_fn(model, data)
                for key, (kind, value) in recorder.acts.items():
                    if step == 0:
                        initial[key] = value
                    delta = _rms(value - initial[key]) if key in initial and initial[key].shape == value.shape else 0.0
                    out.append(Record(width=width, depth=actual_depth, seed=seed, step=step, key=key, kind=kind,
                                      rms=_rms(value), delta=delta))
                if step < steps:
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
    finally:
        recorder.remove()
    return out
