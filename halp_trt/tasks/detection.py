"""Detection: the part of a detector that halp-trt prunes, exports and times.

torchvision's one-stage detectors (SSD, SSDlite, RetinaNet, FCOS) are a backbone (with its
FPN), a head shared across pyramid levels, and post-processing (anchors, box decoding, NMS).
``DetectionCore`` is the first two, returning the head's raw outputs as a tuple in name order:
its channel groups couple the head's convs across every level they run on, and the
post-processing — no channels to prune — stays outside the pruned graph. Training with the
detectors' losses is not wired into the pipeline yet."""
from __future__ import annotations

import torch
import torch.nn as nn

from halp_trt.errors import HalpError


class DetectionCore(nn.Module):
    """Backbone + head of a one-stage torchvision detector; ``forward`` gives the head's
    outputs (``output_names`` order). Shares its modules with the detector: pruning the core
    prunes the detector."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        missing = [a for a in ("backbone", "head") if not isinstance(getattr(detector, a, None),
                                                                       nn.Module)]
        if missing or hasattr(detector, "roi_heads"):
            raise HalpError(f"{type(detector).__name__} is not a one-stage detector with a "
                            "backbone and a shared head (SSD, SSDlite, RetinaNet, FCOS); "
                            "two-stage detectors (Faster/Mask R-CNN) are not handled yet")
        self.backbone, self.head = detector.backbone, detector.head
        self.output_names: tuple[str, ...] = ()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(x)
        features = list(features.values()) if isinstance(features, dict) else [features]
        out = self.head(features)
        if isinstance(out, torch.Tensor):
            return (out,)
        self.output_names = tuple(sorted(out))
        return tuple(out[k] for k in self.output_names)
