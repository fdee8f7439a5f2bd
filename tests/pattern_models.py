"""Tiny models, one per architecture pattern timm families use (tests/test_patterns.py)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class SliceAfterConcat(nn.Module):
    """Two branches concatenated, then only the first n channels go on (x[:, :n])."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(24, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)[:, :24]
        return self.fc(F.relu(self.head(y)).mean((2, 3)))


class SplitAndConcat(nn.Module):
    """torch.chunk along channels, one half through a conv, concatenated back (CSP / GhostNet)."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.part = nn.Conv2d(16, 16, 3, padding=1)
        self.mix = nn.Conv2d(32, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, F.relu(self.part(b))], 1)
        return self.fc(F.relu(self.mix(x)).mean((2, 3)))


class RepBranches(nn.Module):
    """RepVGG-style: 3x3 + 1x1 + identity (BN) summed."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.c3 = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32))
        self.c1 = nn.Sequential(nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.idn = nn.BatchNorm2d(32)
        self.out = nn.Conv2d(32, 48, 3, padding=1)
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.c3(x) + self.c1(x) + self.idn(x))
        return self.fc(F.relu(self.out(x)).mean((2, 3)))


class LayerScale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gamma = nn.Parameter(1e-1 * torch.ones(c))

    def forward(self, x):
        return x * self.gamma.view(1, -1, 1, 1)


class LayerScaleNet(nn.Module):
    """A residual block whose branch is scaled per channel by a bare parameter (ConvNeXt)."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.pw1 = nn.Conv2d(32, 64, 1)
        self.pw2 = nn.Conv2d(64, 32, 1)
        self.ls = LayerScale(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.ls(self.pw2(F.gelu(self.pw1(x))))
        return self.fc(x.mean((2, 3)))


class SENet(nn.Module):
    """Squeeze-excite with a rounded reduced width (make_divisible(c / 4, 8))."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 40, 3, padding=1)
        self.reduce = nn.Conv2d(40, 16, 1)
        self.expand = nn.Conv2d(16, 40, 1)
        self.out = nn.Conv2d(40, 48, 1)
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        s = torch.sigmoid(self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return self.fc(F.relu(self.out(x * s)).mean((2, 3)))


class ChannelMultiplier(nn.Module):
    """A grouped conv with 2 outputs per input channel (depth multiplier 2; MobileNet-like)."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 32, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(32, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        return self.fc(F.relu(self.pw(F.relu(self.dw(x)))).mean((2, 3)))


class DropPathNet(nn.Module):
    """Stochastic depth on the residual branch (identity in eval)."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.branch = nn.Sequential(nn.Conv2d(32, 48, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(48, 32, 3, padding=1))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        b = self.branch(x)
        if self.training:
            keep = (torch.rand(x.shape[0], 1, 1, 1) > 0.1).float() / 0.9
            b = b * keep
        return self.fc(F.relu(x + b).mean((2, 3)))


class ControlFlow(nn.Module):
    """Data-dependent control flow that tracing cannot follow."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.a = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        if x.sum() > 0:
            x = F.relu(self.a(x))
        return self.fc(x.mean((2, 3)))


class GhostSE(nn.Module):
    """GhostNet's ghost module under a squeeze-excite gate: a 1x1 conv and its own depthwise
    copy concatenated (channel i tied to channel 8 + i), the gate's expand conv as wide as the
    concat."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.primary = nn.Conv2d(16, 8, 1)
        self.cheap = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.reduce = nn.Conv2d(16, 8, 1)
        self.expand = nn.Conv2d(8, 16, 1)
        self.head = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        p = F.relu(self.primary(x))
        y = torch.cat([p, F.relu(self.cheap(p))], 1)
        y = y * torch.sigmoid(self.expand(F.relu(self.reduce(y.mean((2, 3), keepdim=True)))))
        return self.fc(F.relu(self.head(y)).mean((2, 3)))


class ASPPHead(nn.Module):
    """A segmentation net: a strided backbone, an ASPP-style head (parallel dilated convs and
    an image-pool branch concatenated, then fused), class logits upsampled to the input."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.body = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.branches = nn.ModuleList([nn.Conv2d(32, 16, 1),
                                       nn.Conv2d(32, 16, 3, padding=2, dilation=2)])
        self.pool = nn.Conv2d(32, 16, 1)
        self.fuse = nn.Conv2d(48, 24, 1)
        self.classes = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        f = F.relu(self.body(F.relu(self.stem(x))))
        pooled = F.relu(self.pool(f.mean((2, 3), keepdim=True))).expand(-1, -1, *f.shape[-2:])
        y = torch.cat([F.relu(b(f)) for b in self.branches] + [pooled], 1)
        out = self.classes(F.relu(self.fuse(y)))
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


class MultiScaleLinearAttention(nn.Module):
    """EfficientViT's multi-scale linear attention (LiteMLA): a 1x1 qkv conv, a depthwise +
    grouped 1x1 aggregation of it concatenated as a second scale, ReLU-kernel linear attention
    per head (q (k^T v) / q (k^T 1)), a 1x1 projection; residual around it."""
    def __init__(self, dim=32, head_dim=8):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, padding=1)
        self.head_dim = head_dim
        self.qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.aggreg = nn.Sequential(nn.Conv2d(3 * dim, 3 * dim, 3, padding=1, groups=3 * dim),
                                    nn.Conv2d(3 * dim, 3 * dim, 1, groups=3 * dim // head_dim))
        self.proj = nn.Conv2d(2 * dim, dim, 1)
        self.fc = nn.Linear(dim, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        n, _, h, w = x.shape
        qkv = self.qkv(x)
        multi = torch.cat([qkv, self.aggreg(qkv)], 1)
        multi = multi.reshape(n, -1, 3 * self.head_dim, h * w).transpose(-1, -2)
        q, k, v = F.relu(multi).chunk(3, dim=-1)
        v = F.pad(v, (0, 1), value=1.0)
        out = (q @ (k.transpose(-1, -2) @ v))
        out = out[..., :-1] / (out[..., -1:] + 1e-6)
        out = out.transpose(-1, -2).reshape(n, -1, h, w)
        x = x + self.proj(out)
        return self.fc(x.mean((2, 3)))


class ConcatUnderOneGate(nn.Module):
    """timm's CSPNeXt layer: two branches concatenated, one squeeze-excite gating the concat
    (its fc ties every concat channel into one group), then a fusing conv."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.short = nn.Conv2d(16, 8, 1)
        self.main = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Conv2d(16, 16, 1)
        self.fuse = nn.Conv2d(16, 16, 3, padding=1)
        self.classifier = nn.Linear(16, 10)

    def forward(self, x):
        s = F.relu(self.stem(x))
        y = torch.cat([self.short(s), self.main(s)], 1)
        y = y * torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True)))
        return self.classifier(F.relu(self.fuse(y)).mean((2, 3)))


