"""A tiny detector (strided backbone, FPN, one head shared across its levels) through
table -> prune -> channel removal -> ONNX, every output checked."""
import copy
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


def _check_every_output(masked, outs, pruned, x, n_outputs):
    """The pruned core computes what the masked one did, and its ONNX export gives the same
    ``n_outputs`` outputs."""
    for a, b in zip(masked, outs):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    session = ort.InferenceSession(export_onnx(pruned, x[:1]),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x[:1].numpy()})
    assert len(got) == n_outputs
    for g, o in zip(got, outs):
        np.testing.assert_allclose(g, o[:1].numpy(), rtol=1e-4, atol=1e-5)


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
    _check_every_output(masked, outs, pruned, x, 2)


def test_a_two_stage_core_prunes_its_box_head_and_keeps_the_channels_roi_pooling_reads():
    """Faster R-CNN: the core is the backbone, the RPN head and the ROI box head run on a fixed
    grid of the RPN's test-time proposal count; the pyramid's features are outputs beside the
    RPN's and the box head's, so pruning never narrows what ROI pooling reads, the box head's
    hidden widths prune, and the pruned detector still trains and detects."""
    from tiny_models import tiny_fasterrcnn

    from halp_trt.graph.groups import find_channel_groups
    from halp_trt.graph.layers import list_layers
    from halp_trt.tasks import TASKS
    from halp_trt.tasks.detection import ShapesDetection

    torch.manual_seed(0)
    core = DetectionCore(tiny_fasterrcnn(4)).eval()
    assert core.two_stage and core.head is core.detector.rpn.head
    assert any(k.startswith("roi_heads.") for k in core.state_dict())  # trained and saved
    x = torch.rand(2, 3, 64, 64)
    groups, _ = find_channel_groups(core, x[:1])
    specs = {s.name: s for s in list_layers(core, x[:1], groups)}
    # one row per proposal: the box head is timed at the RPN's test-time count
    assert core.rois_per_image() == 20
    assert specs["roi_heads.box_head.fc6"].signature.tokens == 20
    assert specs["roi_heads.box_predictor.cls_score"].signature.tokens == 20
    pruner, record = prune_one_step(core, x[:1])
    assert any(record.kept[g.root] < g.size for g in pruner.prunable), "nothing was pruned"
    pruned_outs = {m for g in pruner.prunable for m in g.modules("out")}
    assert not {m for m in pruned_outs if m.startswith("backbone.fpn.layer_blocks")}
    assert "head.conv.0.0" in pruned_outs  # the RPN's own conv is the core's to prune
    assert {"roi_heads.box_head.fc6", "roi_heads.box_head.fc7"} <= pruned_outs
    assert not {"roi_heads.box_predictor.cls_score",
                "roi_heads.box_predictor.bbox_pred"} & pruned_outs  # classes and boxes kept
    with torch.no_grad():
        masked = core(x)
    pruned = pruner.finalize().eval()
    with torch.no_grad():
        outs = pruned(x)
    assert pruned.output_names == ("features_p2", "features_p3", "objectness_p2",
                                   "objectness_p3", "rpn_deltas_p2", "rpn_deltas_p3",
                                   "class_logits", "box_regression")
    assert outs[0].shape[1] == outs[1].shape[1] == 48
    assert outs[6].shape == (2, 20, 4) and outs[7].shape == (2, 20, 16)
    _check_every_output(masked, outs, pruned, x, 8)
    data = ShapesDetection(4, 64, seed=0)
    images = torch.stack([data[i][0] for i in range(2)])
    targets = [data[i][1] for i in range(2)]
    assert TASKS["detection"].num_classes(pruned, x[:1]) == 4
    pruned.train()
    loss = TASKS["detection"].loss(pruned, images, targets)
    loss.backward()
    assert torch.isfinite(loss)
    assert pruned.roi_heads.box_head.fc6.weight.grad is not None  # the ROI heads train too
    pruned.eval()
    with torch.no_grad():
        found = pruned.detect(images)
    assert len(found) == 2 and set(found[0]) == {"boxes", "scores", "labels"}


def test_mask_and_keypoint_rcnn_are_refused_by_name():
    from halp_trt.models import create_model

    for name in ("maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn"):
        with pytest.raises(HalpError, match="Mask and Keypoint R-CNN are not"):
            create_model(name, 4, 64)


def _trained_step(core, images, targets):
    from halp_trt.tasks import TASKS

    core.train()
    loss = TASKS["detection"].loss(core, images, targets)
    loss.backward()
    return loss


