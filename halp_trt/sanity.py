"""Garbage in, no success out: a starting model must be worth pruning.

A run whose short pre-training diverged (outputs ~1e19, accuracy at chance) was pruned,
deployed and reported as a success. Before pruning, the model's outputs on real validation
inputs must be finite and of a sane size, and its accuracy must beat chance (the most frequent
class's share, plus a two-sigma binomial margin, so luck on a small split does not pass). A
segmentation model's mean IoU must beat predicting the most frequent class everywhere (with
background filling most pixels, that alone scores high).
"""
from __future__ import annotations

import math

import torch

from halp_trt.errors import HalpError
from halp_trt.runtime.export import output_tensors

# Largest |logit| a trained classifier plausibly produces; diverged ones reach 1e10 and beyond.
MAX_SANE_LOGIT = 1e4
# A pruned model keeping less than this share of the original's metric has lost what pruning
# was to preserve (seen: a detector fine-tuned after pruning went from mAP 0.255 to 0.0002 and
# the run reported its speedup as met).
MIN_KEPT_SHARE = 0.1
# mean IoU a segmentation model must gain over the constant prediction (pixels are correlated
# within an image: no binomial margin fits them)
MIOU_MARGIN = 0.01


def chance_accuracy(labels: torch.Tensor) -> float:
    counts = torch.bincount(labels.flatten().long())
    return float(counts.max()) / max(1, int(labels.numel()))


def check_model_is_sane(model, val_loader, accuracy: float, allow_untrained: bool,
                        what: str = "the starting model", max_batches: int = 4,
                        chance_test: bool = True, untrained_at_or_below: float | None = None,
                        metric: str = "accuracy", constant_score=None) -> None:
    """Raise one clear error if ``model`` is not worth pruning (see the module docstring).
    ``untrained_at_or_below``: for a metric without a label-frequency chance (a detector's
    mAP), the value an untrained model reaches. ``constant_score(labels)``: the metric of the
    best constant prediction (segmentation's mean IoU), which the model must beat."""
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
            if chance_test or constant_score:  # labels (a detector's are box lists)
                labels.append(y)
    if allow_untrained:
        return
    hint = ("Train it properly (more --pretrain-epochs, another --pretrain-lr) or give "
            "--weights; --allow-untrained prunes it anyway")
    if peak > MAX_SANE_LOGIT:
        raise HalpError(f"{what} gives absurdly large outputs (|logit| up to {peak:.3g}): its "
                        f"training diverged. {hint}")
    if untrained_at_or_below is not None and accuracy <= untrained_at_or_below:
        raise HalpError(f"{what} has learned nothing measurable ({metric} {accuracy:.4f} on the "
                        f"validation split, untrained models reach {untrained_at_or_below:g}): "
                        f"there is nothing to preserve. {hint}")
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    if y.numel() and constant_score is not None:
        floor = constant_score(y)
        if accuracy <= floor + MIOU_MARGIN:
            raise HalpError(f"{what} is no better than predicting the most frequent class "
                            f"everywhere ({metric} {accuracy:.4f} on the validation split, that "
                            f"constant prediction {floor:.4f}): there is nothing to preserve. "
                            f"{hint}")
    if y.numel() and chance_test:  # a classifier's top-1 against the label frequencies
        chance = chance_accuracy(y)
        margin = 2 * math.sqrt(chance * (1 - chance) / y.numel())
        if accuracy <= chance + margin:
            raise HalpError(f"{what} is at chance accuracy ({accuracy:.3f} on the validation "
                            f"split, chance {chance:.3f}): there is nothing to preserve. {hint}")


def check_not_collapsed(original: float, pruned: float, metric: str, allow_untrained: bool
                        ) -> None:
    """Refuse to deploy a pruned model that kept under ``MIN_KEPT_SHARE`` of the original's
    ``metric``: its speedup is no success."""
    if allow_untrained or original <= 0 or pruned >= MIN_KEPT_SHARE * original:
        return
    raise HalpError(f"the pruned model lost what pruning was to preserve: {metric} "
                    f"{original:.4f} -> {pruned:.4f} after fine-tuning (under "
                    f"{100 * MIN_KEPT_SHARE:.0f}% kept); not deployed. Fine-tune longer "
                    f"(--epochs), with a lower --lr, or prune less (a larger --target)")
