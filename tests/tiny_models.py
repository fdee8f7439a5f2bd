"""Small real models for tests: fast to trace, export and time."""
import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class TinyResNet(nn.Module):
    """stem -> residual block -> depthwise + pointwise -> classifier."""

    def __init__(self, num_classes=10, width=16):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.block = Block(width)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)
        self.dw_bn = nn.BatchNorm2d(width)
        self.pw = nn.Conv2d(width, 2 * width, 1, stride=2, bias=False)
        self.pw_bn = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.block(x)
        x = torch.relu(self.dw_bn(self.dw(x)))
        x = torch.relu(self.pw_bn(self.pw(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def tiny_resnet(num_classes=10):
    return TinyResNet(num_classes)


# ---- models for module:factory in the CLI error tests ----------------------------------

class Bessel(nn.Module):
    def forward(self, x):
        return torch.special.bessel_j0(x)  # no ONNX symbolic in opset 17


class UnexportableNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = Bessel()
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


class GrayNet(nn.Module):
    """Expects 1-channel images."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def unexportable_net(num_classes=10):
    return UnexportableNet(num_classes)


def gray_net(num_classes=10):
    return GrayNet(num_classes)


def wide_resnet(num_classes=10):
    return TinyResNet(num_classes, width=24)


def ten_class_net():  # ignores the data's class count
    return TinyResNet(10)


def failing_factory(num_classes=10):
    raise RuntimeError("out of memory while building")


def not_a_module(num_classes=10):
    return "resnet"


# ---- one small model per architecture family (pruned end to end in tests/test_families.py) ----

class GroupedBlock(nn.Module):
    """ResNeXt/RegNet-style bottleneck: 1x1 -> grouped 3x3 -> 1x1, with a residual add and
    (RegNetY) a squeeze-excitation on the grouped conv's output."""

    def __init__(self, c, width, groups, se=False):
        super().__init__()
        self.conv1 = nn.Conv2d(c, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(width, 4, 1), nn.ReLU(),
                                nn.Conv2d(4, width, 1), nn.Sigmoid()) if se else None
        self.conv3 = nn.Conv2d(width, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        if self.se is not None:
            y = y * self.se(y)
        return torch.relu(x + self.bn3(self.conv3(y)))


class GroupedNet(nn.Module):
    def __init__(self, num_classes=10, groups=4, se=False, c=24, widths=(32, 48)):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.block1 = GroupedBlock(c, widths[0], groups, se)
        self.block2 = GroupedBlock(c, widths[1], groups * 2, se)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.block2(self.block1(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnext_like(num_classes=10, c=24, widths=(32, 48)):
    return GroupedNet(num_classes, groups=4, c=c, widths=widths)


def regnety_like(num_classes=10, c=24, widths=(32, 48)):
    return GroupedNet(num_classes, groups=2, se=True, c=c, widths=widths)


# Wide enough that every prunable group spans several latency steps (16 channels on AVX-512):
# what the family tests prune with real tables.
def resnext_wide(num_classes=10):
    return resnext_like(num_classes, c=64, widths=(128, 192))


def regnety_wide(num_classes=10):
    return regnety_like(num_classes, c=64, widths=(128, 192))


class AuxOutputs(tuple):
    """Like torchvision's GoogLeNetOutputs: main logits first."""


class AuxNet(nn.Module):
    """GoogLeNet/Inception style: an inception block (concat of branches) and an auxiliary
    classifier that only exists in training."""

    def __init__(self, num_classes=10, c=64):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.b1 = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(c, 2 * c, 3, padding=1, bias=False),
                                nn.BatchNorm2d(2 * c), nn.ReLU())
        self.aux_logits = True
        self.aux1 = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(3 * c, num_classes))
        self.head = nn.Conv2d(3 * c, 4 * c, 1, bias=False)
        self.fc = nn.Linear(4 * c, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.cat([self.b1(x), self.b2(x)], 1)
        aux = self.aux1(x) if self.training and self.aux_logits else None
        x = torch.relu(self.head(x))
        out = self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
        return AuxOutputs((out, aux)) if aux is not None else out


class ConcatNet(nn.Module):
    """A concat of a conv and a cheap depthwise branch (the case whose two-sided costs once
    produced a negative width), then a consumer of the concat."""

    def __init__(self, num_classes=10, c=64):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.conv = nn.Conv2d(c, 2 * c, 3, padding=1, bias=False)
        self.conv_bn = nn.BatchNorm2d(2 * c)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.dw_bn = nn.BatchNorm2d(c)
        self.mix = nn.Conv2d(3 * c, 2 * c, 1, bias=False)
        self.mix_bn = nn.BatchNorm2d(2 * c)
        self.fc = nn.Linear(2 * c, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        y = torch.cat([torch.relu(self.conv_bn(self.conv(x))), self.dw_bn(self.dw(x))], 1)
        y = torch.relu(self.mix_bn(self.mix(y)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class LayerNormNet(nn.Module):
    """ConvNeXt style: depthwise conv, LayerNorm over channels, pointwise MLP."""

    def __init__(self, num_classes=10, c=64):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1 = nn.Linear(c, 4 * c)
        self.pw2 = nn.Linear(4 * c, c)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.pw2(nn.functional.gelu(self.pw1(y))).permute(0, 3, 1, 2)
        x = x + y
        return self.fc(x.mean((2, 3)))


def aux_net(num_classes=10):
    return AuxNet(num_classes)


def concat_net(num_classes=10):
    return ConcatNet(num_classes)


def layernorm_net(num_classes=10):
    return LayerNormNet(num_classes)


def shufflenet_tiny(num_classes=10):
    import torchvision

    return torchvision.models.ShuffleNetV2([1, 2, 1], [24, 64, 128, 256, 512],
                                           num_classes=num_classes)


def vit_tiny(num_classes=10):
    """torchvision's VisionTransformer (nn.MultiheadAttention inside), small."""
    import torchvision

    net = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                               num_heads=2, hidden_dim=64, mlp_dim=512,
                                               num_classes=num_classes)
    nn.init.normal_(net.heads.head.weight, std=0.02)  # zero-initialised: outputs would be 0
    return net


def vit_heads(num_classes=10):
    """torchvision's VisionTransformer with 4 heads per block: image 32, patch 8, 2 layers,
    hidden 64."""
    import torchvision

    net = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                               num_heads=4, hidden_dim=64, mlp_dim=128,
                                               num_classes=num_classes)
    nn.init.normal_(net.heads.head.weight, std=0.1)  # zero-initialised: outputs would be 0
    return net


def timm_vit_heads(num_classes=10):
    """timm's VisionTransformer (its ``Attention`` calls qkv and proj as modules) with 4 heads
    of 8 channels and normalised q and k: image 32, patch 8 (16 tokens and a class token)."""
    from timm.models.vision_transformer import VisionTransformer

    net = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                            qk_norm=True, num_classes=num_classes)
    with torch.no_grad():  # non-trivial norms: an error in the q/k normalisation shows
        for m in net.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    nn.init.normal_(net.head.weight, std=0.1)
    return net


def swin_tiny(num_classes=10, v2=False):
    """torchvision's SwinTransformer, small: 2 stages of 2 blocks (2 and 4 heads of 16
    channels), 4×4 windows — at 32×32 the first stage has 2×2 windows and shifts them."""
    import torchvision
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

    extra = dict(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2) if v2 else {}
    net = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2],
                                             num_heads=[2, 4], window_size=[4, 4],
                                             num_classes=num_classes, **extra)
    with torch.no_grad():  # non-trivial LayerNorms and head, so a wrong slice shows
        for m in net.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        net.head.weight.normal_(0, 0.1)
    return net


def swin_v2_tiny(num_classes=10):
    return swin_tiny(num_classes, v2=True)


class VersionedTinyResNet(TinyResNet):
    """Refuses state dicts without their version metadata, as torchvision's MNASNet does."""

    _version = 2

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        if prefix == "" and local_metadata.get("version") is None:
            raise ValueError("version should be set to 1 or 2 instead of None")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


def versioned_tiny_resnet(num_classes=10):
    return VersionedTinyResNet(num_classes)


MODEL = "tiny_models:tiny_resnet"


def toy_config(out, table, **kw):
    """A prune-and-deploy config for tiny_resnet at 16x16 on digits: a few batches per epoch."""
    from halp_trt.pipeline import DeployConfig

    base = dict(out=str(out), model=MODEL, input_size=16, table=table, target="0.85", steps=2,
                interval=2, epochs=1, pretrain_epochs=1, rounds=5, max_batches=4,
                progress=False, train_batch_size=32, allow_untrained=True)
    base.update(kw)
    return DeployConfig(**base)


class Scaled(nn.Module):
    """A linear classifier on 3x8x8 inputs whose logits are multiplied by ``scale`` (huge,
    NaN or 1.0: what the sanity and numeric checks must tell apart)."""

    def __init__(self, scale, num_classes=10):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, num_classes)
        self.scale = scale

    def forward(self, x):
        return self.fc(x.flatten(1)) * self.scale


class _TinyFPNBackbone(nn.Module):
    """Two strided stages and an FPN over both: the pyramid a one-stage detector's head runs
    on (``out_channels`` as torchvision's detectors expect)."""
    out_channels = 48

    def __init__(self):
        from torchvision.ops import FeaturePyramidNetwork

        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.ReLU())
        self.c3 = nn.Sequential(nn.Conv2d(64, 96, 3, 2, 1), nn.BatchNorm2d(96), nn.ReLU())
        self.fpn = FeaturePyramidNetwork([64, 96], self.out_channels)

    def forward(self, x):
        from collections import OrderedDict

        p2 = self.c2(self.c1(x))
        return self.fpn(OrderedDict(p2=p2, p3=self.c3(p2)))


def tiny_retinanet(num_classes=4):
    """torchvision's RetinaNet (its head shared over two pyramid levels, its losses, anchors and
    NMS) on a tiny backbone: the detection pipeline end to end in seconds."""
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    anchors = AnchorGenerator(((8,), (16,)), ((0.5, 1.0, 2.0),) * 2)
    return RetinaNet(_TinyFPNBackbone(), num_classes, min_size=64, max_size=64,
                     anchor_generator=anchors)


def tiny_fasterrcnn(num_classes=4):
    """torchvision's Faster R-CNN (RPN over two pyramid levels, ROI pooling, a small box head)
    on the tiny backbone: a two-stage detector through the pipeline in seconds."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    backbone = _TinyFPNBackbone()
    return FasterRCNN(backbone, None, min_size=64, max_size=64,
                      box_predictor=FastRCNNPredictor(64, num_classes),
                      rpn_anchor_generator=AnchorGenerator(((8,), (16,)), ((0.5, 1.0, 2.0),) * 2),
                      box_roi_pool=MultiScaleRoIAlign(["p2", "p3"], 4, 2),
                      box_head=TwoMLPHead(backbone.out_channels * 16, 64),
                      rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=20,
                      rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=40)