@pytest.mark.parametrize("name", ["ssdlite320_mobilenet_v3_large", "fcos_resnet50_fpn"])
def test_a_torchvision_detector_trains_on_its_losses_and_scores_map(name):
    """The core the pipeline prunes is the detector's own backbone and head: a backward of the
    detector's loss dict gives their weights gradients (Taylor importance needs them), and
    evaluation runs the post-processing and scores COCO mAP."""
    from halp_trt.data import make_loader
    from halp_trt.models import create_model
    from halp_trt.tasks import TASKS, resolve_task
    from halp_trt.tasks.detection import ShapesDetection

    torch.manual_seed(0)
    core = create_model(name, 4, 64)
    data = ShapesDetection(4, 64, seed=0)
    images, targets = next(iter(make_loader(data, 2, False)))
    assert images.shape == (2, 3, 64, 64) and isinstance(targets, list)
    assert resolve_task("auto", name).name == "detection"
    assert TASKS["detection"].num_classes(core, images[:1]) == 4
    loss = _trained_step(core, images, targets)
    assert torch.isfinite(loss) and loss > 0
    grads = [p.grad for p in core.backbone.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    core.eval()
    with torch.no_grad():
        outs = core(images[:1])
    assert len(outs) == len(core.output_names) >= 2  # raw head outputs, no post-processing
    score = TASKS["detection"].evaluate(core, make_loader(data, 2, False), 4)
    assert 0.0 <= score <= 1.0


def test_map_is_one_for_perfect_boxes_and_zero_for_wrong_ones():
    from halp_trt.tasks.detection import mean_average_precision

    data = [(torch.zeros(3, 32, 32), {
        "boxes": torch.tensor([[2.0, 3.0, 20.0, 25.0]]), "labels": torch.tensor([2])})]

    class Answers(DetectionCore):
        def __init__(self, shift):
            super().__init__(TinyDetector())
            self.shift = shift

        def detect(self, images, targets=None):
            return [{"boxes": t["boxes"] + self.shift, "scores": torch.ones(1),
                     "labels": t["labels"]} for _, t in data]

    loader = [(torch.stack([x for x, _ in data]), [t for _, t in data])]
    assert mean_average_precision(Answers(0.0), loader, 4) == pytest.approx(1.0)
    assert mean_average_precision(Answers(30.0), loader, 4) == pytest.approx(0.0)


def test_post_processing_is_timed_outside_the_core():
    from halp_trt.models import create_model
    from halp_trt.tasks.detection import outside_graph_ms

    core = create_model("ssdlite320_mobilenet_v3_large", 4, 64)
    t = outside_graph_ms(core, torch.rand(1, 3, 64, 64), rounds=2)
    assert t["postprocess_ms"] > 0 and t["preprocess_ms"] > 0
    assert t["total_ms"] == pytest.approx(t["preprocess_ms"] + t["postprocess_ms"])
    assert not t["proposals_included"]


def test_a_two_stage_detectors_box_head_is_left_out_of_its_post_processing_time():
    """Faster R-CNN's box head is in the core's graph (timed there): the time it takes inside
    ``detect`` is not counted again as post-processing. A box head that sleeps 60 ms per call
    leaves the post-processing under that."""
    import time as _time

    from tiny_models import tiny_fasterrcnn

    from halp_trt.tasks.detection import outside_graph_ms

    class Sleep(nn.Module):
        def forward(self, x):
            _time.sleep(0.06)
            return x

    torch.manual_seed(0)
    core = DetectionCore(tiny_fasterrcnn(4))
    core.roi_heads.box_head = nn.Sequential(Sleep(), core.roi_heads.box_head)
    t = outside_graph_ms(core, torch.rand(2, 3, 64, 64), rounds=2)
    assert t["proposals_included"]
    assert 0 < t["postprocess_ms"] < 50


def test_probe_boxes_are_deterministic_inside_the_image_and_of_three_sizes():
    from halp_trt.tasks.detection import probe_boxes

    boxes = probe_boxes(150, 320, 240)
    assert boxes.shape == (150, 4) and torch.equal(boxes, probe_boxes(150, 320, 240))
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 240).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 320).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    sides = {round(float(b[2] - b[0])) for b in boxes}  # 1/8, 1/4, 1/2 of 240 unclipped
    assert {30, 60, 120} <= sides


def test_a_deepcopy_of_the_core_shares_its_modules_with_its_own_detector():
    from halp_trt.models import create_model

    core = create_model("ssdlite320_mobilenet_v3_large", 4, 64)
    twin = copy.deepcopy(core)
    assert twin.detector.backbone is twin.backbone and twin.detector.head is twin.head
    assert twin.backbone is not core.backbone
    assert set(core.state_dict()) == {k for k in core.state_dict()
                                      if k.startswith(("backbone.", "head."))}


@pytest.mark.parametrize("model,outside", [
    ("tiny_retinanet", "post-processing (anchors, decoding, NMS)"),
    ("tiny_fasterrcnn", "post-processing (proposal selection, decoding, NMS; the ROI box head "
                        "is in the graph)")])
