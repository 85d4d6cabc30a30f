"""Training-step time of the lowerings: plain vs eager-transformed, compiled plain vs compiled transformed.

Run: ``python benchmarks/lowering_overhead.py`` (``--quick`` for a smoke run). Writes
``benchmarks/results/lowering_overhead.json``.

One process, one run; five models of the reference GPT (CompleteP plan) with the same weights
(re-initialised per the plan) on the same batch:

- ``plain``: the untransformed model;
- ``eager``: ``fxparam.transform`` (forward hooks, attention scale attribute);
- ``compiled_plain``: ``torch.compile(plain)`` (Inductor);
- ``compiled_eager``: ``torch.compile`` of the eagerly transformed model (hooks traced);
- ``compiled_backend``: ``fxparam.compile`` (the plan applied by the Inductor pre-grad pass).

Every model trains with AdamW over the *same* param-group structure (the plan's groups, by
FQN; for the plain models only the grouping is copied), so the optimizer step costs the same
and the ratios measure the lowering alone.  A step is forward + cross-entropy + backward +
``opt.step()`` + ``zero_grad``.  Steps are interleaved round by round, in alternating order
(machine drift hits all alike); the median per model is reported with its ratio to the
matching plain model.
Targets: eager / plain <= 1.03, compiled transformed / compiled plain <= 1.01.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from typing import Any, cast

import torch
import torch.nn as nn
from _common import machine, write_result

import fxparam
import fxparam.lowering.compile
from fxparam.api import compile as fx_compile
from fxparam.models import GPT, GPTConfig
from fxparam.plan import unwrap

CFG = GPTConfig(width=256, depth=4, head_dim=32, seq_len=128)
PLAN = {"base_width": 64, "base_depth": 2}
BATCH, SEQ = 8, 128
TARGETS = {"eager_over_plain": 1.03, "compiled_over_compiled_plain": 1.01}


def _groups_like(model: nn.Module, template: list[dict[str, Any]]) -> list[dict[str, Any]]:
    params = dict(unwrap(model).named_parameters())
    return [{**{k: v for k, v in g.items() if k != "params"}, "params": [params[n] for n in g["param_names"]]}
            for g in template]


def build(quick: bool) -> dict[str, tuple[nn.Module, torch.optim.Optimizer]]:
    torch.manual_seed(0)
    base = GPT(CFG)
    plan = fxparam.plan(base, "completep", **PLAN)
    fxparam.lowering.compile.prepare_model(base, plan)  # re-init per the plan: every model gets these weights
    eager = fxparam.apply_plan(copy.deepcopy(base), plan, init=False)
    template = fxparam.param_groups(eager, lr=1e-3, weight_decay=0.1)
    models: dict[str, nn.Module] = {"plain": copy.deepcopy(base), "eager": eager}
    if not quick:
        models["compiled_plain"] = cast(nn.Module, torch.compile(copy.deepcopy(base)))
        models["compiled_eager"] = cast(nn.Module, torch.compile(fxparam.apply_plan(copy.deepcopy(base), plan,
                                                                                    init=False)))
        models["compiled_backend"] = fx_compile(copy.deepcopy(base), plan, init=False)
    return {name: (m, torch.optim.AdamW(_groups_like(m, template), lr=1e-3)) for name, m in models.items()}


def step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> tuple[float, float]:
    """One training step: (wall seconds, CPU seconds of this thread)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    _, loss = model(x, x)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - wall, time.thread_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="timed steps per model (interleaved)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model (compiles happen here)")
    parser.add_argument("--quick", action="store_true", help="eager models only, few rounds (smoke run)")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (1: steadier timings on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds = 5 if args.quick else args.rounds

    x = torch.randint(0, CFG.vocab, (BATCH, SEQ))
    models = build(args.quick)
    compile_s: dict[str, float] = {}
    for name, (model, opt) in models.items():
        start = time.perf_counter()
        for _ in range(args.warmup):
            step(model, opt, x)
        compile_s[name] = time.perf_counter() - start
        print(f"warm-up {name}: {compile_s[name]:.1f} s", flush=True)

    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    order = list(models)
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:  # alternate the order: no model always goes first
            model, opt = models[name]
            w, c = step(model, opt, x)
            wall[name].append(w)
            cpu[name].append(c)
    med = {name: statistics.median(v) for name, v in cpu.items()}
    med_wall = {name: statistics.median(v) for name, v in wall.items()}
    ratios = {"eager_over_plain": med["eager"] / med["plain"]}
    if "compiled_plain" in med:
        ratios["compiled_eager_over_compiled_plain"] = med["compiled_eager"] / med["compiled_plain"]
        ratios["compiled_backend_over_compiled_plain"] = med["compiled_backend"] / med["compiled_plain"]
        ratios["compiled_plain_over_plain"] = med["compiled_plain"] / med["plain"]
    wall_ratios = {k: v for k, v in {
        "eager_over_plain": med_wall["eager"] / med_wall["plain"],
        "compiled_eager_over_compiled_plain": med_wall.get("compiled_eager", 0) / med_wall.get("compiled_plain", 1),
        "compiled_backend_over_compiled_plain": med_wall.get("compiled_backend", 0) / med_wall.get("compiled_plain", 1),
    }.items() if v}

    host = machine()
    result: dict[str, Any] = {
        **host,
        "machine": f"{host['machine']}, load average {os.getloadavg()[0]:.1f} at the end",
        "model": f"GPT width {CFG.width}, depth {CFG.depth}, head_dim {CFG.head_dim}, batch {BATCH}x{SEQ}, "
                 f"CompleteP base_width {PLAN['base_width']} base_depth {PLAN['base_depth']}",
        "step": "forward + cross-entropy + backward + AdamW step (same param groups everywhere)",
        "rounds": rounds,
        "timing": "median over interleaved rounds of the stepping thread's CPU time (time.thread_time; with "
                  "one intra-op thread all forward/backward/optimizer work runs on it), which other processes "
                  "on a shared machine do not inflate; wall-clock medians are given for reference",
        "median_step_cpu_ms": {k: round(1000 * v, 2) for k, v in med.items()},
        "median_step_wall_ms": {k: round(1000 * v, 2) for k, v in med_wall.items()},
        "warmup_s": {k: round(v, 1) for k, v in compile_s.items()},
        "ratios": {k: round(v, 4) for k, v in ratios.items()},
        "wall_ratios": {k: round(v, 4) for k, v in wall_ratios.items()},
        "targets": {"eager_over_plain": "<= 1.03", "compiled_*_over_compiled_plain": "<= 1.01"},
        "met": {
            "eager_over_plain": ratios["eager_over_plain"] <= TARGETS["eager_over_plain"],
            **{k: v <= TARGETS["compiled_over_compiled_plain"] for k, v in ratios.items()
               if k.startswith("compiled_") and k != "compiled_plain_over_plain"},
        },
    }
    for name, ms in result["median_step_cpu_ms"].items():
        print(f"{name:>17}: {ms:8.2f} ms/step CPU, {result['median_step_wall_ms'][name]:8.2f} ms/step wall")
    for name, r in result["ratios"].items():
        print(f"{name:>37}: {r:.4f} (wall {result['wall_ratios'].get(name, float('nan')):.4f})")
    if not args.quick:
        write_result("lowering_overhead", result)


if __name__ == "__main__":
    main()
