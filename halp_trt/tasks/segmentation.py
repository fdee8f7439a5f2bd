"""Semantic segmentation: torchvision's segmentation models as halp-trt prunes, times and
deploys them, the shapes task's (image, class-per-pixel) pairs, and mean IoU.

torchvision's segmentation models return ``{"out": logits}`` (N, classes, H, W); the network
that is exported and timed is that output alone, so each model's class is given a ``forward``
that returns it (its state dict, and so users' weights, unchanged)."""
from __future__ import annotations

import torch
import torch.nn as nn

from halp_trt.errors import HalpError
from halp_trt.tasks.shapes import ShapesPairs

_OUT_ONLY: dict[type, type] = {}


def _out_only_class(cls: type) -> type:
    if cls not in _OUT_ONLY:
        def forward(self, x):
            return cls.forward(self, x)["out"]
        _OUT_ONLY[cls] = type(cls.__name__, (cls,), {"forward": forward,
                                                     "__module__": cls.__module__})
    return _OUT_ONLY[cls]


def segmentation_model_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models.segmentation)


def create_segmentation_model(name: str, num_classes: int | None) -> nn.Module:
    """An untrained torchvision segmentation model returning its logits tensor (no auxiliary
    head: it is not part of the deployed graph)."""
    import torchvision

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None,
                                             aux_loss=False, **kwargs)
    except TypeError:  # builders without an auxiliary head (LR-ASPP)
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None,
                                             **kwargs)
    model.__class__ = _out_only_class(type(model))
    return model


class ShapesSegmentation(ShapesPairs):
    """The shapes task (``halp_trt.tasks.shapes``) as (image, class-per-pixel mask) pairs."""

    def target_of(self, target: dict):
        return target["mask"]


def _jaccard_index(num_classes: int):
    """torchmetrics' macro-averaged ``MulticlassJaccardIndex`` (mean IoU over the classes)."""
    try:
        from torchmetrics.classification import MulticlassJaccardIndex
    except ImportError:
        raise HalpError("segmentation needs torchmetrics: pip install 'halp-trt[dense]'") \
            from None
    return MulticlassJaccardIndex(num_classes=num_classes, average="macro")


def mean_iou(model: nn.Module, loader, num_classes: int) -> float:
    """Mean intersection over union over the classes (background included), torchmetrics'
    ``MulticlassJaccardIndex``; under DDP each rank's counts are synced."""
    metric = _jaccard_index(num_classes)
    model.eval()
    with torch.no_grad():
        for x, mask in loader:
            metric.update(model(x).argmax(1), mask)
    return float(metric.compute())


def constant_prediction_miou(masks: torch.Tensor, num_classes: int) -> float:
    """Mean IoU (as ``mean_iou`` scores it) of predicting the most frequent class of ``masks``
    at every pixel: what a model that learned nothing reaches."""
    masks = masks.long()
    majority = int(torch.bincount(masks.flatten(), minlength=num_classes).argmax())
    metric = _jaccard_index(num_classes)
    metric.update(torch.full_like(masks, majority), masks)
    return float(metric.compute())
