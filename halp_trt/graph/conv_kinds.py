"""What kind of grouped convolution a conv is, from its three widths alone (no torch needed:
the same predicate classifies table signatures, live modules and ONNX nodes)."""
from __future__ import annotations


def is_depthwise(groups: int, in_channels: int, out_channels: int) -> bool:
    """A depthwise conv: one group per channel, so its input and output width are one."""
    return groups > 1 and groups == in_channels == out_channels
