"""One prunable layer as a standalone ONNX graph, at any (c_in, c_out).

The timed graph is what deployment runs for that layer: BatchNorm is folded into the conv (so the
conv always has a bias) and the following activation is included as a ReLU, because both ONNX
Runtime and TensorRT fuse bias + activation into the conv kernel's epilogue; timing a bare conv
would miss that epilogue, timing BN separately would count work deployment never does. Other
activations (hardswish, SiLU) are approximated by ReLU: their fused cost differs by a few percent
of a small epilogue. Linear layers are a Gemm with bias and no activation.

Graphs are built with ``onnx.helper`` rather than through torch's exporter: one conv needs no
tracing, and building thousands of them must be fast and deterministic.
"""
from __future__ import annotations

import numpy as np

from halp_trt.graph.layers import Signature

OPSET = 17


def conv_output_hw(sig: Signature) -> tuple[int, int]:
    return tuple(
        (sig.input_hw[i] + 2 * sig.padding[i] - sig.dilation[i] * (sig.kernel[i] - 1) - 1)
        // sig.stride[i] + 1 for i in range(2))


def layer_weights(sig: Signature, c_in: int, c_out: int, seed: int = 0):
    """Random weights of the right shapes (values do not change latency)."""
    rng = np.random.default_rng(seed)
    if sig.op == "linear":
        w = rng.standard_normal((c_out, c_in * sig.in_scale), dtype=np.float32) * 0.05
    elif sig.op == "dwconv":
        w = rng.standard_normal((c_out, 1, *sig.kernel), dtype=np.float32) * 0.1
    else:
        w = rng.standard_normal((c_out, c_in // sig.groups, *sig.kernel), dtype=np.float32) * 0.1
    b = rng.standard_normal((c_out,), dtype=np.float32) * 0.1
    return w, b


def layer_input_shape(sig: Signature, c_in: int, batch: int) -> tuple[int, ...]:
    if sig.op == "linear":
        return (batch * sig.tokens, c_in * sig.in_scale)
    return (batch, c_in, *sig.input_hw)


def check_channels(sig: Signature, c_in: int, c_out: int) -> None:
    if c_in < 1 or c_out < 1:
        raise ValueError(f"channel counts must be positive, got c_in={c_in}, c_out={c_out}")
    if sig.op == "dwconv" and c_in != c_out:
        raise ValueError(f"a depthwise conv has c_in == c_out, got {c_in} and {c_out}")
    if sig.op == "conv" and (c_in % sig.groups or c_out % sig.groups):
        raise ValueError(f"grouped conv with {sig.groups} groups needs channel counts divisible "
                         f"by it, got c_in={c_in}, c_out={c_out}")


def layer_onnx(sig: Signature, c_in: int, c_out: int, batch: int = 1, seed: int = 0,
               weights: tuple[np.ndarray, np.ndarray] | None = None) -> bytes:
    """Serialized ONNX model of the layer (FP32). ``weights`` overrides the random ones."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    check_channels(sig, c_in, c_out)
    w, b = weights if weights is not None else layer_weights(sig, c_in, c_out, seed)
    in_shape = layer_input_shape(sig, c_in, batch)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    if sig.op == "linear":
        nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["y"], transB=1)]
        out_shape = [batch * sig.tokens, c_out]
    else:
        pads = [sig.padding[0], sig.padding[1], sig.padding[0], sig.padding[1]]
        groups = c_in if sig.op == "dwconv" else sig.groups
        nodes = [
            helper.make_node("Conv", ["x", "W", "B"], ["conv"], kernel_shape=list(sig.kernel),
                             strides=list(sig.stride), pads=pads, dilations=list(sig.dilation),
                             group=groups),
            helper.make_node("Relu", ["conv"], ["y"]),
        ]
        out_shape = [batch, c_out, *conv_output_hw(sig)]
    graph = helper.make_graph(
        nodes, "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="halp-trt")
    model.ir_version = 8  # readable by older runtimes (TensorRT 10's parser, ORT >= 1.14)
    onnx.checker.check_model(model)
    return model.SerializeToString()
