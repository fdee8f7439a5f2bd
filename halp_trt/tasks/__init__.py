"""What a model is trained and scored for: one ``Task`` per kind, in a registry.

Classification scores top-1 accuracy; segmentation (torchvision's segmentation models, the
built-in ``shapes`` data) scores mean IoU (``halp_trt.tasks.segmentation``). Detection is not
handled yet: it is refused with one clear error."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from halp_trt.errors import HalpError


@dataclass(frozen=True)
class Task:
    name: str
    metric: str  # what ``evaluate`` returns, for logs and reports
    # (model, loader, num_classes) -> the metric on the loader's data
    evaluate: Callable[..., float]
    class_dim: int = 1  # the output dimension that holds the classes


def _top1(model, loader, num_classes):
    from halp_trt.train import evaluate
    return evaluate(model, loader)


def _miou(model, loader, num_classes):
    from halp_trt.tasks.segmentation import mean_iou
    return mean_iou(model, loader, num_classes)


TASKS = {"classification": Task("classification", "top-1 accuracy", _top1),
         "segmentation": Task("segmentation", "mean IoU", _miou)}


def task_of_model(model_name: str) -> str:
    """The task a model name implies: torchvision's segmentation models are segmentation,
    everything else classification."""
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
    if name == "detection":
        raise HalpError(f"{model_name}: detection models are not supported yet (their "
                        "post-processing and box losses are not wired into the pipeline); "
                        "classification and segmentation models are")
    if name not in TASKS:
        raise HalpError(f"unknown task {task!r}: use auto, {', '.join(TASKS)}")
    return TASKS[name]
