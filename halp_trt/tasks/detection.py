"""Detection: the part of a detector that halp-trt prunes, exports and times, its training with
the detector's own losses, mAP, and the post-processing time.

torchvision's one-stage detectors (SSD, SSDlite, RetinaNet, FCOS) are a transform (normalise,
resize, batch), a backbone (with its FPN), a head shared across pyramid levels, and
post-processing (anchors, box decoding, NMS). ``DetectionCore`` is the backbone and the head,
returning the head's raw outputs as a tuple in name order: its channel groups couple the head's
convs across every level they run on, and the post-processing — no channels to prune — stays
outside the pruned graph. Faster R-CNN adds its region proposal network and its ROI box
head: the core is the backbone, the RPN head, and the box head (ROI pooling, the two-layer
MLP, the class and box predictor) run on a fixed grid of as many boxes per image as the RPN
proposes at test time — the work the deployed detector does per image, so it is timed and
its MLP widths pruned. The pyramid's features are outputs too (their channels, which ROI
pooling reads, are kept); proposal selection from the RPN's outputs, box decoding and NMS run
outside the graph with the post-processing (timed and reported, as they are part of a user's
speedup). In training and detection the box head runs on the RPN's real proposals, as
torchvision's detector runs it.

The core keeps the whole detector beside it (not as a submodule: the traced and exported
network is the core alone; a two-stage core holds the ROI heads as a submodule so that they
train and are saved), so training calls the detector as torchvision's
detection references do — ``detector(images, targets)`` returns a loss dict in train mode —
and the Taylor importance comes from those losses."""
from __future__ import annotations

import math
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
            # a submodule, so the pipeline trains and saves it; ``forward`` runs its box head
            # on a fixed grid of boxes (``probe_boxes``), so it is traced, pruned and timed
            self.roi_heads = roi
            # the proposals the RPN keeps per image at test time, through its public accessor
            # (which answers for the mode it is in): the rows the box head is timed on
            rpn, was_training = detector.rpn, detector.rpn.training
            rpn.train(False)
            self._rois_per_image = int(rpn.post_nms_top_n())
            rpn.train(was_training)
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
            class_logits, box_regression = self._box_head(dict(zip(names, features)), x)
            self.output_names = tuple([f"features_{n}" for n in names] +
                                      [f"objectness_{n}" for n in names] +
                                      [f"rpn_deltas_{n}" for n in names] +
                                      ["class_logits", "box_regression"])
            return (*features, *objectness, *deltas, class_logits, box_regression)
        if isinstance(out, torch.Tensor):
            return (out,)
        self.output_names = tuple(sorted(out))
        return tuple(out[k] for k in self.output_names)

    def rois_per_image(self) -> int:
        """Proposals the RPN keeps per image at test time: the rows the box head runs on."""
        return self._rois_per_image

    def _box_head(self, features: dict, x: torch.Tensor):
        """The ROI heads' pooling, MLP and predictor on ``probe_boxes``: their cost per image
        is set by the box count, not by where the boxes are."""
        n, h, w = int(x.shape[0]), int(x.shape[-2]), int(x.shape[-1])
        rois = self.rois_per_image()
        boxes = probe_boxes(rois, h, w).to(device=x.device, dtype=x.dtype)
        roi = self.roi_heads
        pooled = roi.box_roi_pool(features, [boxes] * n, [(h, w)] * n)
        class_logits, box_regression = roi.box_predictor(roi.box_head(pooled))
        # batch first, as every other output: (images, boxes, classes or 4 per class)
        return class_logits.reshape(n, rois, -1), box_regression.reshape(n, rois, -1)

    def detect(self, images, targets=None):
        """The whole detector: a loss dict in train mode (``targets`` given), else per image a
        dict of ``boxes``, ``scores``, ``labels``."""
        self.detector.train(self.training)
        return self.detector(list(images), targets)


def probe_boxes(count: int, height: int, width: int) -> torch.Tensor:
    """``count`` boxes (x1, y1, x2, y2) inside a ``height`` × ``width`` image, deterministic:
    centres on a grid, sides cycling through 1/8, 1/4 and 1/2 of the shorter edge (so that
    a multi-scale ROI pooling draws on several pyramid levels)."""
    side = max(1, math.ceil(math.sqrt(count)))
    short = min(height, width)
    boxes = []
    for i in range(count):
        cx = (i % side + 0.5) * width / side
        cy = (i // side % side + 0.5) * height / side
        half = short * (0.125, 0.25, 0.5)[i % 3] / 2
        boxes.append((max(0.0, cx - half), max(0.0, cy - half),
                      min(float(width), cx + half), min(float(height), cy + half)))
    return torch.tensor(boxes, dtype=torch.float32)


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
    NMS, rescaling; for Faster R-CNN the proposal selection too — its ROI pooling and box head
    are in the core's graph and timed there, so their time here is left out), the minimum
    over ``rounds`` calls on ``images``. The core is timed on the runtime; these steps run
    beside it in a user's deployment."""
    core = _core(model)
    stamps: dict[str, float] = {}

    def stamp(key):
        return lambda *_: stamps.__setitem__(key, time.perf_counter())

    hooks = [core.backbone.register_forward_pre_hook(stamp("core_start")),
             core.head.register_forward_hook(stamp("core_end"))]
    if core.two_stage:
        hooks += [core.roi_heads.box_roi_pool.register_forward_pre_hook(stamp("box_start")),
                  core.roi_heads.box_predictor.register_forward_hook(stamp("box_end"))]
    pre, post = [], []
    core.eval()
    try:
        with torch.no_grad():
            for _ in range(rounds):
                t0 = time.perf_counter()
                core.detect(images)
                t1 = time.perf_counter()
                pre.append(stamps["core_start"] - t0)
                in_graph = stamps["box_end"] - stamps["box_start"] if core.two_stage else 0.0
                post.append(t1 - stamps["core_end"] - in_graph)
    finally:
        for h in hooks:
            h.remove()
    pre_ms, post_ms = 1e3 * min(pre), 1e3 * min(post)
    return {"preprocess_ms": pre_ms, "postprocess_ms": post_ms, "total_ms": pre_ms + post_ms,
            "rounds": rounds, "images": int(images.shape[0]),
            "proposals_included": bool(core.two_stage)}
