"""One prunable layer as a standalone ONNX graph, at any (c_in, c_out), as deployment runs it:
BatchNorm folded into the conv (so it has a bias) and a ReLU after it, because ONNX Runtime and
TensorRT fuse bias + activation into the conv's epilogue (other activations cost a few percent of
that small epilogue more). Linear layers are a Gemm with bias.

A self-attention (ops ``mha``/``wattn``/``wattn2``) is one layer at (embedding width, heads): the
packed q/k/v projection, the heads' attention over the signature's tokens (Swin: per window, with
the relative position bias; V2: cosine logits) and the output projection, without the window
shift/partition reshapes, which do not depend on the head count.

Built with ``onnx.helper``, not torch's exporter: thousands of graphs, fast and deterministic."""
from __future__ import annotations

import numpy as np

from halp_trt.graph.layers import Signature

OPSET = 17


def conv_output_hw(sig: Signature) -> tuple[int, int]:
    return tuple(
        (sig.input_hw[i] + 2 * sig.padding[i] - sig.dilation[i] * (sig.kernel[i] - 1) - 1)
        // sig.stride[i] + 1 for i in range(2))


def layer_weight_shape(sig: Signature, c_in: int, c_out: int) -> tuple[int, ...]:
    """The weight tensor's shape of a conv or linear layer graph (its bias is ``(c_out,)``)."""
    if sig.op == "linear":
        return (c_out, c_in * sig.in_scale)
    if sig.op == "dwconv":
        return (c_out, 1, *sig.kernel)
    return (c_out, c_in // sig.groups, *sig.kernel)


def layer_weights(sig: Signature, c_in: int, c_out: int, seed: int = 0):
    """Random weights of the right shapes (values do not change latency)."""
    rng = np.random.default_rng(seed)
    scale = 0.05 if sig.op == "linear" else 0.1
    w = rng.standard_normal(layer_weight_shape(sig, c_in, c_out), dtype=np.float32) * scale
    b = rng.standard_normal((c_out,), dtype=np.float32) * 0.1
    return w, b


def weight_bytes(sig: Signature, c_in: int, c_out: int) -> int:
    """About how many bytes of weights the layer graph of ``(c_in, c_out)`` holds (fp32),
    without building it: what decides how many such graphs can be alive at once."""
    if sig.is_attention:  # q, k, v and output projections of c_out heads
        return 4 * 4 * c_in * c_out * sig.head_dim
    return 4 * (int(np.prod(layer_weight_shape(sig, c_in, c_out))) + c_out)


def layer_input_shape(sig: Signature, c_in: int, batch: int) -> tuple[int, ...]:
    if sig.is_attention:
        return (batch * sig.windows, sig.tokens, c_in)
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
    from onnx import TensorProto, helper, numpy_helper

    check_channels(sig, c_in, c_out)
    if sig.is_attention:  # c_in: embedding width, c_out: heads
        if weights is not None:
            raise ValueError("an attention graph takes no weights override")
        return _finish(attention_graph(sig, c_in, c_out, batch, seed))
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
    return _finish(helper.make_graph(
        nodes, "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits))


def _finish(graph) -> bytes:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="halp-trt")
    model.ir_version = 8  # readable by older runtimes (TensorRT 10's parser, ORT >= 1.14)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def attention_graph(sig: Signature, embed_dim: int, heads: int, batch: int = 1, seed: int = 0):
    """The ONNX graph (not yet a model) of one self-attention with ``heads`` heads of
    ``sig.head_dim`` channels on (batch · windows, tokens, embed_dim) inputs."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    d, t, n = sig.head_dim, sig.tokens, batch * sig.windows
    inner = heads * d

    def rand(*shape, scale=0.05):
        return rng.standard_normal(shape, dtype=np.float32) * scale

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    inits: list = []
    const("Wqkv", rand(embed_dim, 3 * inner))
    const("Bqkv", rand(3 * inner))
    const("Wo", rand(inner, embed_dim))
    const("Bo", rand(embed_dim))
    node = helper.make_node
    nodes = [
        node("MatMul", ["x", "Wqkv"], ["qkv0"]), node("Add", ["qkv0", "Bqkv"], ["qkv1"]),
        node("Reshape", ["qkv1", const("s_split", np.array([n, t, 3, heads, d], np.int64))],
             ["qkv2"]),
        node("Transpose", ["qkv2"], ["qkv"], perm=[2, 0, 3, 1, 4]),  # (3, n, heads, t, d)
        node("Split", ["qkv", const("s_three", np.array([1, 1, 1], np.int64))],
             ["q0", "k0", "v0"], axis=0),
    ]
    for a in ("q", "k", "v"):
        nodes.append(node("Squeeze", [f"{a}0", const(f"ax0_{a}", np.array([0], np.int64))],
                          [f"{a}1"]))
    if sig.op == "wattn2":  # cosine attention: unit q and k, a learned scale per head
        nodes += [node("LpNormalization", ["q1"], ["q"], axis=-1, p=2),
                  node("LpNormalization", ["k1"], ["k"], axis=-1, p=2)]
    else:
        nodes += [node("Mul", ["q1", const("scale", np.float32(d ** -0.5))], ["q"]),
                  node("Identity", ["k1"], ["k"])]
    nodes += [node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
              node("MatMul", ["q", "kt"], ["logits0"])]
    last = "logits0"
    if sig.op == "wattn2":
        nodes.append(node("Mul", [last, const("logit_scale", rand(1, heads, 1, 1) + 10.0)],
                          ["logits1"]))
        last = "logits1"
    if sig.op in ("wattn", "wattn2"):  # relative position bias, one (t, t) map per head
        nodes.append(node("Add", [last, const("rel_bias", rand(1, heads, t, t))], ["logits2"]))
        last = "logits2"
    nodes += [
        node("Softmax", [last], ["p"], axis=-1),
        node("MatMul", ["p", "v1"], ["o0"]),
        node("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3]),
        node("Reshape", ["o1", const("s_merge", np.array([n, t, inner], np.int64))], ["o2"]),
        node("MatMul", ["o2", "Wo"], ["o3"]), node("Add", ["o3", "Bo"], ["y"]),
    ]
    return helper.make_graph(
        nodes, "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, t, embed_dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, t, embed_dim])], inits)
