"""Time ``fxparam.inspect`` on a Llama-2-7B-sized config vs a 2-layer config of the same width.

Run: ``python benchmarks/inspect_time.py``. Writes benchmarks/results/inspect_time.json.
Models are built on the meta device (no memory); capture shortens repeated blocks, so
the 32-layer inspect should cost about the same as the 2-layer one.  ``rebuild=True`` adds
the second capture (the same config at twice the width, also on meta) that cross-checks the
width axes and finds width-dependent constants (issue 13): the target is both captures of the
32-layer model under 1 s.
"""

from __future__ import annotations

import os

from _common import machine, timed, write_result

import fxparam
from fxparam.models.hf import hf_model

SEVEN_B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
               vocab_size=32000, max_position_embeddings=4096)


def timed_inspect(layers: int, repeats: int = 3, rebuild: bool = False) -> tuple[float, fxparam.Analysis]:
    """The fastest of ``repeats`` inspects and that run's Analysis (its capture time splits the total)."""
    model = hf_model("llama", device="meta", num_hidden_layers=layers, **SEVEN_B)
    runs = (timed(lambda: fxparam.inspect(model, rebuild=rebuild or None)) for _ in range(repeats))
    return min(runs, key=lambda run: run[0])


def main() -> None:
    timed_inspect(2, repeats=1)  # warm-up: first export pays one-off import/tracing costs
    t2, a2 = timed_inspect(2)
    t32, a32 = timed_inspect(32)
    t32_both, a32_both = timed_inspect(32, rebuild=True)
    failed = [n for n in a32_both.notes if n.startswith("rebuild:") and ("cannot" in n or "could not" in n)]
    assert a32_both.depth == 32 and not failed, failed  # both captures really ran
    assert a32.depth == 32 and a2.depth == 2
    assert a32.stream_depths == [32] and len(a32.attention) == 32
    result = {
        **machine(),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other jobs on the machine inflate every number
        "inspect_2_layers_s": round(t2, 3),
        "inspect_32_layers_s": round(t32, 3),
        "capture_32_layers_s": a32.capture_seconds,  # torch.export of the shortened meta skeleton
        "analysis_32_layers_s": round(t32 - a32.capture_seconds, 3),  # graph, dims, roles, blocks, attention
        "inspect_32_layers_both_captures_s": round(t32_both, 3),  # rebuild=True: second width on meta
        "ratio_32_over_2": round(t32 / t2, 2),
        "depth_ratio": 16.0,
    }
    print(f"inspect Llama-7B-sized, 2 layers : {t2:.3f} s")
    print(f"inspect Llama-7B-sized, 32 layers: {t32:.3f} s  (ratio {t32 / t2:.2f}x for 16x the depth; "
          f"capture {a32.capture_seconds:.3f} s, analysis {t32 - a32.capture_seconds:.3f} s; "
          f"load average {os.getloadavg()[0]:.1f})")
    print(f"inspect Llama-7B-sized, 32 layers, both captures (rebuild=True): {t32_both:.3f} s (target < 1 s)")
    write_result("inspect_time", result)


if __name__ == "__main__":
    main()
