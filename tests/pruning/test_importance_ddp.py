"""Two gloo processes with different data must take identical pruning decisions."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from fakes import StaircaseLatencyModel
from halp_trt.pruning.pruner import HALPConfig, HALPPruner

WORLD = 2


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 24, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _train(rank, wrap_ddp):
    torch.manual_seed(0)  # identical initial weights on every rank
    model = Small()
    if wrap_ddp:
        model = nn.parallel.DistributedDataParallel(model)
    x0 = torch.randn(1, 3, 12, 12)
    pruner = HALPPruner(model, x0, StaircaseLatencyModel(step=2),
                        HALPConfig(target=0.45, steps=2, interval=3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1000 + rank)  # different data on every rank
    local, averaged = [], []
    for it in range(6):
        x = torch.randn(8, 3, 12, 12, generator=gen) * (1.0 + rank)
        y = torch.randint(0, 10, (8,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        pruner.accumulate()
        if (it + 1) % 3 == 0:
            acc = pruner.accumulator
            local.append((acc._sum.clone(), acc.count))
            averaged.append(torch.cat(acc.scores()))  # collective, as in the pruning step
        opt.step()
        pruner.step()
    return {"masks": {k: v.tolist() for k, v in pruner.masks.items()},
            "kept": [r.kept for r in pruner.history], "local": local, "averaged": averaged}


def _worker(rank, out_dir, init_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        out = {"plain": _train(rank, False), "ddp": _train(rank, True)}
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
        # leave together: a rank tearing gloo down while the other still talks aborts it
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_ranks_with_different_data_end_with_identical_masks(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path), str(tmp_path / "init")), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    for mode in ("plain", "ddp"):
        a, b = r0[mode], r1[mode]
        assert a["masks"] == b["masks"] and a["kept"] == b["kept"]
        assert len(a["kept"]) == 2
        assert any(sum(m) < len(m) for m in a["masks"].values())  # something was pruned
        for (s0, c0), (s1, c1), avg0, avg1 in zip(a["local"], b["local"], a["averaged"],
                                                  b["averaged"]):
            assert torch.equal(avg0, avg1)
            torch.testing.assert_close(avg0, (s0 + s1) / (c0 + c1), rtol=1e-12, atol=0)
        if mode == "plain":
            # each rank saw different gradients: without the all-reduce they would disagree
            s0, s1 = a["local"][0][0], b["local"][0][0]
            assert not torch.allclose(s0, s1, rtol=1e-3)
