"""Detection: the part of a detector that halp-trt prunes, exports and times, its training with
the detector's own losses, mAP, and the post-processing time.

torchvision's one-stage detectors (SSD, SSDlite, RetinaNet, FCOS) are a transform (normalise,
resize, batch), a backbone (with its FPN), a head shared across pyramid levels, and
post-processing (anchors, box decoding, NMS). ``DetectionCore`` is the backbone and the head,
returning the head's raw outputs as a tuple in name order: its channel groups couple the head's
convs across every level they run on, and the post-processing — no channels to prune — stays
outside the pruned graph. Faster R-CNN is the same up to its region proposal network: the core
is the backbone and the RPN head, returning the pyramid's features beside the RPN's outputs
(the features are outputs, so their channels — which the ROI heads read — are kept); proposal
selection, ROI pooling and the ROI heads run per proposal, with no fixed shape, and stay
outside with the post-processing (timed and reported, as they are part of a user's speedup).

The core keeps the whole detector beside it (not as a submodule: the traced and exported
network is the core alone; a two-stage core holds the ROI heads as a submodule so that they
train and are saved, but never calls them), so training calls the detector as torchvision's
detection references do — ``detector(images, targets)`` returns a loss dict in train mode —
and the Taylor importance comes from those losses."""
from __future__ import annotations

import time

import torch
import torch.nn as nn

from halp_trt.errors import HalpError
from halp_trt.tasks.shapes import ShapesPairs

# one-stage builders: a backbone and a head shared over the levels
ONE_STAGE = ("ssd", "retinanet", "fcos")
# two-stage: the core ends at the RPN head. Mask and keypoint R-CNN train on masks and keypoints
# the shapes data has no keypoints for; they are refused by name
TWO_STAGE = ("fasterrcnn",)


class DetectionCore(nn.Module):
    """Backbone + head of a one-stage torchvision detector; ``forward`` gives the head's
    outputs (``output_names`` order). Shares its modules with ``detector``: pruning the core
    prunes the detector."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        rpn_head = getattr(getattr(detector, "rpn", None), "head", None)
        self.two_stage = isinstance(rpn_head, nn.Module) and isinstance(
            getattr(detector, "roi_heads", None), nn.Module)
        head = rpn_head if self.two_stage else getattr(detector, "head", None)
        if not isinstance(getattr(detector, "backbone", None), nn.Module) or \
                not isinstance(head, nn.Module):
            raise HalpError(f"{type(detector).__name__} is not a detector halp-trt knows: it "
                            "takes a backbone with a head shared across levels (SSD, SSDlite, "
                            "RetinaNet, FCOS) or with a region proposal network (Faster R-CNN)")
        roi = getattr(detector, "roi_heads", None)
        if self.two_stage and (getattr(roi, "mask_head", None) is not None or
                               getattr(roi, "keypoint_head", None) is not None):
            raise HalpError(f"{type(detector).__name__} has mask or keypoint heads: Mask and "
                            "Keypoint R-CNN are not handled (their training needs masks or "
                            "keypoints); Faster R-CNN is")
        self.backbone, self.head = detector.backbone, head
        if self.two_stage:
            # a submodule, so the pipeline trains and saves it; it is not in ``forward`` (not
            # traced, exported or timed): it runs per proposal after the core
            self.roi_heads = roi
        # a plain attribute: deepcopy keeps it sharing the copied backbone and head
        self.__dict__["detector"] = detector
        self.output_names: tuple[str, ...] = ()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(x)
        names = [str(k) for k in features] if isinstance(features, dict) else ["0"]
        features = list(features.values()) if isinstance(features, dict) else [features]
        out = self.head(features)
        if self.two_stage:  # the ROI heads read the features: they are outputs too
            objectness, deltas = out
            self.output_names = tuple([f"features_{n}" for n in names] +
                                      [f"objectness_{n}" for n in names] +
                                      [f"rpn_deltas_{n}" for n in names])
            return (*features, *objectness, *deltas)
        if isinstance(out, torch.Tensor):
            return (out,)
        self.output_names = tuple(sorted(out))
        return tuple(out[k] for k in self.output_names)

    def detect(self, images, targets=None):
        """The whole detector: a loss dict in train mode (``targets`` given), else per image a
        dict of ``boxes``, ``scores``, ``labels``."""
        self.detector.train(self.training)
        return self.detector(list(images), targets)


def detection_model_names() -> list[str]:
    import torchvision

    return [n for n in torchvision.models.list_models(module=torchvision.models.detection)
            if n.startswith(ONE_STAGE + TWO_STAGE)]


def create_detection_model(name: str, num_classes: int | None, input_size: int) -> DetectionCore:
    """An untrained torchvision detector (no downloaded weights) as a ``DetectionCore``, its
    transform set to ``input_size`` so the images the core sees are the ones it is timed on."""
    import torchvision

    if not name.startswith(ONE_STAGE + TWO_STAGE):
        raise HalpError(f"{name}: the detectors handled are {', '.join(detection_model_names())}"
                        "; Mask and Keypoint R-CNN are not (their training needs masks or "
                        "keypoints)")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    detector = torchvision.models.get_model(name, weights=None, weights_backbone=None, **kwargs)
    return as_detection_core(detector, input_size)


def as_detection_core(model: nn.Module, input_size: int) -> DetectionCore:
    """``model`` (a one-stage detector of torchvision's design, e.g. a user's ``module:factory``)
    as the core halp-trt prunes; a torchvision transform is set to ``input_size``."""
    if isinstance(model, DetectionCore):
        return model
    core = DetectionCore(model)
    transform = getattr(model, "transform", None)
    if transform is not None and hasattr(transform, "min_size"):
        transform.min_size, transform.max_size = (input_size,), input_size
        if getattr(transform, "fixed_size", None) is not None:  # SSD: a fixed square
            transform.fixed_size = (input_size, input_size)
    return core


def collate_detection(batch):
    """(images stacked, list of target dicts): boxes per image differ in number."""
    return torch.stack([x for x, _ in batch]), [t for _, t in batch]


class ShapesDetection(ShapesPairs):
    """The shapes task (``halp_trt.tasks.shapes``) as (image, {boxes, labels}) pairs; batches of
    it are (images stacked, list of targets), as torchvision's detectors take them."""

    collate_fn = staticmethod(collate_detection)

    def target_of(self, target: dict):
        return {"boxes": target["boxes"], "labels": target["labels"]}


