"""The OpenVINO backend on the real runtime (CPU plugin): numbers, timing contract, identity."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from halp_trt.errors import HalpError, MissingBackendError
from halp_trt.graph.layers import Signature
from halp_trt.latency.layer_onnx import layer_input_shape, layer_onnx
from halp_trt.runtime import available_backends, get_backend
from halp_trt.runtime.deploy import check_outputs
from halp_trt.runtime.export import export_onnx
from halp_trt.runtime.machine import cpu_identity
from halp_trt.runtime.protocol import Protocol, measure_interleaved
from tiny_models import TinyResNet

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'halp-trt[openvino]')")

CONV = Signature("conv", kernel=(3, 3), padding=(1, 1), input_hw=(8, 8))


@pytest.fixture(scope="module")
def backend():
    be = get_backend("openvino")
    yield be
    be.close()


def test_layer_graph_matches_onnx_runtime_in_f32(backend):
    graph = layer_onnx(CONV, 16, 24)
    x = np.random.default_rng(3).standard_normal(layer_input_shape(CONV, 16, 1)).astype(np.float32)
    ort = get_backend("onnxruntime")
    h_ort, h_ov = ort.prepare(graph, "conv"), backend.prepare(graph, "conv")
    try:
        want = ort.infer(h_ort, [x])[0]
        got = backend.infer(h_ov, [x])
        # bf16, the CPU plugin's default on AVX512_BF16 hosts, would miss 1e-4 by far
        assert str(h_ov["compiled"].get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
        assert len(got) == 1 and got[0].shape == want.shape == (1, 24, 8, 8)
        np.testing.assert_allclose(got[0], want, atol=1e-4, rtol=0)
        # infer leaves the timed request's own inputs alone
        assert backend.time_runs(h_ov, 2)[0] > 0
    finally:
        ort.release(h_ort)
        backend.release(h_ov)


def test_whole_model_matches_pytorch(backend):
    torch.manual_seed(0)
    model = TinyResNet(width=8).eval()
    xs = [torch.randn(1, 3, 16, 16) for _ in range(2)]
    onnx_bytes = export_onnx(model, xs[0])
    h = backend.prepare(onnx_bytes, "tiny")
    try:
        for x in xs:
            with torch.no_grad():
                want = model(x).numpy()
            got = backend.infer(h, [x.numpy()])[0]
            np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.abs(want).max()), rtol=0)
    finally:
        backend.release(h)
    check = check_outputs(backend, onnx_bytes, model, xs, label="tiny")
    assert check.ok


def test_interleaved_timing_orders_a_small_and_a_big_conv(backend):
    sig = Signature("conv", kernel=(3, 3), padding=(1, 1), input_hw=(32, 32))
    graphs = {16: layer_onnx(sig, 32, 16), 128: layer_onnx(sig, 32, 128)}
    stats = measure_interleaved(backend, graphs, Protocol(rounds=5, min_sample_ms=0.1))
    for s in stats.values():
        assert s.n == 5 and math.isfinite(s.min_ms) and s.min_ms > 0
    assert stats[128].min_ms > 2 * stats[16].min_ms, {k: s.min_ms for k, s in stats.items()}


def test_identity_names_runtime_cpu_and_threads(backend):
    ident = backend.identity()
    assert ident["backend"] == "openvino" and ident["runtime"] == "openvino"
    assert ident["runtime_version"][:4].isdigit()
    assert ident["device"] == "cpu" and ident["precision"] == "fp32" and ident["threads"] == 1
    assert ident["performance_hint"] == "latency" and ident["streams"] == 1
    assert ident["ov_device_name"]
    assert {k: ident[k] for k in cpu_identity()} == cpu_identity()
    assert get_backend("openvino", threads=2).identity()["threads"] == 2
    assert "openvino" in available_backends()


def test_missing_openvino_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` fail
    with pytest.raises(MissingBackendError, match=r"pip install 'halp-trt\[openvino\]'") as err:
        get_backend("openvino")
    assert err.value.extra == "openvino"


def test_unsupported_options_are_refused_clearly():
    with pytest.raises(HalpError, match="fp32 graphs only, not 'fp16'"):
        get_backend("openvino", precision="fp16")
    with pytest.raises(HalpError, match="CPU device only"):
        get_backend("openvino", device="GPU")
    with pytest.raises(HalpError, match="could not compile layer3.conv1"):
        get_backend("openvino").prepare(b"not an onnx graph", label="layer3.conv1")


def test_backend_flag_builds_an_openvino_table_and_refuses_gpu_with_another_backend(tmp_path):
    from click.testing import CliRunner

    from halp_trt.cli import main
    from halp_trt.errors import ConfigError
    from halp_trt.latency.table import LatencyTable
    from halp_trt.pipeline import DeployConfig

    out = tmp_path / "ov.json"
    res = CliRunner().invoke(main, ["build-table", "tiny_models:tiny_resnet", "--input-shape",
                                    "1,3,16,16", "--backend", "openvino", "--rounds", "2",
                                    "--max-points", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    table = LatencyTable.load(str(out))
    assert table.identity["backend"] == "openvino" and table.identity["precision"] == "fp32"
    assert all(s.entries for s in table.signatures.values())
    res = CliRunner().invoke(main, ["build-table", "resnet18", "--gpu", "--backend", "openvino",
                                    "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "--gpu means the TensorRT backend" in res.output
    assert DeployConfig(out=str(tmp_path), gpu=True).backend == "tensorrt"
    with pytest.raises(ConfigError, match="cannot be combined"):
        DeployConfig(out=str(tmp_path), gpu=True, backend="openvino")
