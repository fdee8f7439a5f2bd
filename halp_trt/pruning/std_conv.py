"""Weight-standardized convolutions, frozen into plain ones when channels are removed.

timm's ``StdConv2d`` and ``ScaledStdConv2d`` (and their "Same" variants: NF-Nets, NF-RegNets,
BiT ResNet-V2) standardize every filter over its fan-in in ``forward``. Removing input channels
changes that fan-in, so a physically pruned one would not equal the masked one, and their
per-filter ``gain`` is a parameter torch-pruning does not cut. At removal each is frozen into a
plain convolution holding the weight it computes (the masked model's, exactly): equal outputs,
the Conv op the latency table timed, and no per-inference standardization in the deployed graph.
The module object is kept (its class changed), so a dependency graph built on it still holds.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from halp_trt.graph.timm_layers import loaded_timm_class

STD_CONV_CLASSES = ("StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame")


def is_weight_standardized(module: nn.Module) -> bool:
    """One of timm's weight-standardized convs (timm is loaded if a model holds one)."""
    return any(type(module) is loaded_timm_class("layers.std_conv", name)
               for name in STD_CONV_CLASSES)


class FrozenStdConv2d(nn.Conv2d):
    """A weight-standardized conv after ``freeze_weight_standardization``: a plain conv, with
    the dynamic TensorFlow-style 'same' padding kept where the original computed it."""

    same_pad: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_pad:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return super().forward(x)


def pad_same(x: torch.Tensor, kernel, stride, dilation) -> torch.Tensor:
    """Pad so that the output size is ceil(input / stride), the extra pixel at the end."""
    pads = []
    for size, k, s, d in ((x.shape[-1], kernel[1], stride[1], dilation[1]),
                          (x.shape[-2], kernel[0], stride[0], dilation[0])):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def standardized_weight(module: nn.Module) -> torch.Tensor:
    """The weight a weight-standardized conv convolves with: each filter at zero mean and unit
    variance over its fan-in, times ``gain * scale`` where the conv has a gain."""
    gain = getattr(module, "gain", None)
    scale = None if gain is None else (gain * module.scale).reshape(-1)
    return F.batch_norm(module.weight.reshape(1, module.out_channels, -1), None, None,
                        weight=scale, training=True, momentum=0.0,
                        eps=module.eps).reshape_as(module.weight)


def freeze_weight_standardization(model: nn.Module) -> list[str]:
    """Turn every weight-standardized conv of ``model`` into a ``FrozenStdConv2d`` holding the
    weight it computes, in place; returns their names."""
    frozen = []
    for name, module in model.named_modules():
        if not is_weight_standardized(module):
            continue
        with torch.no_grad():
            module.weight.copy_(standardized_weight(module))  # the Parameter object stays
        same_pad = bool(getattr(module, "same_pad", False))
        if "gain" in module._parameters:
            del module.gain
        for attr in ("scale", "eps", "gain_init", "same_pad"):
            module.__dict__.pop(attr, None)
        module.__class__ = FrozenStdConv2d
        module.same_pad = same_pad
        frozen.append(name)
    return frozen
