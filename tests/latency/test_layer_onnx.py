"""Per-layer ONNX graphs compute what the torch layer (BN folded, + ReLU) computes."""
import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from halp_trt.latency.layer_onnx import layer_onnx
from halp_trt.graph.layers import Signature


def _run(onnx_bytes, x):
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("kernel,stride,padding,dilation,groups,c_in,c_out,hw", [
    (3, 1, 1, 1, 1, 8, 12, (9, 9)),
    (1, 2, 0, 1, 1, 5, 7, (8, 8)),
    (3, 2, 2, 2, 1, 4, 6, (11, 10)),
    (3, 1, 1, 1, 2, 8, 6, (7, 7)),   # grouped
])
def test_conv_graph_matches_torch(kernel, stride, padding, dilation, groups, c_in, c_out, hw):
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation, groups, bias=True)
    sig = Signature("conv", (kernel, kernel), (stride, stride), (padding, padding),
                    (dilation, dilation), groups, hw)
    w, b = conv.weight.detach().numpy(), conv.bias.detach().numpy()
    x = np.random.default_rng(0).standard_normal((2, c_in, *hw)).astype(np.float32)
    got = _run(layer_onnx(sig, c_in, c_out, batch=2, weights=(w, b)), x)
    want = torch.relu(conv(torch.from_numpy(x))).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_depthwise_graph_matches_torch():
    c = 6
    conv = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=True)
    sig = Signature("dwconv", (3, 3), (1, 1), (1, 1), (1, 1), 1, (5, 5))
    x = np.random.default_rng(1).standard_normal((1, c, 5, 5)).astype(np.float32)
    got = _run(layer_onnx(sig, c, c, weights=(conv.weight.detach().numpy(),
                                               conv.bias.detach().numpy())), x)
    np.testing.assert_allclose(got, torch.relu(conv(torch.from_numpy(x))).detach().numpy(),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        layer_onnx(sig, c, c + 1)


def test_bn_folded_conv_matches_conv_bn_relu():
    """The timed graph is the deployed one: conv+BN folded into conv-with-bias, then ReLU."""
    conv, bn = nn.Conv2d(4, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    bn.eval()
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    w = (conv.weight * scale[:, None, None, None]).detach().numpy()
    b = (bn.bias - bn.running_mean * scale).detach().numpy()
    sig = Signature("conv", (3, 3), (1, 1), (1, 1), (1, 1), 1, (6, 6))
    x = np.random.default_rng(2).standard_normal((1, 4, 6, 6)).astype(np.float32)
    got = _run(layer_onnx(sig, 4, 5, weights=(w, b)), x)
    want = torch.relu(bn(conv(torch.from_numpy(x)))).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_linear_graph_with_flatten_scale_matches_torch():
    lin = nn.Linear(3 * 4, 5)
    sig = Signature("linear", in_scale=4)
    x = np.random.default_rng(3).standard_normal((2, 12)).astype(np.float32)
    got = _run(layer_onnx(sig, 3, 5, batch=2, weights=(lin.weight.detach().numpy(),
                                                        lin.bias.detach().numpy())), x)
    np.testing.assert_allclose(got, lin(torch.from_numpy(x)).detach().numpy(), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("sig,c_in,c_out", [
    (Signature("conv", (3, 3), (1, 1), (1, 1), (1, 1), 1, (8, 8)), 16, 24),
    (Signature("conv", (3, 3), (1, 1), (1, 1), (1, 1), 4, (8, 8)), 16, 24),
    (Signature("dwconv", (3, 3), (1, 1), (1, 1), (1, 1), 1, (8, 8)), 32, 32),
    (Signature("linear", in_scale=4), 64, 40),
    (Signature("mha", tokens=17, head_dim=16), 64, 4),  # c_out: heads
])
def test_weight_bytes_match_the_graphs_initializers(sig, c_in, c_out):
    import onnx
    from onnx import numpy_helper

    from halp_trt.latency.layer_onnx import weight_bytes

    model = onnx.load_from_string(layer_onnx(sig, c_in, c_out))
    stored = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer
                 if numpy_helper.to_array(t).size > 1)
    assert weight_bytes(sig, c_in, c_out) == pytest.approx(stored, rel=0.02)
