"""2-process DDP (gloo, CPU): the monitor's estimate equals one process with the same global batch."""

from __future__ import annotations

import datetime
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _gns_helpers import batch, swapped_tiny_gpt

from fxparam.gns import monitor

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is unavailable",
)

GLOBAL_B = 8
KEYS = ("s_small", "s_big", "g2_raw", "trace_sigma_raw", "batch_size")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, micro: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        model = swapped_tiny_gpt()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        mon = monitor(ddp)
        idx, tgt = batch(GLOBAL_B)
        local = GLOBAL_B // world
        li, lt = idx[rank * local : (rank + 1) * local], tgt[rank * local : (rank + 1) * local]
        chunks = list(zip(li.chunk(micro), lt.chunk(micro), strict=True))
        for j, (i, t) in enumerate(chunks):
            if j < len(chunks) - 1:
                with ddp.no_sync():
                    (ddp(i, t)[1] / micro).backward()
            else:
                (ddp(i, t)[1] / micro).backward()
        est = mon.update()
        torch.save(
            {"total": est.total.model_dump(), "layers": {k: v.model_dump() for k, v in est.layers.items()}},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def _single_process():
    model = swapped_tiny_gpt()
    mon = monitor(model)
    idx, tgt = batch(GLOBAL_B)
    model(idx, tgt)[1].backward()
    est = mon.update()
    return {"total": est.total.model_dump(), "layers": {k: v.model_dump() for k, v in est.layers.items()}}


@pytest.mark.parametrize("micro", [1, 2])
def test_two_process_gloo_matches_single_process(tmp_path, micro):
    mp.spawn(_worker, args=(2, _free_port(), micro, str(tmp_path)), nprocs=2, join=True)
    want = _single_process()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert sorted(got["layers"]) == sorted(want["layers"])
        for k in KEYS:
            assert math.isclose(got["total"][k], want["total"][k], rel_tol=1e-4, abs_tol=1e-9), (rank, k)
        for name, st in want["layers"].items():
            assert math.isclose(
                got["layers"][name]["trace_sigma_raw"], st["trace_sigma_raw"], rel_tol=1e-4
            ), name
