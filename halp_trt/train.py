"""A plain fine-tuning loop for the embedded pipeline (users with their own loop call the
pruner's ``accumulate()`` / ``step()`` themselves — see README).

Runs in one process or under ``torchrun`` with DDP (gloo on CPU, NCCL on GPUs); only rank 0
writes files. Every epoch (and on Ctrl-C) a checkpoint of model, optimizer and pruner state is
written atomically so the run resumes where it stopped.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn as nn

from halp_trt.atomic import write_atomic_with
from halp_trt.errors import HalpError


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


def evaluate(model: nn.Module, loader) -> float:
    """Top-1 accuracy (all-reduced under DDP)."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += int(y.numel())
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([correct, total], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        correct, total = int(t[0]), int(t[1])
    return correct / max(total, 1)


def recalibrate_bn(model: nn.Module, loader, max_batches: int = 20) -> None:
    """Re-estimate BatchNorm running statistics (after pruning changes the activations)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(loader):
            if i >= max_batches:
                break
            model(x)
    for m in bns:
        m.momentum = 0.1


def train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, pruner=None,
                scheduler=None, on_batch: Callable[[float], None] | None = None) -> float:
    """One epoch of cross-entropy training; with a pruner, importance is accumulated after each
    backward and masks are updated/re-applied after each optimizer step."""
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    total, n = 0.0, 0
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):
            raise HalpError("training loss became NaN/inf; lower the learning rate or check the "
                            "data")
        loss.backward()
        if pruner is not None:
            pruner.accumulate()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if pruner is not None:
            pruner.step()
        total += loss.item()
        n += 1
        if on_batch:
            on_batch(loss.item())
    return total / max(n, 1)


def save_checkpoint(path: str, state: dict) -> None:
    """Atomic torch.save of tensors and plain containers only (loadable weights-only)."""
    write_atomic_with(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise HalpError(f"cannot resume from {path}: {exc}. Delete it to start over.") from None


def load_weights(model: nn.Module, path: str) -> None:
    """Load a state dict, refusing anything but tensors (a pickle can run code)."""
    if not os.path.isfile(path):
        raise HalpError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise HalpError(f"cannot load weights from {path}: only weights-only state dicts are "
                        f"accepted ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
                        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise HalpError(f"{path} does not hold a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = [ln.strip() for ln in str(exc).splitlines() if ln.strip()][1:4]
        raise HalpError(f"weights in {path} do not fit the model: " + "; ".join(first)) from None
