"""Everything halp-trt does with torch.distributed, in one place.

A run under ``torchrun`` (DDP; gloo on CPU, NCCL on GPUs) measures on every rank, but decisions
must be identical everywhere: measurements are broadcast from rank 0, importance is all-reduced,
and only rank 0 writes files. Single-process runs pass through every helper unchanged.
"""
from __future__ import annotations

import os

import torch

from halp_trt.errors import HalpError


def is_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def dist_context(backend: str | None = None) -> tuple[int, int]:
    """(rank, world size); initializes the process group under torchrun (``backend``: default
    NCCL with CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if torch.cuda.is_available()
                                                    else "gloo"))
    return dist.get_rank(), dist.get_world_size()


def finish_distributed(world: int) -> None:
    """Ranks leave together: a rank that exits while rank 0 still holds the gloo process group
    was seen to abort (SIGABRT) in the group's teardown."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def broadcast_object(value):
    """Rank 0's value on every rank (measurements differ per rank; decisions must not)."""
    if not is_initialized():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_dicts(entries: dict, world: int) -> dict:
    """Every rank's entries merged (each rank measured its share of a table)."""
    if world == 1:
        return entries
    import torch.distributed as dist

    parts: list = [None] * world
    dist.all_gather_object(parts, entries)
    merged: dict = {}
    for p in parts:
        merged.update(p)
    return merged


def check_same_on_all_ranks(kept: dict) -> None:
    """Every rank must have made the same pruning decisions (all-reduced importance, broadcast
    measurements); a mismatch would silently desynchronize the replicas."""
    if not is_initialized():
        return
    import torch.distributed as dist

    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, kept)
    if any(p != parts[0] for p in parts[1:]):
        raise HalpError("ranks made different pruning decisions; this is a bug in halp-trt's "
                        "distributed synchronization — please report it")


def all_reduce_sum_then_broadcast(total: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, then rank 0's sum everywhere: bit-identical inputs to every rank's
    knapsack. Returns a CPU tensor."""
    if not is_initialized():
        return total
    import torch.distributed as dist

    # gloo reduces CPU tensors; NCCL needs them on this rank's GPU.
    dev = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    buf = total.to(dev)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    dist.broadcast(buf, src=0)
    return buf.cpu()


def all_reduce_counts(correct: int, total: int) -> tuple[int, int]:
    """Accuracy counts summed over ranks."""
    if not is_initialized():
        return correct, total
    t = torch.tensor([correct, total], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return int(t[0]), int(t[1])
