"""ONNX Runtime INT8: QDQ quantization of layer graphs and whole models, the int8 backend's
timing and identity, and the INT8 numeric check."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from halp_trt.errors import HalpError
from halp_trt.graph.layers import Signature
from halp_trt.latency.layer_onnx import layer_input_shape, layer_onnx
from halp_trt.runtime import backend_for, get_backend
from halp_trt.runtime.deploy import check_int8_outputs
from halp_trt.runtime.export import export_onnx
from halp_trt.runtime.protocol import Protocol, measure_interleaved
from halp_trt.runtime.quantize import QUANT_SCHEME, is_quantized, quantize_qdq
from tiny_models import TinyResNet

CONV = Signature("conv", kernel=(3, 3), padding=(1, 1), input_hw=(16, 16))


@pytest.fixture(scope="module")
def int8():
    be = get_backend("onnxruntime", precision="int8")
    yield be
    be.close()


def _infer(backend, graph, inputs):
    handle = backend.prepare(graph, "test")
    try:
        return np.concatenate([backend.infer(handle, [x])[0] for x in inputs])
    finally:
        backend.release(handle)


def _rel_rms(got, want):
    return float(np.sqrt(np.mean((got - want) ** 2)) / np.sqrt(np.mean(want ** 2)))


def test_layer_graph_quantizes_to_qdq_close_to_fp32(int8):
    graph = layer_onnx(CONV, 64, 64)
    q = quantize_qdq(graph)
    ops = [n.op_type for n in onnx.load_from_string(q).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "Conv" in ops
    assert is_quantized(q) and not is_quantized(graph)
    assert quantize_qdq(graph) == q  # synthetic calibration is seeded: tables are reproducible

    x = [np.random.default_rng(3).standard_normal(layer_input_shape(CONV, 64, 1))
         .astype(np.float32)]
    want = _infer(get_backend("onnxruntime"), graph, x)
    got = _infer(int8, graph, x)  # the int8 backend quantizes the fp32 graph itself
    assert got.shape == want.shape == (1, 64, 16, 16)
    assert _rel_rms(got, want) < 0.05  # measured 1.4%
    assert np.array_equal(got, _infer(int8, q, x))


def test_int8_backend_times_graphs_and_says_so(int8):
    graphs = {c: layer_onnx(CONV, 64, c) for c in (48, 64)}
    stats = measure_interleaved(int8, graphs, Protocol(rounds=3))
    assert all(s.n == 3 and s.min_ms > 0 for s in stats.values())
    ident = int8.identity()
    assert ident["backend"] == "onnxruntime" and ident["precision"] == "int8"
    assert ident["quantization"] == QUANT_SCHEME
    assert QUANT_SCHEME["format"] == "QDQ" and QUANT_SCHEME["calibration"] == "minmax"
    fp32 = get_backend("onnxruntime").identity()
    assert fp32["precision"] == "fp32" and "quantization" not in fp32


def test_int8_backend_names_the_graph_it_cannot_read(int8):
    with pytest.raises(HalpError, match="layer3.conv1"):
        int8.prepare(b"not an onnx graph", label="layer3.conv1")


@pytest.fixture(scope="module")
def digits_model():
    """TinyResNet trained briefly on sklearn's digits, upscaled to 16x16 RGB."""
    from sklearn.datasets import load_digits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a loaded 2-core machine were 40x slower
    try:
        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
        x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
        x = (x.repeat(1, 3, 1, 1) - 0.3) / 0.4
        y = torch.tensor(d.target)
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(y), generator=g)
        x, y = x[perm], y[perm]
        torch.manual_seed(0)
        model = TinyResNet(10)
        # 100 steps at 1e-2 reached 0.765 on an Intel Xeon (0.8+ on Zen): 150 at 5e-3 reach 0.96
        opt = torch.optim.Adam(model.parameters(), lr=5e-3)
        model.train()
        for _ in range(150):
            idx = torch.randint(0, 1400, (64,), generator=g)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        test_x, test_y = x[1400:1600], y[1400:1600]
        with torch.no_grad():
            ref = model(test_x).numpy()
        assert (ref.argmax(1) == test_y.numpy()).mean() > 0.8  # a model with sane weights
        yield model, x[:64], test_x, ref
    finally:
        torch.set_num_threads(threads)


def _quantized(model, calib_x, example):
    graph = export_onnx(model, example)
    return quantize_qdq(graph, calibration=[{"input": calib_x[i:i + 1].numpy()}
                                            for i in range(len(calib_x))])


def test_whole_model_int8_passes_the_int8_check(int8, digits_model, monkeypatch):
    model, calib_x, test_x, ref = digits_model
    q = _quantized(model, calib_x, test_x[:1])
    # a graph that already quantizes runs as given: quantizing it again would replace the
    # real calibration by the synthetic one
    monkeypatch.setattr("halp_trt.runtime.onnxruntime.quantize_qdq",
                        lambda *a, **k: pytest.fail("re-quantized a quantized graph"))
    got = _infer(int8, q, [test_x[i:i + 1].numpy() for i in range(len(test_x))])
    check = check_int8_outputs(ref, got)
    assert check.passed, check.reason
    assert check.top1_agreement >= 0.95 and check.rel_logit_error < 0.1 and check.n_inputs == 200


def test_garbage_fails_the_int8_check(int8, digits_model):
    model, calib_x, test_x, ref = digits_model
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(ref.shape) * ref.std()
    check = check_int8_outputs(ref, noise)
    assert not check.passed and "top-1 agreement" in check.reason and check.rel_logit_error > 1

    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.stem.weight.mul_(1e6)
    got = _infer(int8, _quantized(bad, calib_x, test_x[:1]),
                 [test_x[i:i + 1].numpy() for i in range(len(test_x))])
    check = check_int8_outputs(ref, got)
    assert not check.passed and "logit error" in check.reason

    nan = ref.copy()
    nan[3, 1] = np.nan
    assert "not finite" in check_int8_outputs(ref, nan).reason
    assert "diverged" in check_int8_outputs(ref * 1e7, ref * 1e7).reason
    assert "shapes differ" in check_int8_outputs(ref, ref[:, :5]).reason
    assert check_int8_outputs(ref, ref).passed


def test_unsupported_precisions_are_clear_errors():
    with pytest.raises(HalpError, match="int8 is measured with ONNX Runtime"):
        backend_for(precision="int8", backend="openvino")
    with pytest.raises(HalpError, match="fp16 needs the TensorRT backend"):
        backend_for(precision="fp16", backend="onnxruntime")
    with pytest.raises(HalpError, match="fp32 or int8 graphs, not 'fp16'"):
        get_backend("onnxruntime", precision="fp16")
    be = backend_for(precision="int8")
    assert be.name == "onnxruntime" and be.precision == "int8"
