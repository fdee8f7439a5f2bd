"""A synthetic latency model: no measurement, MACs with channel counts rounded up to a step.

For runs that check structure rather than speed — whether an architecture prunes, its channels
come out and it exports — where building a measured table would cost minutes and a quiet
machine: the tests, and ``tools/bench_zoo.py --structural``. Never a stand-in for a table in a
deployment decision."""
from __future__ import annotations

from halp_trt.graph.layers import LayerSpec
from halp_trt.latency.steps import round_up_to_step


class StaircaseLatencyModel:
    """``layer_ms`` = MACs of the layer with both channel counts rounded up to ``step`` (heads
    are not rounded), times ``ms_per_mmac``, plus ``overhead_ms``: the staircase shape of a
    runtime with ``step``-channel blocks, on the pruner's ``LatencyModel`` interface."""

    def __init__(self, step: int = 8, ms_per_mmac: float = 0.01, overhead_ms: float = 0.0):
        self.step, self.ms_per_mmac, self.overhead_ms = int(step), float(ms_per_mmac), overhead_ms
        self.identity = {"backend": "synthetic-staircase", "step": self.step,
                         "ms_per_mmac": self.ms_per_mmac, "overhead_ms": overhead_ms}

    def _up(self, c: int) -> int:
        return round_up_to_step(c, self.step)

    def layer_ms(self, spec: LayerSpec, c_in: int, c_out: int) -> float:
        sig = spec.signature
        ci, co = self._up(c_in), self._up(c_out)
        if sig.is_attention:  # c_out is heads: q, k, v and output projections, then the
            width = c_out * sig.head_dim  # two token-by-token products per sequence
            macs = sig.windows * (4 * sig.tokens * ci * width + 2 * sig.tokens ** 2 * width)
        elif sig.op == "linear":  # once per token (ViT's tokens, an NHWC map's pixels)
            macs = ci * sig.in_scale * co * sig.tokens
        else:
            (h, w), (kh, kw) = sig.input_hw, sig.kernel
            oh = (h + 2 * sig.padding[0] - sig.dilation[0] * (kh - 1) - 1) // sig.stride[0] + 1
            ow = (w + 2 * sig.padding[1] - sig.dilation[1] * (kw - 1) - 1) // sig.stride[1] + 1
            per_out = kh * kw * oh * ow
            macs = co * per_out if sig.op == "dwconv" else ci * co * per_out / sig.groups
        return self.overhead_ms + macs * 1e-6 * self.ms_per_mmac

    def step_size(self, spec: LayerSpec) -> tuple[int, int]:
        return self.step, self.step
