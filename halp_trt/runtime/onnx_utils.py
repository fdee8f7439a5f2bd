"""ONNX graph utilities shared by the runtimes (no runtime imported here)."""
from __future__ import annotations

import numpy as np

from halp_trt.errors import HalpError

_FP16_MAX = 65504.0

#: Ops whose float inputs/outputs may all be float16 together (one type variable, or float
#: auxiliary inputs that accept float16). Ops with a fixed float32 input (Resize scales,
#: Dropout ratio, ...) are deliberately absent.
_FP16_OPS = frozenset({
    "Abs", "Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Conv", "ConvTranspose",
    "Div", "Exp", "Flatten", "Gather", "Gemm", "GlobalAveragePool", "GlobalMaxPool",
    "HardSigmoid", "HardSwish", "Identity", "LeakyRelu", "MatMul", "Max", "MaxPool", "Mean",
    "Min", "Mul", "Neg", "Pad", "PRelu", "ReduceMean", "Relu", "Reshape", "Shape", "Sigmoid",
    "Slice", "Softmax", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Transpose",
    "Unsqueeze", "Constant", "Cast",
})


def load_onnx_bytes(onnx_bytes: bytes, what: str):
    import onnx

    try:
        return onnx.load_from_string(bytes(onnx_bytes))
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise HalpError(f"{what} is not a valid ONNX model: {exc}") from exc


def has_float32(onnx_bytes: bytes, label: str = "") -> bool:
    import onnx

    model = load_onnx_bytes(onnx_bytes, label or "the ONNX graph")
    g = model.graph
    float_t = onnx.TensorProto.FLOAT
    return (any(v.type.tensor_type.elem_type == float_t for v in list(g.input) + list(g.output))
            or any(t.data_type == float_t for t in g.initializer))


def convert_onnx_to_fp16(onnx_bytes: bytes, label: str = "") -> bytes:
    """Return the graph with float32 weights, I/O and value infos turned into float16.

    For the strongly typed fp16 route, where TensorRT runs each tensor in the graph's own type.
    Limitation: only plain graphs of the ops in ``_FP16_OPS`` (conv/gemm/pool/activation/
    layout ops, i.e. per-layer HALP graphs) are converted; anything else (subgraphs, functions,
    external data, other ops) raises ``HalpError``, and such graphs must be converted by the
    caller. Weights beyond the float16 range are clipped to +-65504.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    what = label or "the ONNX graph"
    model = load_onnx_bytes(onnx_bytes, what)
    g = model.graph
    if len(model.functions):
        raise HalpError(f"convert_onnx_to_fp16: {what} uses local functions; convert it yourself.")
    unsupported = sorted({
        n.op_type for n in g.node
        if n.domain not in ("", "ai.onnx") or n.op_type not in _FP16_OPS
        or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in n.attribute)
    })
    if unsupported:
        raise HalpError(
            f"convert_onnx_to_fp16: {what} has ops it cannot convert safely: "
            f"{', '.join(unsupported)}. Pass a graph already in float16 for precision='fp16'."
        )
    if any(t.values.data_type == TensorProto.FLOAT for t in g.sparse_initializer):
        raise HalpError(f"convert_onnx_to_fp16: {what} has sparse float initializers.")

    def to_fp16(tensor: onnx.TensorProto) -> None:
        if tensor.data_type != TensorProto.FLOAT:
            return
        if tensor.data_location == TensorProto.EXTERNAL:
            raise HalpError(f"convert_onnx_to_fp16: {what} keeps weights in external data.")
        arr = numpy_helper.to_array(tensor)
        half = np.clip(arr, -_FP16_MAX, _FP16_MAX).astype(np.float16)
        tensor.CopyFrom(numpy_helper.from_array(half, tensor.name))

    for init in g.initializer:
        to_fp16(init)
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        tt = vi.type.tensor_type
        if tt.elem_type == TensorProto.FLOAT:
            tt.elem_type = TensorProto.FLOAT16
    for node in g.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
            elif node.op_type == "Constant" and attr.name in ("value_float", "value_floats"):
                raise HalpError(f"convert_onnx_to_fp16: {what} has a Constant with "
                                f"{attr.name}; use a tensor 'value' instead.")
            elif attr.type == onnx.AttributeProto.TENSOR:
                to_fp16(attr.t)
    return model.SerializeToString()


def graph_inputs(onnx_bytes: bytes) -> list:
    """The graph's real inputs as ValueInfoProtos (initializers that older exporters list as
    inputs excluded)."""
    graph = load_onnx_bytes(onnx_bytes, "the graph").graph
    inits = {i.name for i in graph.initializer}
    return [i for i in graph.input if i.name not in inits]
