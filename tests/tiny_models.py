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
