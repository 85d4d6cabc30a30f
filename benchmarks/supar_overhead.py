"""Step time and memory of SμPar masks vs the dense model, reference GPT on CPU.

Run: ``python benchmarks/supar_overhead.py``. Writes benchmarks/results/supar_overhead.json.

Two copies of the reference GPT (default ``GPTConfig``: width 256, depth 4, seq 128,
batch 8), one transformed with ``completep`` and one with ``completep+supar`` (density
0.25), train side by side with AdamW (weight decay 0.1, grad clipping 1.0) on the same
batch, for two AdamW implementations: torch's default on CPU (a for-loop over
tensors) and ``fused=True``.  Steps alternate between the two models (ABBA order) so
that machine load hits both alike; ``step_time_ratio`` is the median of per-round ratios
of process CPU time (robust to other processes sharing the machine), wall-clock ratios
are reported next to it.  Masking keeps the dense matmuls (on zeroed weights); what it
adds per step is broken down from the model's own tensors:

- ``hook``: the gradient hook, ``grad * mask``, on every masked weight;
- ``rezero``: the guard's ``weight *= mask`` at the first forward after each step;
- ``adam_sqrt_of_zeros`` (for-loop AdamW only): Adam's ``sqrt(exp_avg_sq)`` on the
  masked model's state minus the same on the dense model's: torch's CPU sqrt kernel is
  several times slower on exact zeros (measured here), and masked entries keep exactly
  zero Adam state by design.  The fused kernel does not pay this.

Memory: the masks are bool buffers, one byte per entry of each masked weight, against
four bytes per entry of the fp32 weights.  Target: ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _common import machine, write_result

import fxparam
from fxparam.lowering.masks import masks_of
from fxparam.models import GPT, GPTConfig

VARIANTS: dict[str, dict[str, Any]] = {"adamw": {}, "adamw_fused": {"fused": True}}


def build(
    config: str, cfg: GPTConfig, density: float, **opt_kwargs: Any
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    kwargs = {"density": density} if "supar" in config else {}
    model = fxparam.transform(GPT(cfg), config, base_width=cfg.width, base_depth=cfg.depth, **kwargs)
    opt = fxparam.optimizer(model, torch.optim.AdamW, lr=3e-3, weight_decay=0.1, **opt_kwargs)
    return model, opt


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> tuple[float, float]:
    """One training step; returns (wall seconds, process CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    _, loss = model(x, x)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - wall, time.process_time() - cpu


def cpu_ms(fn: Any, repeats: int = 20) -> float:
    """Median process CPU milliseconds of ``fn()``."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return 1e3 * statistics.median(times)


def summary(table: dict[str, list[float]]) -> dict[str, Any]:
    return {
        "dense_step_ms_median": round(1e3 * statistics.median(table["dense"]), 2),
        "supar_step_ms_median": round(1e3 * statistics.median(table["supar"]), 2),
        "ratio_median": round(statistics.median(table["ratio"]), 3),
        "ratio_p25_p75": [round(q, 3) for q in statistics.quantiles(table["ratio"], n=4)[::2]],
    }


def compare(
    cfg: GPTConfig, args: argparse.Namespace, x: torch.Tensor, opt_kwargs: dict[str, Any]
) -> dict[str, Any]:
    dense, dense_opt = build("completep", cfg, args.density, **opt_kwargs)
    sparse, sparse_opt = build("completep+supar", cfg, args.density, **opt_kwargs)
    for _ in range(args.warmup):
        step(dense, dense_opt, x)
        step(sparse, sparse_opt, x)
    wall: dict[str, list[float]] = {"dense": [], "supar": [], "ratio": []}
    cpu: dict[str, list[float]] = {"dense": [], "supar": [], "ratio": []}
    for r in range(args.rounds):
        if r % 2 == 0:
            a = step(dense, dense_opt, x)
            b = step(sparse, sparse_opt, x)
        else:
            b = step(sparse, sparse_opt, x)
            a = step(dense, dense_opt, x)
        for i, table in enumerate((wall, cpu)):
            table["dense"].append(a[i])
            table["supar"].append(b[i])
            table["ratio"].append(b[i] / a[i])

    masks = masks_of(sparse)
    exact = all(bool((sparse.get_parameter(k)[~m] == 0).all()) for k, m in masks.items())
    state_exact = all(
        bool((sparse_opt.state[sparse.get_parameter(k)]["exp_avg_sq"][~m] == 0).all())
        for k, m in masks.items()
    )
    weights = [sparse.get_parameter(k) for k in masks]
    grads = [torch.randn_like(w) for w in weights]
    mask_list = list(masks.values())
    with torch.no_grad():
        breakdown = {
            "hook_ms": cpu_ms(lambda: [g * m for g, m in zip(grads, mask_list, strict=True)]),
            "rezero_ms": cpu_ms(lambda: [w.mul_(m) for w, m in zip(weights, mask_list, strict=True)]),
        }
        if not opt_kwargs.get("fused"):  # the for-loop AdamW calls sqrt on whole state tensors
            v_sparse = [sparse_opt.state[w]["exp_avg_sq"] for w in weights]
            v_dense = [dense_opt.state[dense.get_parameter(k)]["exp_avg_sq"] for k in masks]
            breakdown["adam_sqrt_of_zeros_ms"] = cpu_ms(lambda: [v.sqrt() for v in v_sparse]) - cpu_ms(
                lambda: [v.sqrt() for v in v_dense]
            )
    return {
        "step_time_ratio": round(statistics.median(cpu["ratio"]), 3),
        "cpu_time": summary(cpu),
        "wall_time": summary(wall),
        "extra_cpu_ms_per_step": {k: round(v, 2) for k, v in breakdown.items()},
        "masked_weights_exactly_zero": exact,
        "masked_adam_state_exactly_zero": state_exact,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--density", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (1: stable timings on a shared machine)",
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "supar_overhead.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = GPTConfig()
    x = torch.randint(0, cfg.vocab, (args.batch, cfg.seq_len), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    model, _ = build("completep+supar", cfg, args.density)
    t_transform = time.perf_counter() - start
    masks = masks_of(model)
    mask_bytes = sum(m.numel() * m.element_size() for m in masks.values())
    masked_weight_bytes = sum(
        model.get_parameter(k).numel() * model.get_parameter(k).element_size() for k in masks
    )
    all_param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())

    result: dict[str, Any] = {
        **machine(capability=True),
        "model": f"reference GPT {cfg.width}x{cfg.depth}, seq {cfg.seq_len}, batch {args.batch}, AdamW + clip",
        "density": args.density,
        "measured_density": round(kept, 4),
        "rounds": args.rounds,
        "target_ratio": 1.10,
    }
    for name, opt_kwargs in VARIANTS.items():
        result[name] = compare(cfg, args, x, opt_kwargs)
        print(f"{name}: step time ratio (CPU) {result[name]['step_time_ratio']}", flush=True)
    result["memory"] = {
        "masked_params": len(masks),
        "mask_bytes": mask_bytes,
        "masked_weight_bytes": masked_weight_bytes,
        "mask_over_masked_weights": round(mask_bytes / masked_weight_bytes, 4),
        "mask_over_all_params": round(mask_bytes / all_param_bytes, 4),
        "state_dict_bytes_added": 0,
    }
    result["transform_s_supar"] = round(t_transform, 3)
    print(json.dumps(result, indent=2))
    write_result("supar_overhead", result, path=args.out)


if __name__ == "__main__":
    main()