def timm_bnact():
    from timm.layers import BatchNormAct2d

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 32, 3, padding=1, bias=False)
            self.bn = BatchNormAct2d(32, act_layer=nn.ReLU)
            self.c = nn.Conv2d(32, 48, 3, padding=1, bias=False)
            self.bn2 = BatchNormAct2d(48, act_layer=nn.SiLU)
            self.fc = nn.Linear(48, 10)

        def forward(self, x):
            return self.fc(self.bn2(self.c(self.bn(self.stem(x)))).mean((2, 3)))
    return Net()

class SamePadding(nn.Module):
    """ConvMixer: depthwise convs with ``padding="same"`` under a residual, 1x1 mixing."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 2, stride=2)
        self.depthwise = nn.Conv2d(32, 32, 5, groups=32, padding="same")
        self.even = nn.Conv2d(32, 32, 4, padding="same")
        self.pointwise = nn.Conv2d(32, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.gelu(self.stem(x))
        x = x + F.gelu(self.depthwise(x))
        return self.fc(F.gelu(self.pointwise(F.gelu(self.even(x)))).mean((2, 3)))


def timm_levit_one_token():
    """LeViT's blocks on one token: torch-pruning reads the attention's reshapes as flattens
    and, around the residual cycle, multiplies the qkv group's indices without end (timm's
    levit_128s at 64 px: 15 GB in a minute). That group keeps its width; the MLP prunes."""
    from timm.models.levit import LevitBlock

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 16, stride=16)
            self.blocks = nn.Sequential(*[LevitBlock(16, key_dim=4, num_heads=2, attn_ratio=2,
                                                     mlp_ratio=2, resolution=1)
                                          for _ in range(2)])
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = self.stem(x).flatten(2).transpose(1, 2)
            return self.fc(self.blocks(x).mean(1))
    return Net()


def timm_std_conv():
    """NF-Net / BiT: timm's weight-standardized convs (each filter standardized over its
    fan-in in forward; a per-filter gain; "Same" ones pad dynamically), no BatchNorm, a
    residual. Frozen into plain convs at removal: cutting a standardized conv's input would
    change its fan-in."""
    from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = ScaledStdConv2d(3, 32, 3, stride=2, padding=1)
            self.conv1 = ScaledStdConv2dSame(32, 48, 3, padding="same")
            self.conv2 = StdConv2d(48, 32, 3, padding=1)
            self.down = ScaledStdConv2dSame(32, 64, 3, stride=2, padding="same")
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            x = F.gelu(self.stem(x))
            x = x + self.conv2(F.gelu(self.conv1(x)))
            return self.fc(F.gelu(self.down(x)).mean((2, 3)))
    return Net()


PATTERNS = {"slice after concat": SliceAfterConcat, "split and re-concat": SplitAndConcat,
            "re-parameterisable branches": RepBranches, "LayerScale": LayerScaleNet,
            "squeeze-excite, rounded width": SENet, "channel multiplier": ChannelMultiplier,
            "stochastic depth": DropPathNet, "data-dependent control flow": ControlFlow,
            "timm BatchNormAct2d": timm_bnact, "ghost module under a gate": GhostSE,
            "segmentation: ASPP head, upsampled logits": ASPPHead,
            "multi-scale linear attention": MultiScaleLinearAttention,
            "concat under one squeeze-excite": ConcatUnderOneGate,
            "timm LeViT attention on one token": timm_levit_one_token,
            "padding='same' (ConvMixer)": SamePadding,
            "timm weight-standardized convs (NF-Net, BiT)": timm_std_conv}
