"""GPU: fused per-example-norm LayerNorm/RMSNorm kernels vs torch and Liger-Kernel, at LLM shapes.

Run on a CUDA machine, as one script: ``python benchmarks/norm_kernels_gpu.py`` (``--quick``: a
few shapes). Without CUDA it prints why and exits 0 (``--cpu-smoke`` runs the same code on tiny
shapes through the Triton interpreter, to check the script itself; its times mean nothing).
Writes ``benchmarks/results/gns_norm_kernels_gpu.json`` and ``.md``, with the device named.

Per case (kind LayerNorm / RMSNorm, dtype bf16 / fp32, ``tokens`` = B x T in 8k..64k, hidden N in
2k..8k), forward + backward (``dx``, ``dweight``, ``dbias``), median ms by
``triton.testing.do_bench``:

- ``torch``: ``F.layer_norm`` / ``F.rms_norm`` with autograd (no per-example anything);
- ``liger``: Liger-Kernel's ``LigerLayerNormFunction`` / ``LigerRMSNormFunction`` (when
  ``pip install liger-kernel`` is there; else reported as not installed);
- ``fused``: ``fxparam.kernels`` Triton path with a per-example gradient sink ``(B, P, N)``, as the
  GNS modules run it (B examples of T tokens);
- ``fused_1ex``: the same kernel with the tokens seen as one example (the per-example split
  turned off): ``fused / fused_1ex`` is the **per-example-norm overhead** of the kernel.

Achieved bandwidth: the bytes a norm must move (forward reads x, writes y; backward reads x and
dy, writes dx: ``5 * tokens * N * element size``, plus negligible vectors) over the measured time,
as a fraction of the device's peak DRAM bandwidth (from the CUDA device properties when torch
exposes the memory clock and bus width, else a table of known devices, else ``--peak-gbps``).

Plus a parity check of every fused case against the PyTorch reference path, and a reference GPT
(GPT-2 small shape) training step with and without GNS tracking.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"

#: Peak DRAM bandwidth (GB/s) of common devices, by a substring of the device name.
KNOWN_PEAK_GBPS = {
    "H200": 4800.0,
    "H100 SXM": 3350.0,
    "H100 NVL": 3900.0,
    "H100 PCIe": 2000.0,
    "H100": 3350.0,
    "GH200": 4000.0,
    "B200": 8000.0,
    "A100-SXM4-80GB": 2039.0,
    "A100 80GB PCIe": 1935.0,
    "A100": 1555.0,
    "L40S": 864.0,
    "L4": 300.0,
    "A10G": 600.0,
    "A10": 600.0,
    "RTX 4090": 1008.0,
    "RTX 3090": 936.0,
    "V100": 900.0,
    "T4": 320.0,
}

SHAPES = [  # (B examples, T tokens each, N hidden): tokens 8k..64k, hidden 2k..8k
    (8, 1024, 2048),
    (8, 1024, 4096),
    (8, 1024, 8192),
    (16, 2048, 2048),
    (16, 2048, 4096),
    (16, 2048, 8192),
    (32, 2048, 4096),
    (16, 4096, 8192),
]
QUICK_SHAPES = [(8, 1024, 2048), (16, 2048, 4096), (16, 4096, 8192)]
SMOKE_SHAPES = [(2, 8, 64), (3, 5, 96)]


def peak_gbps(override: float | None) -> tuple[float | None, str]:
    """The device's peak DRAM bandwidth in GB/s and where the number came from."""
    if override:
        return override, "--peak-gbps"
    props = torch.cuda.get_device_properties(0)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if clock_khz and bus_bits:
        return 2.0 * clock_khz * 1e3 * bus_bits / 8 / 1e9, "device properties (2 x memory clock x bus width)"
    name = torch.cuda.get_device_name()
    for key, gbps in KNOWN_PEAK_GBPS.items():
        if key in name:
            return gbps, f"table entry {key!r}"
    return None, "unknown (pass --peak-gbps)"


