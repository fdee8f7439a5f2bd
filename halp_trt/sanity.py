"""Garbage in, no success out: a starting model must be worth pruning.

A run whose short pre-training diverged (outputs ~1e19, accuracy at chance) was pruned,
deployed and reported as a success. Before pruning, the model's outputs on real validation
inputs must be finite and of a sane size, and its accuracy must beat chance (the most frequent
class's share, plus a two-sigma binomial margin, so luck on a small split does not pass).
"""
from __future__ import annotations

import math

import torch

from halp_trt.errors import HalpError
from halp_trt.runtime.export import output_tensors

# Largest |logit| a trained classifier plausibly produces; diverged ones reach 1e10 and beyond.
MAX_SANE_LOGIT = 1e4


def chance_accuracy(labels: torch.Tensor) -> float:
    counts = torch.bincount(labels.flatten().long())
    return float(counts.max()) / max(1, int(labels.numel()))


def check_model_is_sane(model, val_loader, accuracy: float, allow_untrained: bool,
                        what: str = "the starting model", max_batches: int = 4,
                        chance_test: bool = True) -> None:
    """Raise one clear error if ``model`` is not worth pruning (see the module docstring)."""
    labels, peak = [], 0.0
    model.eval()
    with torch.no_grad():
        for i, (x, y) in enumerate(val_loader):
            if i < max_batches:
                outs = output_tensors(model(x))
                if not all(torch.isfinite(o).all() for o in outs):
                    raise HalpError(f"{what} gives non-finite outputs (NaN/inf) on validation "
                                    "images: its training diverged. Lower --pretrain-lr, train longer "
                                    "(--pretrain-epochs) or give --weights")
                peak = max([peak] + [float(o.abs().max()) for o in outs if o.numel()])
            if chance_test:  # class labels (a detector's targets are box lists)
                labels.append(y)
    if allow_untrained:
        return
    hint = ("Train it properly (more --pretrain-epochs, another --pretrain-lr) or give "
            "--weights; --allow-untrained prunes it anyway")
    if peak > MAX_SANE_LOGIT:
        raise HalpError(f"{what} gives absurdly large outputs (|logit| up to {peak:.3g}): its "
                        f"training diverged. {hint}")
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    if y.numel() and chance_test:  # a classifier's top-1 against the label frequencies
        chance = chance_accuracy(y)
        margin = 2 * math.sqrt(chance * (1 - chance) / y.numel())
        if accuracy <= chance + margin:
            raise HalpError(f"{what} is at chance accuracy ({accuracy:.3f} on the validation "
                            f"split, chance {chance:.3f}): there is nothing to preserve. {hint}")
