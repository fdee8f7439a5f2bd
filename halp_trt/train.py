"""A plain fine-tuning loop for the embedded pipeline (users with their own loop call the
pruner's ``accumulate()`` / ``step()`` themselves — see README), evaluation, BN recalibration
and weights-only loading. Runs in one process or under ``torchrun`` with DDP.
"""
from __future__ import annotations

import math
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


def _classification_batch_loss(model, x, y):
    return classification_loss(model(x), y)


def distillation_loss_fn(teacher: nn.Module, weight: float, temperature: float = 4.0):
    """``loss_fn(model, x, y)`` for ``train_epoch``: (1 - ``weight``) × the classification loss
    plus ``weight`` × T² × KL(teacher ‖ student) on logits softened by ``temperature`` (Hinton
    et al.; T² keeps the soft term's gradients on the scale of the hard one's). The teacher —
    the unpruned original, in a pruning run — runs in eval mode without gradients."""
    teacher.eval()
    t = float(temperature)

    def loss_fn(model, x, y):
        output = model(x)
        hard = classification_loss(output, y)
        with torch.no_grad():
            soft_target = nn.functional.softmax(split_outputs(teacher(x))[0] / t, dim=1)
        student = nn.functional.log_softmax(split_outputs(output)[0] / t, dim=1)
        soft = nn.functional.kl_div(student, soft_target, reduction="batchmean") * t * t
        return (1 - weight) * hard + weight * soft

    return loss_fn


def train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, pruner=None,
                scheduler=None, clip_grad_norm: float | None = None, loss_fn=None) -> float:
    """One epoch of training on ``loss_fn(model, x, y)`` (default: cross-entropy on the
    logits; detection: the detector's own losses); with a pruner, importance is accumulated
    after each backward and masks are updated/re-applied after each optimizer step."""
    model.train()
    loss_fn = loss_fn or _classification_batch_loss
    total, n = 0.0, 0
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, x, y)
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


def cosine_schedule(optimizer: torch.optim.Optimizer, total_batches: int, batches_done: int = 0):
    """The learning rate from the optimizer's down to 0 along a half cosine over
    ``total_batches``, ``batches_done`` of them already behind (a second optimizer, or a
    resumed run, continues the curve); past the end it stays 0. Step it after each batch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(
        math.pi * min(1.0, (batches_done + i) / max(total_batches, 1)))))


def capped(loader, max_batches: int | None):
    """The first ``max_batches`` batches of ``loader`` (all of them for None)."""
    for i, b in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        yield b


def progress_bar(iterable, enabled: bool = True, **kw):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, dynamic_ncols=True, leave=False, **kw)


def train_epochs(net: nn.Module, loader, optimizer: torch.optim.Optimizer, n_epochs: int = 0, *,
                 seed: int = 0, first_epoch: int = 0, pruner=None, scheduler=None, until=None,
                 on_epoch=None, clip_grad_norm: float | None = None,
                 max_batches: int | None = None, desc: str = "train",
                 progress: bool = True, loss_fn=None) -> None:
    """``n_epochs`` epochs, or with ``until`` as many as it takes until it returns True. Each
    epoch's data order is seeded by (``seed``, ``first_epoch`` + epoch), so a resumed run sees
    the batches the uninterrupted run would have seen; ``on_epoch(epochs_done)`` after each."""
    epoch = 0
    while (epoch < n_epochs) if until is None else not until():
        global_epoch = first_epoch + epoch
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(global_epoch + 1000 * seed)
        else:
            loader.generator.manual_seed(seed * 100_003 + global_epoch)
        n = min(len(loader), max_batches or len(loader))
        bar = progress_bar(capped(loader, max_batches), progress, total=n,
                           desc=f"{desc} epoch {epoch + 1}" + (f"/{n_epochs}" if until is None
                                                               else ""))
        train_epoch(net, bar, optimizer, pruner, scheduler=scheduler,
                    clip_grad_norm=clip_grad_norm, loss_fn=loss_fn)
        epoch += 1
        if on_epoch:
            on_epoch(epoch)


def pretrain(model: nn.Module, loader, epochs: int, lr: float = 2e-3, *, seed: int = 0,
             net: nn.Module | None = None, on_epoch=None, max_batches: int | None = None,
             progress: bool = True, loss_fn=None) -> None:
    """Train ``model`` from scratch: AdamW, one-cycle to ``lr``, gradients clipped at 2, then
    BatchNorm statistics re-estimated. Measured on digits at 64x64: SGD at batch 64 left RegNetY,
    GoogLeNet and MNASNet at chance after one epoch (MNASNet's BN momentum of 3e-4 barely moves
    its statistics) and diverged ResNeXt (logits 1e5); this recipe reached 0.53-0.89 for all of
    them. ``net``: what to run forward (a DDP wrapper of ``model``)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    per_epoch = min(len(loader), max_batches or len(loader))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * per_epoch)
    train_epochs(net or model, loader, opt, epochs, seed=seed, scheduler=sched,
                 clip_grad_norm=2.0, on_epoch=on_epoch, max_batches=max_batches,
                 desc="pre-train", progress=progress, loss_fn=loss_fn)
    recalibrate_bn(model, capped(loader, max_batches), max_batches=20)


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
