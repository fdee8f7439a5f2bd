import pytest
import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

from halp_trt.errors import HalpError
from halp_trt.graph.groups import find_channel_groups, output_layers
from halp_trt.models import create_model
from halp_trt.tasks import resolve_task
from halp_trt.tasks.segmentation import ShapesSegmentation, mean_iou


def test_a_torchvision_segmentation_model_returns_its_logits_and_keeps_its_state_dict():
    model = create_model("lraspp_mobilenet_v3_large", 4).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 4, 64, 64)
    plain = torchvision.models.get_model("lraspp_mobilenet_v3_large", weights=None,
                                         weights_backbone=None, num_classes=4)
    assert model.state_dict().keys() == plain.state_dict().keys()  # users' weights load
    model.load_state_dict(plain.state_dict())


def test_the_class_convs_behind_an_upsampled_sum_are_outputs_and_never_grouped():
    model = create_model("lraspp_mobilenet_v3_large", 4).eval()
    x = torch.randn(1, 3, 64, 64)
    assert output_layers(model, x) == {"classifier.low_classifier",
                                       "classifier.high_classifier"}
    groups, _ = find_channel_groups(model, x)
    outs = {m for g in groups for m in g.modules("out")}
    assert not outs & {"classifier.low_classifier", "classifier.high_classifier"}


def test_channel_groups_are_the_same_from_one_trace_to_the_next():
    """With the class conv behind an upsampling left prunable, torch-pruning's groups changed
    from one trace to another (a result made on one trace did not apply to the next)."""
    model = create_model("fcn_resnet50", 4).eval()
    x = torch.randn(1, 3, 32, 32)
    first = sorted((g.root, g.size) for g in find_channel_groups(model, x)[0])
    for _ in range(2):
        assert sorted((g.root, g.size) for g in find_channel_groups(model, x)[0]) == first


def test_mean_iou_counts_each_class():
    torch.manual_seed(0)
    masks = torch.randint(0, 4, (6, 8, 8))
    masks[0, 0, :4] = torch.arange(4)  # every class present
    loader = DataLoader(TensorDataset(masks[:, None].float(), masks), batch_size=4)

    class Perfect(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0].long(), 4).permute(0, 3, 1, 2).float()

    class Background(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 4, *x.shape[2:])
            out[:, 0] = 1
            return out

    assert mean_iou(Perfect(), loader, 4) == pytest.approx(1.0)
    background_iou = float((masks == 0).float().mean())  # the rest: IoU 0
    assert mean_iou(Background(), loader, 4) == pytest.approx(background_iou / 4)


def test_shapes_segmentation_pairs_are_images_and_class_masks():
    ds = ShapesSegmentation(4, 32, seed=0)
    x, mask = ds[1]
    assert x.shape == (3, 32, 32) and mask.shape == (32, 32) and mask.dtype == torch.int64
    assert int(mask.max()) < ds.num_classes


def test_the_task_follows_the_model():
    assert resolve_task("auto", "deeplabv3_mobilenet_v3_large").name == "segmentation"
    assert resolve_task("auto", "resnet18").metric == "top-1 accuracy"
    assert resolve_task("auto", "ssdlite320_mobilenet_v3_large").metric == "mAP"
    with pytest.raises(HalpError, match="unknown task"):
        resolve_task("keypoints", "resnet18")
