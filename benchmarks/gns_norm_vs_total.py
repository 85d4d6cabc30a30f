"""How well does the norm-layer gradient noise scale track the all-parameter one? (LayerNorm and RMSNorm)

Run: ``python benchmarks/gns_norm_vs_total.py`` (``--quick`` for a smoke run). Writes
``benchmarks/results/gns_norm_vs_total.json`` and ``gns_norm_vs_total.md``.

A short training run of the reference GPT on byte-level text (torch's own installed Python
sources: no download) with AdamW. Every step:

- norm-only: ``fxparam.gns.monitor`` on the swapped model (fused per-example norms);
- total: brute-force per-example gradients of *all* parameters (``torch.func.vmap(grad)`` on the
  same parameters), through the same unbiased estimators.

Both series are smoothed with the same EMA (each of |G|^2 and tr(Sigma) separately, then the
ratio), as the paper does. Reported after a warm-up: the ratio ``B_norm / B_total`` (median and
spread), the Pearson correlation of ``log B_norm`` with ``log B_total`` across steps, and the slope
of the log-log regression (1 = proportional tracking). The paper (Gray et al. 2024) shows this for
GPT-2-style LayerNorm with bias; gain-only RMSNorm is measured here for the first time.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from fxparam.gns import EMA, monitor, ratio, swap_norms, unbiased_estimates
from fxparam.models.gpt import GPT, GPTConfig

RESULTS = Path(__file__).resolve().parent / "results"


def corpus(min_bytes: int = 4_000_000) -> np.ndarray:
    """Byte-level text: the installed torch (then numpy) Python sources in sorted order.

    Fixed for a given torch install (not the repo, which changes under us), no download needed.
    """
    roots = [os.path.dirname(torch.__file__), os.path.dirname(np.__file__)]
    chunks, total = [], 0
    for root in roots:
        for path in sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True)):
            try:
                data = Path(path).read_bytes()
            except OSError:
                continue
            chunks.append(data)
            total += len(data)
            if total >= min_bytes:
                return np.frombuffer(b"".join(chunks), dtype=np.uint8)
    return np.frombuffer(b"".join(chunks), dtype=np.uint8)


def run(
    norm: str, bias: bool, steps: int, B: int, T: int, data: np.ndarray, alpha: float, seed: int = 0
) -> dict:
    torch.manual_seed(seed)
    cfg = GPTConfig(width=64, depth=2, head_dim=16, vocab=256, seq_len=T, norm=norm, bias=bias)  # type: ignore[arg-type]
    model = GPT(cfg)
    plain = GPT(cfg)  # torch norms, for vmap; its own weights are never used (functional_call)
    swap_norms(model)
    mon = monitor(model, alpha=alpha)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    norm_names = mon.tracked_parameters

    def loss_one(params, i, t):
        return functional_call(plain, params, (i[None], t[None]))[1]

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))
    rng = np.random.default_rng(seed)
    ema_total = (EMA(alpha), EMA(alpha))
    rows = []
    t0 = time.perf_counter()
    for step in range(steps):
        ix = rng.integers(0, len(data) - T - 1, size=B)
        seq = np.stack([data[i : i + T + 1] for i in ix]).astype(np.int64)
        idx, tgt = torch.from_numpy(seq[:, :-1]), torch.from_numpy(seq[:, 1:])
        _, loss = model(idx, tgt)
        loss.backward()
        est = mon.update()
        params = {k: v.detach() for k, v in model.named_parameters()}
        per = per_example(params, idx, tgt)
        flat = torch.cat([g.flatten(1).double() for g in per.values()], dim=1)
        s_small = float(flat.pow(2).sum(1).mean())
        s_big = float(flat.mean(0).pow(2).sum())
        g2, tr = unbiased_estimates(s_small, s_big, B)
        ema_total[0].update(g2)
        ema_total[1].update(tr)
        # Cross-check: the monitor's norm-only S_small against brute force on the same parameters.
        nflat = torch.cat([per[n].flatten(1).double() for n in norm_names], dim=1)
        rel = abs(est.total.s_small - float(nflat.pow(2).sum(1).mean())) / est.total.s_small
        rows.append(
            {
                "step": step,
                "loss": loss.item(),
                "b_norm": est.total.b_simple,
                "b_total": ratio(ema_total[1].value, ema_total[0].value),
                "b_norm_raw": est.total.b_simple_raw,
                "b_total_raw": ratio(tr, g2),
                "norm_s_small_rel_err": rel,
            }
        )
        opt.step()
        opt.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - t0
    warm = steps // 4
    return {
        "norm": norm,
        "bias": bias,
        "seed": seed,
        "tracked": norm_names,
        "steps": steps,
        "batch": B,
        "seq": T,
        "ema_alpha": alpha,
        "warmup_excluded": warm,
        **tracking_stats(rows[warm:], rows[warm:]),
        "ratio_final": rows[-1]["b_norm"] / rows[-1]["b_total"],
        "b_norm_final": rows[-1]["b_norm"],
        "b_total_final": rows[-1]["b_total"],
        "loss_first": rows[0]["loss"],
        "loss_last": statistics.mean(r["loss"] for r in rows[-10:]),
        "max_norm_s_small_rel_err": max(r["norm_s_small_rel_err"] for r in rows),
        "seconds": elapsed,
        "series": rows,
    }


def tracking_stats(norm_rows: list[dict], total_rows: list[dict]) -> dict:
    """How B_norm (from ``norm_rows``) tracks B_total (from ``total_rows``), step by step.

    ``pearson_log``: correlation of log B over steps (includes the common trend of training);
    ``pearson_detrended``: after removing a linear trend in step from each; ``pearson_diff``:
    of step-to-step changes of log B; ``loglog_slope``: regression of log B_total on log B_norm.
    """
    pairs = [
        (a["b_norm"], b["b_total"])
        for a, b in zip(norm_rows, total_rows, strict=True)
        if all(math.isfinite(v) and v > 0 for v in (a["b_norm"], b["b_total"]))
    ]
    if len(pairs) < 3:
        return {"points_used": len(pairs)}
    ln = np.log([p[0] for p in pairs])
    lt = np.log([p[1] for p in pairs])
    s = np.arange(len(ln))
    rn = ln - np.polyval(np.polyfit(s, ln, 1), s)
    rt = lt - np.polyval(np.polyfit(s, lt, 1), s)
    ratios = np.exp(ln - lt)
    return {
        "points_used": len(pairs),
        "ratio_median": float(np.median(ratios)),
        "ratio_p10": float(np.percentile(ratios, 10)),
        "ratio_p90": float(np.percentile(ratios, 90)),
        "pearson_log": float(np.corrcoef(ln, lt)[0, 1]),
        "pearson_detrended": float(np.corrcoef(rn, rt)[0, 1]),
        "pearson_diff": float(np.corrcoef(np.diff(ln), np.diff(lt))[0, 1]),
        "loglog_slope": float(np.polyfit(ln, lt, 1)[0]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--alpha", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="There is a performance drop")  # vmap over CPU SDPA
    steps = 40 if args.quick else args.steps
    data = corpus()
    runs = []
    for norm, bias in (("layernorm", True), ("rmsnorm", False)):
        for seed in args.seeds:
            print(f"[{norm}, bias={bias}, seed={seed}] {steps} steps ...", flush=True)
            runs.append(run(norm, bias, steps, args.batch, args.seq, data, args.alpha, seed=seed))
    # Negative control: B_norm of one seed against B_total of another seed (same model, same data
    # distribution, same training trend, independent noise). Tracking must beat it.
    controls = []
    for norm in ("layernorm", "rmsnorm"):
        rs = [r for r in runs if r["norm"] == norm]
        for a, b in zip(rs, rs[1:] + rs[:1], strict=True):
            if a is not b:
                w = a["warmup_excluded"]
                controls.append(
                    {
                        "norm": norm,
                        "norm_seed": a["seed"],
                        "total_seed": b["seed"],
                        **tracking_stats(a["series"][w:], b["series"][w:]),
                    }
                )
    result = {
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch threads {args.threads}",
        "torch": torch.__version__,
        "corpus_bytes": int(len(data)),
        "model": "reference GPT width 64, depth 2, head_dim 16, byte vocab, learned positions",
        "runs": runs,
        "controls": controls,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gns_norm_vs_total.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# Norm-layer GNS vs all-parameter GNS (reference GPT, CPU)",
        "",
        f"{result['model']}; {steps} AdamW steps of {args.batch} x {args.seq} bytes of Python source; EMA "
        f"alpha {args.alpha}; first {runs[0]['warmup_excluded']} steps excluded; seeds {args.seeds}. "
        f"Machine: {result['machine']}. Generated by `benchmarks/gns_norm_vs_total.py`.",
        "",
        "| norm | seed | B_norm / B_total median [p10, p90] | r (log B) | r (detrended) | r (step changes) | "
        "log-log slope | B_total start -> end | loss first -> last |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        w = r["warmup_excluded"]
        lines.append(
            f"| {r['norm']}{' + bias' if r['bias'] else ' (gain only)'} | {r['seed']} | "
            f"{r['ratio_median']:.2f} [{r['ratio_p10']:.2f}, {r['ratio_p90']:.2f}] | {r['pearson_log']:.3f} | "
            f"{r['pearson_detrended']:.3f} | {r['pearson_diff']:.3f} | {r['loglog_slope']:.2f} | "
            f"{r['series'][w]['b_total']:.1f} -> {r['b_total_final']:.1f} | "
            f"{r['loss_first']:.2f} -> {r['loss_last']:.2f} |"
        )
    for c in controls:
        lines.append(
            f"| control: {c['norm']} B_norm seed {c['norm_seed']} vs B_total seed {c['total_seed']} | - | "
            f"{c['ratio_median']:.2f} [{c['ratio_p10']:.2f}, {c['ratio_p90']:.2f}] | {c['pearson_log']:.3f} | "
            f"{c['pearson_detrended']:.3f} | {c['pearson_diff']:.3f} | {c['loglog_slope']:.2f} | - | - |"
        )
    lines += [
        "",
        "Check: the monitor's norm-only per-example term matched brute force to a relative error of at most "
        + f"{max(r['max_norm_s_small_rel_err'] for r in runs):.1e}.",
    ]
    (RESULTS / "gns_norm_vs_total.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
