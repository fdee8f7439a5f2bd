"""A tiny detector (strided backbone, FPN, one head shared across its levels) through
table -> prune -> channel removal -> ONNX, every output checked."""
from collections import OrderedDict

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from torchvision.ops import FeaturePyramidNetwork

from fakes import prune_one_step
from halp_trt.errors import HalpError
from halp_trt.runtime.export import export_onnx
from halp_trt.tasks.detection import DetectionCore


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.c3 = nn.Sequential(nn.Conv2d(32, 48, 3, 2, 1), nn.BatchNorm2d(48), nn.ReLU())
        self.fpn = FeaturePyramidNetwork([32, 48], 24)

    def forward(self, x):
        p2 = self.c2(self.c1(x))
        return self.fpn(OrderedDict(p2=p2, p3=self.c3(p2)))


class Head(nn.Module):
    """One tower shared across pyramid levels, class and box outputs flattened per anchor and
    concatenated over levels (as torchvision's RetinaNet head does)."""
    def __init__(self, classes=3, anchors=2):
        super().__init__()
        self.tower = nn.Sequential(nn.Conv2d(24, 32, 3, padding=1), nn.ReLU())
        self.cls = nn.Conv2d(32, anchors * classes, 3, padding=1)
        self.box = nn.Conv2d(32, anchors * 4, 3, padding=1)
        self.classes = classes

    def forward(self, features):
        cls, box = [], []
        for f in features:
            t = self.tower(f)
            n = f.shape[0]
            cls.append(self.cls(t).permute(0, 2, 3, 1).reshape(n, -1, self.classes))
            box.append(self.box(t).permute(0, 2, 3, 1).reshape(n, -1, 4))
        return {"cls_logits": torch.cat(cls, 1), "bbox_regression": torch.cat(box, 1)}


class TinyDetector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone, self.head = Backbone(), Head()


def test_a_detector_core_prunes_its_shared_head_and_every_output_survives():
    torch.manual_seed(0)
    core = DetectionCore(TinyDetector()).eval()
    x = torch.randn(2, 3, 32, 32)
    pruner, record = prune_one_step(core, x[:1])
    # the tower runs on every level: one group, feeding both output convs
    tower = next(g for g in pruner.prunable if g.root == "head.tower.0")
    assert {"head.cls", "head.box"} <= set(tower.modules("in"))
    assert any(record.kept[g.root] < g.size for g in pruner.prunable), "nothing was pruned"
    assert not {"head.cls", "head.box"} & {m for g in pruner.groups for m in g.modules("out")}
    with torch.no_grad():
        masked = core(x)
    pruned = pruner.finalize().eval()
    with torch.no_grad():
        outs = pruned(x)
    assert core.output_names == ("bbox_regression", "cls_logits")
    for a, b in zip(masked, outs):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    session = ort.InferenceSession(export_onnx(pruned, x[:1]),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x[:1].numpy()})
    assert len(got) == 2
    for g, o in zip(got, outs):
        np.testing.assert_allclose(g, o[:1].numpy(), rtol=1e-4, atol=1e-5)


def test_a_two_stage_detector_is_refused_clearly():
    class TwoStage(TinyDetector):
        def __init__(self):
            super().__init__()
            self.roi_heads = nn.Identity()

    with pytest.raises(HalpError, match="two-stage detectors"):
        DetectionCore(TwoStage())