class Timer:
    """``triton.testing.do_bench`` on CUDA; a wall-clock median on CPU (smoke runs only)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def __call__(self, fn, warmup: int = 10, rep: int = 50) -> float:
        if self.cuda:
            import triton.testing

            return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
        fn()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
        return statistics.median(times)


def _liger(kind: str) -> Any:
    try:
        if kind == "layernorm":
            from liger_kernel.ops.layer_norm import LigerLayerNormFunction

            return LigerLayerNormFunction
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction

        return LigerRMSNormFunction
    except ImportError:
        return None


def norm_case(
    kind: str, B: int, T: int, N: int, dtype: torch.dtype, dev: str, timer: Timer, peak: float | None
) -> dict:
    from fxparam.kernels import layer_norm_per_example, rms_norm_per_example

    eps = 1e-5
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(B, T, N, device=dev, dtype=dtype, generator=g).requires_grad_(True)
    w = (1 + 0.1 * torch.randn(N, device=dev, dtype=dtype, generator=g)).requires_grad_(True)
    b = (
        (0.1 * torch.randn(N, device=dev, dtype=dtype, generator=g)).requires_grad_(True)
        if kind == "layernorm"
        else None
    )
    dy = torch.randn(B, T, N, device=dev, dtype=dtype, generator=g)
    params = [x, w] + ([b] if b is not None else [])
    P = len(params) - 1

    def torch_fb():
        y = F.layer_norm(x, (N,), w, b, eps) if kind == "layernorm" else F.rms_norm(x, (N,), w, eps)
        return torch.autograd.grad(y, params, dy)

    def ours(backend: str, examples: int):
        xv = x.view(examples, -1, N)
        dyv = dy.view(examples, -1, N)
        sink = torch.zeros(examples, P, N, device=dev, dtype=torch.float32, requires_grad=True)

        def fb():
            if kind == "layernorm":
                y = layer_norm_per_example(xv, w, b, eps, backend=backend, grad_sink=sink)  # type: ignore[arg-type]
            else:
                y = rms_norm_per_example(xv, w, eps, backend=backend, grad_sink=sink)  # type: ignore[arg-type]
            return torch.autograd.grad(y, [*params, sink], dyv)

        return fb

    liger_fn = _liger(kind)

    def liger_fb():
        y = liger_fn.apply(x, w, b, eps) if kind == "layernorm" else liger_fn.apply(x, w, eps)
        return torch.autograd.grad(y, params, dy.clone())  # Liger's RMSNorm may write dy in place

    # Parity: fused vs the PyTorch reference path, per-example gradients and dx.
    g_f = ours("triton", B)()
    g_r = ours("reference", B)()
    pe_f, pe_r = g_f[-1].float(), g_r[-1].float()
    sq_f, sq_r = pe_f.pow(2).sum(-1), pe_r.pow(2).sum(-1)
    tol = 2e-2 if dtype != torch.float32 else 1e-4
    max_err = {
        "dx": float((g_f[0].float() - g_r[0].float()).abs().max()),
        "dweight": float((g_f[1].float() - g_r[1].float()).abs().max()),
        "per_example_sq_norm_rel": float(((sq_f - sq_r).abs() / sq_r.abs().clamp_min(1e-12)).max()),
    }
    out: dict[str, Any] = {
        "kind": kind,
        "shape": [B, T, N],
        "tokens": B * T,
        "dtype": str(dtype).replace("torch.", ""),
        "max_err": max_err,
        "parity_ok": max_err["per_example_sq_norm_rel"] < tol,
    }
    out["torch_ms"] = timer(torch_fb)
    out["fused_ms"] = timer(ours("triton", B))
    out["fused_1ex_ms"] = timer(ours("triton", 1))
    out["liger_ms"] = timer(liger_fb) if liger_fn is not None and dev == "cuda" else None
    out["fused_vs_torch"] = out["fused_ms"] / out["torch_ms"]
    out["fused_vs_liger"] = out["fused_ms"] / out["liger_ms"] if out["liger_ms"] else None
    out["per_example_overhead"] = out["fused_ms"] / out["fused_1ex_ms"]
    nbytes = 5 * B * T * N * x.element_size()
    for key in ("torch", "fused", "liger"):
        ms = out[f"{key}_ms"]
        gbps = nbytes / (ms * 1e-3) / 1e9 if ms else None
        out[f"{key}_gbps"] = gbps
        out[f"{key}_peak_frac"] = gbps / peak if gbps and peak else None
    return out


def _gpt_step_ms(norm: str, dtype: torch.dtype, B: int, T: int, tracked: bool, timer: Timer) -> dict:
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
    ms = timer(step, warmup=3, rep=20)
    return {"ms": ms, "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30}


def gpt_step(norm: str, dtype: torch.dtype, B: int, T: int, timer: Timer) -> dict:
    out: dict[str, Any] = {}
    for tracked in (False, True):
        out["gns" if tracked else "baseline"] = _gpt_step_ms(norm, dtype, B, T, tracked, timer)
        torch.cuda.empty_cache()
    out["time_ratio"] = out["gns"]["ms"] / out["baseline"]["ms"]
    out["extra_mem_gb"] = out["gns"]["peak_mem_gb"] - out["baseline"]["peak_mem_gb"]
    return out


def _f(x: Any, spec: str) -> str:
    return format(x, spec) if isinstance(x, (int, float)) else "-"


def write_results(result: dict, stem: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    peak = result["peak_gbps"]
    lines = [
        f"# Fused per-example-norm kernels on {result['device']}",
        "",
        f"torch {result['torch']}, triton {result['triton']}, Liger-Kernel {result['liger']}; peak DRAM bandwidth "
        f"{_f(peak, '.0f')} GB/s ({result['peak_source']}). Forward + backward, median ms (`triton.testing.do_bench`); "
        "bandwidth = 5 x tokens x hidden x element size / time. Overhead = fused (B examples) / fused (one example). "
        "Generated by `benchmarks/norm_kernels_gpu.py`.",
        "",
        "| kind | dtype | B x T x N | torch ms | Liger ms | fused ms | fused/torch | fused/Liger | per-example overhead "
        "| fused % peak BW | torch % peak BW | Liger % peak BW | parity |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["kernels"]:
        pct = {
            k: (100 * c[f"{k}_peak_frac"] if c.get(f"{k}_peak_frac") else None)
            for k in ("fused", "torch", "liger")
        }
        lines.append(
            f"| {c['kind']} | {c['dtype']} | {'x'.join(map(str, c['shape']))} | {_f(c['torch_ms'], '.3f')} | "
            f"{_f(c['liger_ms'], '.3f')} | {_f(c['fused_ms'], '.3f')} | {_f(c['fused_vs_torch'], '.2f')} | "
            f"{_f(c['fused_vs_liger'], '.2f')} | {_f(c['per_example_overhead'], '.3f')} | {_f(pct['fused'], '.0f')} | "
            f"{_f(pct['torch'], '.0f')} | {_f(pct['liger'], '.0f')} | {c['parity_ok']} |"
        )
    if result.get("gpt_step"):
        lines += [
            "",
            "| GPT-2 small step (bf16 autocast, 8 x 1024) | time ratio (GNS / none) | extra peak memory (GB) |",
            "|---|---|---|",
        ]
        for norm, s in result["gpt_step"].items():
            lines.append(f"| {norm} | {s['time_ratio']:.3f} | {s['extra_mem_gb']:+.3f} |")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three shapes, no GPT step")
    ap.add_argument("--peak-gbps", type=float, default=None, help="the device's peak DRAM bandwidth (GB/s)")
    ap.add_argument("--no-gpt-step", action="store_true")
    ap.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="no GPU: run the script's code on tiny shapes through the Triton interpreter (times are meaningless; "
        "writes results/gns_norm_kernels_cpu_smoke.*)",
    )
    args = ap.parse_args()
    if args.cpu_smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before fxparam.kernels defines the kernels
        dev, shapes, dtypes = "cpu", SMOKE_SHAPES, (torch.float32,)
        device_name, peak, peak_src = f"CPU smoke run ({platform.machine()}, Triton interpreter)", None, "n/a"
    else:
        if not torch.cuda.is_available():
            print(
                "norm_kernels_gpu: no CUDA device here, so nothing was measured and no results were written. "
                "Run it on a GPU machine (python benchmarks/norm_kernels_gpu.py), or --cpu-smoke to check the script."
            )
            return 0
        try:
            import triton  # noqa: F401
        except ImportError:
            print("norm_kernels_gpu: triton is not installed; install it to benchmark the fused kernels.")
            return 0
        dev, dtypes = "cuda", (torch.bfloat16, torch.float32)
        shapes = QUICK_SHAPES if args.quick else SHAPES
        device_name = torch.cuda.get_device_name()
        peak, peak_src = peak_gbps(args.peak_gbps)
    timer = Timer(dev == "cuda")
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    try:
        from importlib.metadata import version

        import liger_kernel  # noqa: F401

        liger_version = version("liger-kernel")
    except Exception:  # noqa: BLE001 - any failure: not available
        liger_version = "not installed"
    cases = []
    for kind in ("layernorm", "rmsnorm"):
        for dtype in dtypes:
            for B, T, N in shapes:
                c = norm_case(kind, B, T, N, dtype, dev, timer, peak)
                cases.append(c)
                print(
                    f"{kind:9s} {c['dtype']:8s} {B}x{T}x{N}: torch {c['torch_ms']:.3f} ms, fused {c['fused_ms']:.3f} ms "
                    f"(x{c['fused_vs_torch']:.2f}; per-example overhead x{c['per_example_overhead']:.3f}), "
                    f"Liger {_f(c['liger_ms'], '.3f')} ms, parity {c['parity_ok']}",
                    flush=True,
                )
                if dev == "cuda":
                    torch.cuda.empty_cache()
    steps = {}
    if dev == "cuda" and not (args.quick or args.no_gpt_step):
        for norm in ("layernorm", "rmsnorm"):
            steps[norm] = gpt_step(norm, torch.bfloat16, 8, 1024, timer)
            print(f"GPT-2 small step ({norm}): x{steps[norm]['time_ratio']:.3f} time", flush=True)
    result = {
        "device": device_name,
        "torch": torch.__version__,
        "triton": triton_version,
        "liger": liger_version,
        "host": platform.node(),
        "peak_gbps": peak,
        "peak_source": peak_src,
        "kernels": cases,
        "gpt_step": steps,
    }
    write_results(result, "gns_norm_kernels_cpu_smoke" if args.cpu_smoke else "gns_norm_kernels_gpu")
    bad = [c for c in cases if not c["parity_ok"]]
    if bad:
        print(f"norm_kernels_gpu: PARITY FAILED for {len(bad)} case(s); see max_err in the JSON.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
