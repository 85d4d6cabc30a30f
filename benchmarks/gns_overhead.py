"""CPU training-step cost of GNS tracking (fused norm per-example norms) vs no tracking and vs the anchors.

Run: ``python benchmarks/gns_overhead.py`` (add ``--quick`` for a smoke run). Writes
``benchmarks/results/gns_overhead.json`` and ``gns_overhead.md``.

All methods train the reference GPT (width 256, depth 4, rotary positions, LayerNorm with bias
unless stated) on the same batches with AdamW, on the PyTorch path of the kernels (CPU):

- ``baseline``: plain model, no per-example anything;
- ``gns``: norms swapped (``fxparam.gns.swap_norms``) + ``monitor.update()`` every step;
- ``opacus_gsm``: Opacus ``GradSampleModule`` (per-sample gradients of *all* parameters,
  materialised) + their norms;
- ``opacus_ghost``: Opacus ``GradSampleModuleFastGradientClipping`` with ghost clipping: per-sample
  gradient norms of all parameters without materialising them (one backward, norms only);
- ``backpack``: BackPACK ``BatchL2Grad`` on the Linear layers (BackPACK has no LayerNorm or
  Embedding support);
- ``vmap``: ``torch.func.vmap(grad)`` per-example gradients of all parameters + their norms;
- ``baseline_compiled`` / ``gns_compiled``: the first two under ``torch.compile(fullgraph=True)``
  (Inductor); the GNS model gets its per-example gradient sinks from ``fxparam.gns.prepare``.

Timing: methods are interleaved round by round in one process (drift hits all alike); the
median over rounds of the per-step time is reported, with its ratio to the baseline. Memory: each
method runs in a fresh subprocess that reports the growth of peak RSS over its training steps
(activations, gradients, optimizer state, per-example buffers) above the model's own footprint.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from fxparam.gns import monitor, prepare, swap_norms
from fxparam.models.gpt import GPT, GPTConfig

RESULTS = Path(__file__).resolve().parent / "results"
ANCHORS = ("opacus_gsm", "opacus_ghost", "backpack", "vmap")


def make_config(norm: str) -> GPTConfig:
    # Rotary positions: Opacus' embedding sampler needs a batch dim on every embedding input,
    # which a learned position table indexed by arange(T) lacks.
    return GPTConfig(width=256, depth=4, head_dim=32, vocab=256, seq_len=128, norm=norm, pos="rope")  # type: ignore[arg-type]


def make_batches(B: int, T: int, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randint(0, 256, (B, T), generator=g), torch.randint(0, 256, (B, T), generator=g))
        for _ in range(n)
    ]


def _loss(logits: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1))


class Method:
    """One way of taking a training step; ``step`` returns the per-example norms it computed (or None)."""

    def __init__(self, name: str, norm: str) -> None:
        torch.manual_seed(0)
        self.name = name
        self.model = GPT(make_config(norm))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.1)
        self.note = ""
        self.setup()

    def setup(self) -> None:
        pass

    def forward_backward(self, idx: torch.Tensor, tgt: torch.Tensor) -> object:
        _, loss = self.model(idx, tgt)
        loss.backward()
        return None

    def step(self, idx: torch.Tensor, tgt: torch.Tensor) -> object:
        out = self.forward_backward(idx, tgt)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return out


class Baseline(Method):
    pass


class GNS(Method):
    def setup(self) -> None:
        swap_norms(self.model)
        self.mon = monitor(self.model)
        self.note = "norm-layer parameters (fused per-example norms, PyTorch path)"

    def forward_backward(self, idx, tgt):
        _, loss = self.model(idx, tgt)
        loss.backward()
        return self.mon.update()


class BaselineCompiled(Method):
    def setup(self) -> None:
        self.run = torch.compile(self.model, fullgraph=True)
        self.note = "nothing (torch.compile, Inductor, fullgraph)"

    def forward_backward(self, idx, tgt):
        _, loss = self.run(idx, tgt)
        loss.backward()
        return None


class GNSCompiled(Method):
    def setup(self) -> None:
        swap_norms(self.model)
        self.mon = monitor(self.model)
        self.run = torch.compile(self.model, fullgraph=True)
        self.prepared: tuple[int, ...] | None = None
        self.note = "norm-layer parameters (torch.compile, Inductor, fullgraph; sinks via fxparam.gns.prepare)"

    def forward_backward(self, idx, tgt):
        if self.prepared != tuple(idx.shape):  # once per batch shape: the sinks are graph inputs
            prepare(self.model, idx, tgt)
            self.prepared = tuple(idx.shape)
        _, loss = self.run(idx, tgt)
        loss.backward()
        return self.mon.update()


class OpacusGSM(Method):
    def setup(self) -> None:
        from opacus import GradSampleModule

        self.gsm = GradSampleModule(self.model, loss_reduction="mean")
        self.note = "all parameters (per-sample gradients materialised)"

    def forward_backward(self, idx, tgt):
        loss = _loss(self.gsm(idx), tgt)
        loss.backward()
        sq = None
        for p in self.model.parameters():
            gs = p.grad_sample
            s = gs.reshape(gs.shape[0], -1).pow(2).sum(1)
            sq = s if sq is None else sq + s
            p.grad_sample = None
        return sq


class OpacusGhost(Method):
    def setup(self) -> None:
        from opacus.grad_sample import GradSampleModuleFastGradientClipping

        self.gsm = GradSampleModuleFastGradientClipping(
            self.model, loss_reduction="mean", max_grad_norm=1e9, use_ghost_clipping=True
        )
        self.note = "all parameters (ghost norms, one backward, no clipping pass)"

    def forward_backward(self, idx, tgt):
        loss = _loss(self.gsm(idx), tgt)
        loss.backward()
        return self.gsm.get_norm_sample()


class BackPACK(Method):
    def setup(self) -> None:
        from backpack import extend

        for m in self.model.modules():
            if isinstance(m, nn.Linear):
                extend(m)
        self.note = "Linear layers only (BackPACK supports no LayerNorm/Embedding)"

    def forward_backward(self, idx, tgt):
        from backpack import backpack
        from backpack.extensions import BatchL2Grad

        _, loss = self.model(idx, tgt)
        with backpack(BatchL2Grad()):
            loss.backward()
        sq = None
        for m in self.model.modules():
            if isinstance(m, nn.Linear):
                for p in m.parameters():
                    s = p.batch_l2
                    sq = s if sq is None else sq + s
                    del p.batch_l2
        return sq


class VMap(Method):
    def setup(self) -> None:
        from torch.func import functional_call, grad, vmap

        model = self.model

        def loss_one(params, i, t):
            return functional_call(model, params, (i[None], t[None]))[1]

        self.per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))
        self.note = "all parameters (per-example gradients materialised)"

    def forward_backward(self, idx, tgt):
        params = {k: v.detach() for k, v in self.model.named_parameters()}
        per = self.per_example(params, idx, tgt)
        sq = None
        for name, p in self.model.named_parameters():
            g = per[name]
            s = g.reshape(g.shape[0], -1).pow(2).sum(1)
            sq = s if sq is None else sq + s
            p.grad = g.mean(0)
        return sq


METHODS = {
    "baseline": Baseline,
    "gns": GNS,
    "opacus_gsm": OpacusGSM,
    "opacus_ghost": OpacusGhost,
    "backpack": BackPACK,
    "vmap": VMap,
    "baseline_compiled": BaselineCompiled,
    "gns_compiled": GNSCompiled,
}


def _build(name: str, norm: str) -> Method | str:
    try:
        return METHODS[name](name, norm)
    except ImportError as e:
        return f"not installed ({e.name}); see benchmarks/requirements-anchors.txt"


def time_methods(names: list[str], norm: str, B: int, T: int, rounds: int, steps: int) -> dict[str, dict]:
    """Interleaved rounds; per round each method takes ``steps`` steps. CPU time (both threads) and wall."""
    batches = make_batches(B, T)
    built = {n: _build(n, norm) for n in names}
    out: dict[str, dict] = {}
    live = {}
    for n, m in built.items():
        if isinstance(m, str):
            out[n] = {"skipped": m}
            continue
        try:
            for i in range(2):  # warm-up (lazy optimizer state, allocator, hooks)
                m.step(*batches[i % len(batches)])
            live[n] = m
        except Exception as e:  # noqa: BLE001 - an anchor that fails on this model is reported, not fatal
            out[n] = {"skipped": f"failed on the reference GPT: {type(e).__name__}: {str(e)[:200]}"}
    cpu: dict[str, list[float]] = {n: [] for n in live}
    wall: dict[str, list[float]] = {n: [] for n in live}
    for r in range(rounds):
        order = list(live) if r % 2 == 0 else list(reversed(live))  # alternate order: no position bias
        for n in order:
            m = live[n]
            c0, w0 = time.process_time(), time.perf_counter()
            for s in range(steps):
                m.step(*batches[s % len(batches)])
            cpu[n].append((time.process_time() - c0) / steps)
            wall[n].append((time.perf_counter() - w0) / steps)
    for n in live:
        out[n] = {
            "cpu_ms_median": 1e3 * statistics.median(cpu[n]),
            "cpu_ms_min": 1e3 * min(cpu[n]),
            "wall_ms_median": 1e3 * statistics.median(wall[n]),
            "wall_ms_min": 1e3 * min(wall[n]),
            "rounds": rounds,
            "steps_per_round": steps,
            "tracks": live[n].note or "nothing",
        }
    base = next((b for b in ("baseline", "baseline_compiled") if b in live), None)
    if base is not None:
        for n in live:
            # Paired per-round ratios (same round, adjacent in time) are robust to load drift.
            paired = [a / b for a, b in zip(cpu[n], cpu[base], strict=True)]
            out[n]["ratio_base"] = base
            out[n]["cpu_ratio_vs_baseline_median"] = statistics.median(paired)
            out[n]["cpu_ratio_vs_baseline_min"] = min(cpu[n]) / min(cpu[base])
            out[n]["wall_ratio_vs_baseline_median"] = statistics.median(
                [a / b for a, b in zip(wall[n], wall[base], strict=True)]
            )
    return out


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def memory_child(name: str, norm: str, B: int, T: int, steps: int, threads: int) -> None:
    torch.set_num_threads(threads)
    batches = make_batches(B, T)
    m = _build(name, norm)
    if isinstance(m, str):
        print(json.dumps({"skipped": m}))
        return
    import threading

    before = _rss_mb()
    peak = [before]
    stop = threading.Event()

    def sample() -> None:  # poll resident memory; the high-water mark of the training steps
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.001)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    for s in range(steps):
        m.step(*batches[s % len(batches)])
    stop.set()
    th.join()
    print(json.dumps({"peak_rss_growth_mb": peak[0] - before, "rss_before_mb": before}))


def measure_memory(name: str, norm: str, B: int, T: int, steps: int, repeats: int, threads: int) -> dict:
    vals = []
    for _ in range(repeats):
        cmd = [
            sys.executable,
            __file__,
            "--memory-child",
            name,
            "--norm",
            norm,
            "--batch",
            str(B),
            "--seq",
            str(T),
        ]
        cmd += ["--mem-steps", str(steps), "--threads", str(threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if res.returncode != 0:
            return {
                "skipped": f"memory run failed: {res.stderr.strip().splitlines()[-1] if res.stderr else '?'}"
            }
        d = json.loads(res.stdout.strip().splitlines()[-1])
        if "skipped" in d:
            return d
        vals.append(d["peak_rss_growth_mb"])
    return {"peak_rss_growth_mb_median": statistics.median(vals), "peak_rss_growth_mb_all": vals}


def _fmt(x: object, spec: str) -> str:
    return format(x, spec) if isinstance(x, (int, float)) else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few rounds (smoke test)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--norm", default="layernorm")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine OpenMP spin-waits make multi-thread "
        "timings measure the neighbours, not the method)",
    )
    ap.add_argument("--no-compiled", action="store_true", help="skip the torch.compile pair")
    ap.add_argument(
        "--core-only",
        action="store_true",
        help="time baseline/gns (eager and compiled) only; keep the anchor and memory tables of the last full run",
    )
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mem-steps", type=int, default=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.norm, args.batch, args.seq, args.mem_steps, args.threads)
        return
    torch.set_num_threads(args.threads)
    B, T = args.batch, args.seq
    core_rounds, anchor_rounds, steps = (3, 1, 2) if args.quick else (25, 4, 3)
    mem_repeats = 1 if args.quick else 3
    result: dict = {
        "machine": f"{platform.machine()} CPU, {__import__('os').cpu_count()} cores, torch threads {args.threads}",
        "torch": torch.__version__,
        "model": {**make_config(args.norm).to_dict(), "batch": B, "seq": T},
        "kernel_path": "PyTorch reference (CPU)",
        "loadavg_start": " ".join(f"{x:.1f}" for x in __import__("os").getloadavg()),
        "timing": {},
        "memory": {},
    }
    for norm in ("layernorm", "rmsnorm"):
        print(f"[{norm}] baseline vs gns, {core_rounds} interleaved rounds ...", flush=True)
        result["timing"][norm] = time_methods(["baseline", "gns"], norm, B, T, core_rounds, steps)
    if not args.no_compiled:
        for norm in ("layernorm", "rmsnorm"):
            print(f"[{norm}] compiled baseline vs compiled gns, {core_rounds} interleaved rounds ...", flush=True)
            result["timing"][f"compiled_{norm}"] = time_methods(
                ["baseline_compiled", "gns_compiled"], norm, B, T, core_rounds, steps
            )
    previous = RESULTS / "gns_overhead.json"
    if args.core_only and previous.exists():
        # Keep the anchor and memory tables of the last full run (e.g. where Opacus/BackPACK are
        # not installed); the markdown says which run each table comes from.
        old = json.loads(previous.read_text())
        result["timing"]["anchors_layernorm"] = old["timing"]["anchors_layernorm"]
        result["memory"] = old["memory"]
        result["anchors_and_memory_from"] = old.get("anchors_and_memory_from") or (
            f"an earlier full run (load average at its start {old.get('loadavg_start', '?')})"
        )
    else:
        print(f"[layernorm] anchors, {anchor_rounds} rounds ...", flush=True)
        result["timing"]["anchors_layernorm"] = time_methods(
            ["baseline", "gns", *ANCHORS], "layernorm", B, T, anchor_rounds, 2
        )
        for name in ("baseline", "gns", *ANCHORS):
            print(f"[memory] {name} ...", flush=True)
            result["memory"][name] = measure_memory(name, "layernorm", B, T, 3, mem_repeats, args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gns_overhead.json").write_text(json.dumps(result, indent=2) + "\n")

    lines = [
        "# GNS tracking overhead (CPU, PyTorch path)",
        "",
        f"Machine: {result['machine']}; torch {result['torch']}; load average at start {result['loadavg_start']}. "
        f"Reference GPT width 256, depth 4, rotary, batch {B} x {T} tokens, AdamW. "
        "Generated by `benchmarks/gns_overhead.py`. Times are process CPU time per training step "
        "(robust to other jobs on this shared machine); ratios are medians of per-round ratios to "
        "the baseline measured in the same round (compiled GNS against the compiled baseline).",
        "",
        "| norm | method | tracks | CPU ms/step (median) | ratio vs no tracking (median of rounds) | ratio of minima |",
        "|---|---|---|---|---|---|",
    ]
    for norm in ("layernorm", "rmsnorm"):
        pairs = list(result["timing"][norm].items()) + list(result["timing"].get(f"compiled_{norm}", {}).items())
        for n, d in pairs:
            if "skipped" in d:
                lines.append(f"| {norm} | {n} | {d['skipped']} | - | - | - |")
                continue
            lines.append(
                f"| {norm} | {n} | {d.get('tracks', '-')} | {_fmt(d.get('cpu_ms_median'), '.1f')} | "
                f"{_fmt(d.get('cpu_ratio_vs_baseline_median'), '.3f')} | {_fmt(d.get('cpu_ratio_vs_baseline_min'), '.3f')} |"
            )
    lines += [
        "",
        *(
            [f"Anchor and memory table below: from {result['anchors_and_memory_from']} (this run: `--core-only`)."]
            if result.get("anchors_and_memory_from")
            else []
        ),
        "",
        "| method (LayerNorm model) | tracks | CPU ms/step | ratio vs no tracking | peak RSS growth (MB) | extra vs baseline (MB) |",
        "|---|---|---|---|---|---|",
    ]
    base_mem = result["memory"]["baseline"].get("peak_rss_growth_mb_median")
    for n in ("baseline", "gns", *ANCHORS):
        d = result["timing"]["anchors_layernorm"].get(n) or result["timing"]["layernorm"].get(n, {})
        mem = result["memory"].get(n, {})
        mm = mem.get("peak_rss_growth_mb_median")
        extra = (mm - base_mem) if isinstance(mm, float) and isinstance(base_mem, float) else None
        if "skipped" in d:
            lines.append(f"| {n} | {d['skipped']} | - | - | - | - |")
            continue
        lines.append(
            f"| {n} | {d.get('tracks', '-')} | {_fmt(d.get('cpu_ms_median'), '.1f')} | "
            f"{_fmt(d.get('cpu_ratio_vs_baseline_median'), '.2f')} | {_fmt(mm, '.1f')} | {_fmt(extra, '+.1f')} |"
        )
    lines += [
        "",
        "Peak RSS growth: resident memory high-water mark over 3 training steps above the built model, "
        "polled every millisecond in a fresh process (median of runs; RSS moves in allocator-sized steps).",
    ]
    (RESULTS / "gns_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
