"""What a model is trained and scored for: one ``Task`` per kind, in a registry.

Classification scores top-1 accuracy; segmentation (torchvision's segmentation models, the
built-in ``shapes`` data or COCO masks) scores mean IoU (``halp_trt.tasks.segmentation``);
detection (torchvision's one-stage detectors and Faster R-CNN) trains with the detector's own
losses and scores COCO mAP (``halp_trt.tasks.detection``). A task says how a batch becomes a
loss, how the model is scored and how many classes the model predicts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from halp_trt.errors import HalpError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Task:
    name: str
    metric: str  # what ``evaluate`` returns, for logs and reports
    # (model, loader, num_classes) -> the metric on the loader's data
    evaluate: Callable[..., float]
    # (model, x, y) -> the training loss of one batch
    loss: Callable[..., "torch.Tensor"]
    # (model, example input) -> the number of classes the model predicts
    num_classes: Callable[..., int]
    # (model, input size) -> the network the pipeline prunes, exports and times
    prepare: Callable[..., "torch.nn.Module"] = lambda model, input_size: model
    # a starting model at or below this has learned nothing (None: judged otherwise —
    # classification against its label frequencies, segmentation against predicting the most
    # frequent class everywhere)
    untrained_at_or_below: float | None = None
    # (validation labels, num_classes) -> the metric of the best constant prediction, which a
    # starting model must beat (None: not judged this way)
    constant_score: Callable[..., float] | None = None
    # gradients clipped to this global norm while pruning and fine-tuning (None: not clipped)
    clip_grad_norm: float | None = None
    # pre-training from scratch when no weights are given (AdamW, one-cycle to the rate)
    pretrain_epochs: int = 4
    pretrain_lr: float = 2e-3
    # what a run trains on when --data is not given (``halp_trt.data.load_data``'s specs)
    default_data: str = "digits"


def _class_dim_size(model, example):
    from halp_trt.graph.groups import run_example

    return run_example(model, example, fix="set {field} to the size the model expects").shape[1]


def _classification_loss(model, x, y):
    from halp_trt.train import classification_loss
    return classification_loss(model(x), y)


def _detection_loss(model, x, y):
    from halp_trt.tasks.detection import detection_loss
    return detection_loss(model, x, y)


def _detection_core(model, input_size):
    from halp_trt.tasks.detection import as_detection_core
    return as_detection_core(model, input_size)


def _detector_classes(model, example):
    from halp_trt.tasks.detection import detector_num_classes
    return detector_num_classes(model)


def _top1(model, loader, num_classes):
    from halp_trt.train import evaluate
    return evaluate(model, loader)


def _miou(model, loader, num_classes):
    from halp_trt.tasks.segmentation import mean_iou
    return mean_iou(model, loader, num_classes)


def _constant_miou(masks, num_classes):
    from halp_trt.tasks.segmentation import constant_prediction_miou
    return constant_prediction_miou(masks, num_classes)


def _map(model, loader, num_classes):
    from halp_trt.tasks.detection import mean_average_precision
    return mean_average_precision(model, loader, num_classes)


TASKS = {"classification": Task("classification", "top-1 accuracy", _top1,
                                _classification_loss, _class_dim_size),
         # torchvision's segmentation models return their logits (N, classes, H, W)
         "segmentation": Task("segmentation", "mean IoU", _miou, _classification_loss,
                              _class_dim_size, default_data="shapes",
                              constant_score=_constant_miou),
         # untrained torchvision detectors read mAP 0.000-0.0014 on shapes. Their losses
         # spike: two epochs of SGD at 0.01 took an SSDlite (shapes, 64 px) from mAP 0.150 to
         # 0.094 unclipped, to 0.243 clipped at 2 (the pre-training's clip). From scratch an
         # SSDlite on 2,000 shapes at 64 px reached mAP 0.0014 after 4 epochs at 2e-3, 0.150
         # after 12 at 3e-3, 0.255 after 16 (Zen 4: 6 min)
         "detection": Task("detection", "mAP", _map, _detection_loss, _detector_classes,
                           _detection_core, untrained_at_or_below=0.01, clip_grad_norm=2.0,
                           pretrain_epochs=16, pretrain_lr=3e-3, default_data="shapes")}


def task_of_model(model_name: str) -> str:
    """The task a model name implies: torchvision's segmentation and detection models are
    those, everything else classification."""
    import torchvision

    from halp_trt.tasks.segmentation import segmentation_model_names

    if model_name in segmentation_model_names():
        return "segmentation"
    if model_name in torchvision.models.list_models(module=torchvision.models.detection):
        return "detection"
    return "classification"


def resolve_task(task: str, model_name: str) -> Task:
    """``task`` ("auto" infers it from the model) as a Task; one clear error otherwise."""
    name = task_of_model(model_name) if task == "auto" else task
    if name not in TASKS:
        raise HalpError(f"unknown task {task!r}: use auto, {', '.join(TASKS)}")
    return TASKS[name]
