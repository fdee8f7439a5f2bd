"""TensorRT backend on a real GPU. Skipped unless tensorrt imports and torch sees a CUDA device.

These are the only tests that show the backend works with real TensorRT; the contract tests
use a fake module.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper


def _skip_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed (pip install 'halp-trt[trt]')"
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - e.g. libnvinfer missing
        return f"tensorrt does not import: {exc}"
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        return f"torch does not import: {exc}"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return None


_REASON = _skip_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")

CIN, COUT, HW = 8, 16, 14


def _weights():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((COUT, CIN, 3, 3)) * 0.2).astype(np.float32)
    b = (rng.standard_normal(COUT) * 0.1).astype(np.float32)
    return w, b


def conv_relu_onnx() -> bytes:
    w, b = _weights()
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv_0"),
         helper.make_node("Relu", ["c"], ["y"], name="relu_0")],
        "conv_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CIN, HW, HW])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, COUT, HW, HW])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def reference(x: np.ndarray) -> np.ndarray:
    """3x3 conv, pad 1, stride 1, then ReLU, in float64 numpy."""
    w, b = _weights()
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((x.shape[0], COUT, HW, HW))
    for i in range(3):
        for j in range(3):
            patch = xp[:, :, i:i + HW, j:j + HW]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j].astype(np.float64))
    out += b[None, :, None, None]
    return np.maximum(out, 0.0)


def _input():
    return np.random.default_rng(1).uniform(-1, 1, (1, CIN, HW, HW)).astype(np.float32)


@pytest.fixture
def backend_factory(tmp_path):
    from halp_trt.runtime.tensorrt import TensorRTBackend

    made = []

    def make(**kwargs):
        kwargs.setdefault("timing_cache_path", str(tmp_path / "trt.cache"))
        b = TensorRTBackend(**kwargs)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def test_fp32_build_time_and_infer(backend_factory):
    backend = backend_factory(precision="fp32", builder_optimization_level=1)
    handle = backend.prepare(conv_relu_onnx(), label="conv_relu fp32")
    try:
        times = backend.time_runs(handle, 50)
        assert len(times) == 50
        assert all(np.isfinite(t) and 0 < t < 1000 for t in times)
        x = _input()
        (y,) = backend.infer(handle, [x])
        assert y.shape == (1, COUT, HW, HW)
        # TF32 may be used for fp32 convs on Ampere+, hence the tolerance
        np.testing.assert_allclose(y, reference(x), rtol=1e-2, atol=1e-2)
    finally:
        backend.release(handle)
    ident = backend.identity()
    assert ident["runtime"] == "tensorrt" and ident["runtime_version"]
    assert ident["device"] and ident["compute_capability"]


def test_fp16_build_and_infer(backend_factory):
    backend = backend_factory(precision="fp16", builder_optimization_level=1)
    handle = backend.prepare(conv_relu_onnx(), label="conv_relu fp16")
    try:
        assert len(backend.time_runs(handle, 10)) == 10
        x = _input()
        (y,) = backend.infer(handle, [x])
        np.testing.assert_allclose(y.astype(np.float32), reference(x), rtol=3e-2, atol=3e-2)
    finally:
        backend.release(handle)
    assert backend.identity()["fp16_route"] in ("strongly_typed", "builder_flag")


def test_timing_cache_file_written_and_reloaded(backend_factory, tmp_path):
    path = tmp_path / "cache.bin"
    first = backend_factory(timing_cache_path=str(path), builder_optimization_level=1)
    first.release(first.prepare(conv_relu_onnx(), label="a"))
    first.close()
    assert path.stat().st_size > 0
    second = backend_factory(timing_cache_path=str(path), builder_optimization_level=1)
    assert second.timing_cache_status == "loaded"
    second.release(second.prepare(conv_relu_onnx(), label="b"))


def test_parse_failure_names_label(backend_factory):
    from halp_trt.errors import HalpError

    backend = backend_factory()
    with pytest.raises(HalpError, match="broken-layer"):
        backend.prepare(b"this is not an onnx model", label="broken-layer")
