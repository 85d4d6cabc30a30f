"""GPU: fused per-example-norm LayerNorm/RMSNorm kernels vs torch's norms, and GPT step overhead.

Run on a CUDA machine: ``python benchmarks/norm_kernels_gpu.py`` (``--quick`` for fewer shapes).
Without CUDA it prints a message and exits 0. Writes
``benchmarks/results/gns_norm_kernels_gpu.json`` and ``.md``.

Measured (``triton.testing.do_bench``, median ms, forward + backward):

- ``torch``: ``F.layer_norm`` / ``F.rms_norm`` with autograd (no per-example norms);
- ``fused``: ``fxparam.kernels`` Triton path (dx, dweight, dbias *and* per-example squared norms);
- ``reference``: the PyTorch path of the same Function on the GPU;

plus a parity check of the fused kernel against the reference, and a reference-GPT training step
with and without GNS tracking (norms swapped, ``monitor.update()`` each step).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"


def _bench(fn, warmup: int = 10, rep: int = 50) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def norm_case(kind: str, B: int, T: int, N: int, dtype: torch.dtype) -> dict:
    from fxparam.kernels import layer_norm_per_example, rms_norm_per_example

    dev = "cuda"
    x = torch.randn(B, T, N, device=dev, dtype=dtype, requires_grad=True)
    w = torch.randn(N, device=dev, dtype=dtype, requires_grad=True)
    b = torch.randn(N, device=dev, dtype=dtype, requires_grad=True) if kind == "layernorm" else None
    dy = torch.randn(B, T, N, device=dev, dtype=dtype)
    params = [x, w] + ([b] if b is not None else [])

    def torch_fb():
        y = F.layer_norm(x, (N,), w, b, 1e-5) if kind == "layernorm" else F.rms_norm(x, (N,), w, 1e-5)
        torch.autograd.grad(y, params, dy)

    sink_out: list = []

    def ours(backend: str):
        def fb():
            sink_out.clear()
            if kind == "layernorm":
                y = layer_norm_per_example(x, w, b, 1e-5, sink=lambda *a: sink_out.append(a), backend=backend)
            else:
                y = rms_norm_per_example(x, w, 1e-5, sink=lambda *a: sink_out.append(a), backend=backend)
            return torch.autograd.grad(y, params, dy), sink_out[0]

        return fb

    g_f, s_f = ours("triton")()
    g_r, s_r = ours("reference")()
    tol = 2e-2 if dtype != torch.float32 else 1e-4
    max_err = {
        "dx": float((g_f[0].float() - g_r[0].float()).abs().max()),
        "dweight": float((g_f[1].float() - g_r[1].float()).abs().max()),
        "sq_weight_rel": float(((s_f[0] - s_r[0]).abs() / s_r[0].abs().clamp_min(1e-12)).max()),
    }
    t_torch = _bench(torch_fb)
    t_fused = _bench(ours("triton"))
    t_ref = _bench(ours("reference"))
    return {
        "kind": kind,
        "shape": [B, T, N],
        "dtype": str(dtype).replace("torch.", ""),
        "torch_ms": t_torch,
        "fused_ms": t_fused,
        "reference_ms": t_ref,
        "fused_vs_torch": t_fused / t_torch,
        "reference_vs_torch": t_ref / t_torch,
        "max_err": max_err,
        "parity_ok": max_err["sq_weight_rel"] < tol,
    }


def _gpt_step_ms(norm: str, dtype: torch.dtype, B: int, T: int, tracked: bool) -> dict:
    from fxparam.gns import monitor, swap_norms
    from fxparam.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    cfg = GPTConfig(width=768, depth=12, heads=12, vocab=50304, seq_len=T, norm=norm)  # type: ignore[arg-type]
    model = GPT(cfg).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    mon = None
    if tracked:
        swap_norms(model)
        mon = monitor(model)
    idx = torch.randint(0, 50304, (B, T), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=dtype):
            _, loss = model(idx, idx)
        loss.backward()
        if mon is not None:
            mon.update()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    ms = _bench(step, warmup=3, rep=20)
    return {"ms": ms, "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30}


def gpt_step(norm: str, dtype: torch.dtype, B: int, T: int) -> dict:
    out = {}
    for tracked in (False, True):
        out["gns" if tracked else "baseline"] = _gpt_step_ms(norm, dtype, B, T, tracked)
        torch.cuda.empty_cache()
    out["time_ratio"] = out["gns"]["ms"] / out["baseline"]["ms"]
    out["extra_mem_gb"] = out["gns"]["peak_mem_gb"] - out["baseline"]["peak_mem_gb"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("norm_kernels_gpu: no CUDA device here; this benchmark needs a GPU (nothing to do).")
        return 0
    try:
        import triton  # noqa: F401
    except ImportError:
        print("norm_kernels_gpu: triton is not installed; install it to benchmark the fused kernels.")
        return 0
    shapes = [(8, 1024, 768), (4, 2048, 4096), (2, 2048, 8192), (16, 512, 1000)]
    if args.quick:
        shapes = shapes[:2]
    cases = []
    for kind in ("layernorm", "rmsnorm"):
        for dtype in (torch.bfloat16, torch.float32):
            for B, T, N in shapes:
                c = norm_case(kind, B, T, N, dtype)
                cases.append(c)
                print(
                    f"{kind:9s} {c['dtype']:8s} {B}x{T}x{N}: torch {c['torch_ms']:.3f} ms, fused {c['fused_ms']:.3f} ms "
                    f"(x{c['fused_vs_torch']:.2f}), reference x{c['reference_vs_torch']:.2f}, parity {c['parity_ok']}",
                    flush=True,
                )
    steps = {}
    for norm in ("layernorm", "rmsnorm"):
        steps[norm] = gpt_step(norm, torch.bfloat16, 8, 1024)
        print(
            f"GPT-2 small step ({norm}, bf16 autocast, 8x1024): x{steps[norm]['time_ratio']:.3f} time, "
            f"{steps[norm]['extra_mem_gb']:+.3f} GB peak",
            flush=True,
        )
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "host": platform.node(),
        "kernels": cases,
        "gpt_step": steps,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gns_norm_kernels_gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Fused per-example-norm kernels on {result['device']}",
        "",
        "| kind | dtype | B x T x N | torch f+b (ms) | fused f+b + per-example norms (ms) | ratio | parity |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        lines.append(
            f"| {c['kind']} | {c['dtype']} | {'x'.join(map(str, c['shape']))} | {c['torch_ms']:.3f} | "
            f"{c['fused_ms']:.3f} | {c['fused_vs_torch']:.2f} | {c['parity_ok']} |"
        )
    lines += ["", "| GPT-2 small step | time ratio (GNS / none) | extra peak memory (GB) |", "|---|---|---|"]
    for norm, s in steps.items():
        lines.append(f"| {norm} | {s['time_ratio']:.3f} | {s['extra_mem_gb']:+.3f} |")
    (RESULTS / "gns_norm_kernels_gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
