"""stability_lab.watch under DDP on CPU (gloo, 2 processes on 127.0.0.1): each rank's
statistics are gathered and rank 0 alone writes the store."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from _watch_models import Net, batches, cross_entropy

    import stability_lab

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(Net(gain=1.0))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        w = stability_lab.watch(model, opt, out=out, verbose=False)
        with w:
            for x, y in batches(6, seed=10 + rank, size=8):  # each rank its own data
                loss = cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad()
                w.step(loss)
        assert w.run_id is not None
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_gathered_rank0_stores(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed not built")
    import os
    import sys

    here = os.path.dirname(__file__)
    os.environ["PYTHONPATH"] = os.pathsep.join([here, *sys.path])  # for the spawned ranks
    ctx = mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    for _ in range(24):  # at most 240 s, then the ranks are ended
        if ctx.join(timeout=10):
            break
    else:
        for p in ctx.processes:
            p.kill()
        pytest.fail("DDP ranks did not finish in 240 s")
    from stability_lab.store import Store

    with Store(tmp_path, create=False) as store:
        ids = store.run_ids()
        assert len(ids) == 1  # rank 0 alone wrote
        rec = store.load_run(ids[0])
    ranks = rec["extras"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert len(ranks[0]["loss"]) == len(ranks[1]["loss"]) == 6
    assert ranks[0]["loss"] != ranks[1]["loss"]  # different data per rank
    spread = rec["metrics"]["loss_rank_spread"]
    assert len(spread) == 6 and (spread > 0).all()
    # gradients are all-reduced: every rank saw the same gradient norm
    assert ranks[0]["grad_norm"] == pytest.approx(ranks[1]["grad_norm"], rel=1e-6)
