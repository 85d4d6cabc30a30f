"""Forward+backward+step time of the reference GPT, transformed (CompleteP) vs plain, eager, CPU.

Run: ``python benchmarks/transform_overhead.py``. Interleaves the two models' steps so
machine noise hits both alike; reports the median ratio and writes
benchmarks/results/transform_overhead.json.
"""

from __future__ import annotations

import torch
from _common import machine, median_ms, timed, write_result

import fxparam
from fxparam.models import GPT, GPTConfig

CFG = GPTConfig(width=256, depth=4, head_dim=32, seq_len=128)
BATCH, SEQ, STEPS, WARMUP = 8, 128, 30, 5


def make(transformed: bool):
    torch.manual_seed(0)
    model = GPT(CFG)
    if transformed:
        fxparam.transform(model, "completep", base_width=64, base_depth=2)
        opt = fxparam.optimizer(model, torch.optim.AdamW, lr=1e-3, weight_decay=0.1)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    return model, opt


def step(model, opt, x) -> float:
    def run() -> None:
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return timed(run)[0]


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    x = torch.randint(0, CFG.vocab, (BATCH, SEQ))
    plain, transformed = make(False), make(True)
    times = {"plain": [], "transformed": []}
    for i in range(WARMUP + STEPS):
        for name, (model, opt) in (("plain", plain), ("transformed", transformed)):
            t = step(model, opt, x)
            if i >= WARMUP:
                times[name].append(t)
    med = {k: median_ms(v) for k, v in times.items()}
    ratio = med["transformed"] / med["plain"]
    result = {
        **machine(),
        "model": f"GPT width {CFG.width}, depth {CFG.depth}, batch {BATCH}x{SEQ}",
        "plain_step_ms": med["plain"],
        "transformed_step_ms": med["transformed"],
        "ratio": round(ratio, 3),
        "target": "<= 1.03",
    }
    print(f"plain step       : {med['plain']:.1f} ms")
    print(f"CompleteP step   : {med['transformed']:.1f} ms")
    print(f"ratio            : {ratio:.3f}  (target <= 1.03)")
    write_result("transform_overhead", result)


if __name__ == "__main__":
    main()