def test_the_pipeline_prunes_a_detector_on_shapes_and_reports_map_and_post_processing(
        tmp_path, monkeypatch, model, outside):
    """prune-and-deploy --task detection: trained on the detector's losses, pruned, exported,
    every core output checked against PyTorch, mAP before and after, and the time of the steps
    outside the graph in the report (a two-stage detector's proposal selection among them)."""
    import json

    from halp_trt.pipeline import prune_and_deploy
    from halp_trt.pipeline.config import DeployConfig

    monkeypatch.setenv("HALP_TRT_CACHE", str(tmp_path / "cache"))  # its own table
    cfg = DeployConfig(out=str(tmp_path / "out"), model=f"tiny_models:{model}",
                       task="detection", data="shapes:32", input_size=64, pretrain_epochs=1,
                       train_batch_size=8, epochs=1, steps=2, interval=2, target="0.75",
                       rounds=15, allow_untrained=True)
    report = prune_and_deploy(cfg)
    assert report["accuracy"]["metric"] == "mAP"
    assert 0.0 <= report["accuracy"]["pruned"] <= 1.0
    og = report["outside_graph"]
    assert og["pruned"]["postprocess_ms"] > 0 and og["original"]["preprocess_ms"] > 0
    assert report["numeric_check"]["n_inputs"] >= 1
    assert any(w["kept"] < w["original"] for w in report["widths"].values())
    md = (tmp_path / "out" / "report.md").read_text()
    assert outside in md
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["outside_graph"] == og


def test_without_data_a_detector_trains_on_shapes_and_digits_is_refused(tmp_path, monkeypatch):
    """--data left out: the task's default data (shapes for detection), named as such in the
    run (and so in its report); digits given explicitly is classification data, refused."""
    from halp_trt.errors import ConfigError
    from halp_trt.pipeline.config import DeployConfig
    from halp_trt.pipeline.run import DeployRun

    monkeypatch.setenv("HALP_TRT_CACHE", str(tmp_path / "cache"))
    kw = dict(model="tiny_models:tiny_retinanet", task="detection", input_size=64,
              progress=False)
    run = DeployRun(DeployConfig(out=str(tmp_path / "default"), **kw))
    run.run(until="load")
    assert run.data_spec == "shapes" and run.data.name.startswith("shapes")
    with pytest.raises(ConfigError, match="'digits' is not detection data"):
        DeployRun(DeployConfig(out=str(tmp_path / "digits"), data="digits", **kw)).run(
            until="load")


def test_a_users_detection_loop_prunes_the_detector_through_its_core():
    """The README's loop: HALP on ``DetectionCore(detector)``, the user's optimizer and
    torchvision-style loss dicts; after ``finalize`` the user's detector itself is smaller and
    still detects."""
    import halp_trt
    from fakes import StaircaseLatencyModel, randomise_bn
    from halp_trt.tasks.detection import ShapesDetection
    from tiny_models import tiny_retinanet

    torch.manual_seed(0)
    detector = tiny_retinanet(4)
    randomise_bn(detector)
    core = halp_trt.DetectionCore(detector)
    data = ShapesDetection(8, 64, seed=0)
    batches = [(torch.stack([data[i][0] for i in range(j, j + 2)]),
                [data[i][1] for i in range(j, j + 2)]) for j in (0, 2, 4, 6)]
    pruner = halp_trt.HALPPruner(core, torch.randn(1, 3, 64, 64), StaircaseLatencyModel(step=4),
                                 halp_trt.HALPConfig(target=0.6, steps=2, interval=2))
    optimizer = torch.optim.SGD(detector.parameters(), lr=1e-3, momentum=0.9)
    pruner.attach_optimizer(optimizer)
    detector.train()
    for images, targets in batches:
        loss = sum(detector(list(images), targets).values())
        optimizer.zero_grad()
        loss.backward()
        pruner.accumulate()
        optimizer.step()
        pruner.step()
    assert pruner.done
    before = sum(p.numel() for p in detector.parameters())
    pruner.finalize()
    assert sum(p.numel() for p in detector.parameters()) < before
    detector.eval()
    with torch.no_grad():
        found = detector(list(batches[0][0]))
    assert len(found) == 2 and set(found[0]) == {"boxes", "scores", "labels"}


def test_a_detection_run_without_data_trains_on_the_built_in_shapes(tmp_path):
    from halp_trt.pipeline.config import DeployConfig
    from halp_trt.pipeline.run import DeployRun

    run = DeployRun(DeployConfig(out=str(tmp_path / "out"), model="tiny_models:tiny_retinanet",
                                 task="detection", input_size=64))
    run.run(until="load")
    assert run.data.name.startswith("shapes") and run.data.num_classes == 4
    images, targets = next(iter(run.train_loader))
    assert images.shape[1:] == (3, 64, 64) and set(targets[0]) == {"boxes", "labels"}