def _core(model: nn.Module) -> DetectionCore:
    if not isinstance(model, DetectionCore):
        raise HalpError(f"{type(model).__name__} is not a detector halp-trt knows: detection "
                        "takes torchvision's detectors ssd*, retinanet*, fcos*, fasterrcnn*")
    return model


def detector_num_classes(model: nn.Module) -> int:
    """Classes the detector's head scores, background included."""
    core = _core(model)
    if core.two_stage:
        return int(core.roi_heads.box_predictor.cls_score.out_features)
    head = core.head
    cls_head = getattr(head, "classification_head", head)
    # RetinaNet and FCOS name it num_classes; SSD's scoring heads, num_columns
    return int(getattr(cls_head, "num_classes", None) or getattr(cls_head, "num_columns", 0))


def detection_loss(model: nn.Module, images: torch.Tensor, targets: list) -> torch.Tensor:
    """The sum of the detector's training losses (classification and box regression, as its
    builder defines them)."""
    losses = _core(model).detect(images, targets)
    return sum(losses.values())


def mean_average_precision(model: nn.Module, loader, num_classes: int) -> float:
    """COCO mAP (IoU 0.50:0.95) of the detector's post-processed detections, torchmetrics'
    ``MeanAveragePrecision``."""
    try:
        from torchmetrics.detection import MeanAveragePrecision

        metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
    except (ImportError, ModuleNotFoundError) as exc:
        raise HalpError(f"detection needs torchmetrics and pycocotools ({exc}): pip install "
                        "'halp-trt[dense]'") from None
    core = _core(model)
    core.eval()
    with torch.no_grad():
        for images, targets in loader:
            metric.update(core.detect(images), targets)
    return float(metric.compute()["map"])


def outside_graph_ms(model: nn.Module, images: torch.Tensor, rounds: int = 15) -> dict:
    """Time of the detector's steps around the core, in PyTorch on this CPU: ``preprocess_ms``
    (normalise, resize, batch) and ``postprocess_ms`` (anchors, box decoding, score filtering,
    NMS, rescaling; for Faster R-CNN the proposals, ROI pooling and ROI heads too), the minimum
    over ``rounds`` calls on ``images``. The core is timed on
    the runtime; these steps run beside it in a user's deployment."""
    core = _core(model)
    stamps: dict[str, float] = {}
    hooks = [core.backbone.register_forward_pre_hook(
                 lambda *_: stamps.__setitem__("core_start", time.perf_counter())),
             core.head.register_forward_hook(
                 lambda *_: stamps.__setitem__("core_end", time.perf_counter()))]
    pre, post = [], []
    core.eval()
    try:
        with torch.no_grad():
            for _ in range(rounds):
                t0 = time.perf_counter()
                core.detect(images)
                t1 = time.perf_counter()
                pre.append(stamps["core_start"] - t0)
                post.append(t1 - stamps["core_end"])
    finally:
        for h in hooks:
            h.remove()
    pre_ms, post_ms = 1e3 * min(pre), 1e3 * min(post)
    return {"preprocess_ms": pre_ms, "postprocess_ms": post_ms, "total_ms": pre_ms + post_ms,
            "rounds": rounds, "images": int(images.shape[0]),
            "roi_heads_included": bool(core.two_stage)}
