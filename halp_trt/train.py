"""A plain fine-tuning loop for the embedded pipeline (users with their own loop call the
pruner's ``accumulate()`` / ``step()`` themselves — see README), evaluation, BN recalibration
and weights-only loading. Runs in one process or under ``torchrun`` with DDP.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from halp_trt.distributed import all_reduce_counts
from halp_trt.errors import HalpError


def evaluate(model: nn.Module, loader) -> float:
    """Top-1 accuracy (all-reduced under DDP)."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += int(y.numel())
    correct, total = all_reduce_counts(correct, total)
    return correct / max(total, 1)


def recalibrate_bn(model: nn.Module, loader, max_batches: int = 20) -> None:
    """Re-estimate BatchNorm running statistics from ``max_batches`` batches (after training
    too short for the running averages to settle, or after pruning changed the activations);
    each layer's own momentum is restored after."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(loader):
            if i >= max_batches:
                break
            model(x)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum


# Weight of each auxiliary head's loss, as the architectures' papers train them: GoogLeNet's two
# heads 0.3 each, Inception v3's single head 0.4.
AUX_WEIGHT = {1: 0.4, 2: 0.3}


def split_outputs(output) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(main logits, auxiliary logits) of a classifier's training-mode output: a tensor, a
    namedtuple such as GoogLeNetOutputs/InceptionOutputs (main first), a tuple/list (main
    first) or a dict ("out"/"logits" main, the rest auxiliary)."""
    if isinstance(output, torch.Tensor):
        return output, []
    if isinstance(output, dict):
        key = next((k for k in ("logits", "out") if k in output), next(iter(output)))
        return output[key], [v for k, v in output.items()
                             if k != key and isinstance(v, torch.Tensor)]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0], [v for v in output[1:] if isinstance(v, torch.Tensor)]
    raise HalpError(f"the model returned {type(output).__name__} in training; halp-trt trains "
                    "classifiers that return logits, a tuple/namedtuple with the logits first, "
                    "or a dict with 'logits' or 'out'")


def classification_loss(output, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the main output plus weighted auxiliary losses."""
    main, aux = split_outputs(output)
    loss = nn.functional.cross_entropy(main, target)
    w = AUX_WEIGHT.get(len(aux), 0.3)
    for a in aux:
        loss = loss + w * nn.functional.cross_entropy(a, target)
    return loss


def train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, pruner=None,
                scheduler=None, clip_grad_norm: float | None = None) -> float:
    """One epoch of cross-entropy training; with a pruner, importance is accumulated after each
    backward and masks are updated/re-applied after each optimizer step."""
    model.train()
    total, n = 0.0, 0
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        loss = classification_loss(model(x), y)
        if not torch.isfinite(loss):
            raise HalpError("training loss became NaN/inf; lower the learning rate or check the "
                            "data")
        loss.backward()
        if clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        if pruner is not None:
            pruner.accumulate()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if pruner is not None:
            pruner.step()
        total += loss.item()
        n += 1
    return total / max(n, 1)


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
