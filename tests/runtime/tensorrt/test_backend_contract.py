"""Contract tests for the TensorRT backend, run against a recording fake ``tensorrt`` module.

They pin down how the backend drives the TensorRT 10 API (builder/cache reuse, precision route,
error messages, stream and event use). They do not show that real TensorRT accepts these calls;
``test_tensorrt_real.py`` does that on a GPU machine.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import halp_trt.runtime.tensorrt.backend as trt_backend
from halp_trt.runtime.onnx_utils import convert_onnx_to_fp16
from halp_trt.runtime.tensorrt import TensorRTBackend
from halp_trt.errors import HalpError, MissingBackendError


def _load_fake():
    # by path, so it works whether or not tests/ is a package
    name = "_halp_tests_fake_tensorrt"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).with_name("fake_tensorrt.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


fake = _load_fake()


def conv_onnx(cin=3, cout=2, hw=4, opset=17) -> bytes:
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv_0"),
         helper.make_node("Relu", ["c"], ["y"], name="relu_0")],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, hw, hw])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model.SerializeToString()


@pytest.fixture
def rec():
    return fake.Recorder()


@pytest.fixture
def install(monkeypatch, rec):
    """install(**fake_options) puts a fake tensorrt and the fake CUDA seam in place."""

    def _install(**options):
        module = fake.make_fake_trt(rec, **options)
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        monkeypatch.setattr(trt_backend, "_make_cuda", lambda device: fake.FakeCuda(rec, device))
        return module

    return _install


# ------------------------------------------------------------------------------ import / setup
def test_module_import_does_not_load_runtimes():
    code = ("import sys, halp_trt.runtime.tensorrt\n"
            "bad = [m for m in ('tensorrt', 'torch', 'cuda', 'pycuda') if m in sys.modules]\n"
            "assert not bad, bad\n")
    root = Path(__file__).resolve().parents[3]
    env = dict(os.environ, PYTHONPATH=str(root))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)


def test_missing_tensorrt_raises_missing_backend_error(monkeypatch, rec):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    monkeypatch.setattr(trt_backend, "_make_cuda", lambda device: fake.FakeCuda(rec, device))
    with pytest.raises(MissingBackendError) as info:
        TensorRTBackend()
    assert "halp-trt[trt]" in str(info.value)
    assert info.value.extra == "trt"


def test_no_cuda_device_is_a_clear_error(install, monkeypatch):
    install()

    def no_gpu(device):
        raise HalpError("No CUDA device is available")

    monkeypatch.setattr(trt_backend, "_make_cuda", no_gpu)
    with pytest.raises(HalpError, match="No CUDA device"):
        TensorRTBackend()


@pytest.mark.parametrize("kwargs", [{"precision": "int8"}, {"builder_optimization_level": 7},
                                    {"workspace_mb": 0}])
def test_bad_options_are_rejected(install, kwargs):
    install()
    with pytest.raises(HalpError):
        TensorRTBackend(**kwargs)


# ------------------------------------------------------------------------------ builder & cache
def test_one_builder_and_one_timing_cache_across_prepares(install, rec):
    install()
    backend = TensorRTBackend(workspace_mb=256, builder_optimization_level=2)
    handles = [backend.prepare(conv_onnx(), label=f"conv{i}") for i in range(3)]
    assert len(rec.builders) == 1
    assert len(rec.created_caches) == 1
    cache = rec.created_caches[0][1]
    build_configs = [c for c in rec.configs if c.pool_limits]
    assert len(build_configs) == 3
    assert all(c.timing_cache is cache for c in build_configs)
    assert all(c.pool_limits == {"WORKSPACE": 256 << 20} for c in build_configs)
    assert all(c.builder_optimization_level == 2 for c in build_configs)
    set_calls = [c for c in rec.calls if c[0] == "set_timing_cache"]
    assert {c[1] for c in set_calls} == {id(cache)}
    assert all(c[2] is False for c in set_calls)  # ignore_mismatch=False
    for h in handles:
        backend.release(h)
    backend.close()


def test_timing_cache_saved_atomically_and_reloaded(install, rec, tmp_path):
    install()
    path = tmp_path / "sub" / "trt.cache"
    backend = TensorRTBackend(timing_cache_path=str(path))
    assert backend.timing_cache_status == "new"
    assert rec.created_caches[0][0] == b""
    backend.prepare(conv_onnx(), "a")
    backend.prepare(conv_onnx(), "b")
    backend.close()  # saves
    saved = path.read_bytes()
    assert saved == b"|b0|b1"
    assert [p.name for p in path.parent.iterdir()] == ["trt.cache"]  # no tmp file left behind

    rec.created_caches.clear()
    second = TensorRTBackend(timing_cache_path=str(path))
    assert second.timing_cache_status == "loaded"
    assert rec.created_caches[0][0] == saved  # previous bytes handed to create_timing_cache
    second.prepare(conv_onnx(), "c")
    assert second.save_timing_cache() == str(path.resolve())
    assert path.read_bytes() == saved + b"|b0"  # loaded entries kept, one build added


def test_mismatched_timing_cache_is_discarded_not_fatal(install, rec, tmp_path):
    install(refuse_loaded_cache=True)
    path = tmp_path / "trt.cache"
    path.write_bytes(b"from-another-gpu")
    backend = TensorRTBackend(timing_cache_path=str(path))
    assert backend.timing_cache_status == "discarded (mismatch)"
    assert [c[0] for c in rec.created_caches] == [b"from-another-gpu", b""]
    backend.prepare(conv_onnx(), "a")  # builds with the fresh cache
    backend.close()
    assert path.read_bytes() == b"|b0"


def test_save_writes_via_tmp_file_and_os_replace(install, tmp_path, monkeypatch):
    install()
    path = tmp_path / "trt.cache"
    backend = TensorRTBackend(timing_cache_path=str(path))
    replaced = []
    real_replace = os.replace

    def spy(src, dst):
        replaced.append((src, dst))
        assert Path(src).parent == path.parent and Path(src).read_bytes() == b""
        real_replace(src, dst)

    monkeypatch.setattr(trt_backend.os, "replace", spy)
    backend.save_timing_cache()
    assert len(replaced) == 1 and Path(replaced[0][1]) == path


def test_no_cache_path_means_nothing_saved(install, tmp_path):
    install()
    backend = TensorRTBackend()
    backend.prepare(conv_onnx(), "a")
    assert backend.save_timing_cache() is None
    backend.close()
    backend.close()  # idempotent
    with pytest.raises(HalpError, match="closed"):
        backend.prepare(conv_onnx(), "b")


# ------------------------------------------------------------------------------ precision routes
def test_fp32_uses_plain_network_without_fp16_flag(install, rec):
    install()
    backend = TensorRTBackend(precision="fp32")
    backend.prepare(conv_onnx(), "a")
    assert ("create_network", 0) in rec.calls
    assert not any(c[0] == "set_flag" for c in rec.calls)
    ident = backend.identity()
    assert ident["fp16_route"] is None and ident["precision"] == "fp32"


def test_fp16_prefers_strongly_typed_network_and_feeds_fp16_graph(install, rec):
    trt = install(strongly_typed=True, fp16_flag=True)
    backend = TensorRTBackend(precision="fp16")
    backend.prepare(conv_onnx(), "a")
    flag = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert ("create_network", flag) in rec.calls
    assert not any(c[0] == "set_flag" for c in rec.calls)  # no deprecated FP16 flag
    parsed = onnx.load_from_string([c for c in rec.calls if c[0] == "parse"][0][1])
    assert parsed.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert all(t.data_type == TensorProto.FLOAT16 for t in parsed.graph.initializer)
    assert backend.identity()["fp16_route"] == "strongly_typed"


def test_fp16_graph_from_caller_is_passed_unchanged(install, rec):
    install(strongly_typed=True)
    backend = TensorRTBackend(precision="fp16")
    half = convert_onnx_to_fp16(conv_onnx())
    backend.prepare(half, "a")
    assert [c for c in rec.calls if c[0] == "parse"][0][1] == half


def test_fp16_falls_back_to_builder_flag_without_strongly_typed(install, rec):
    install(strongly_typed=False, fp16_flag=True)
    backend = TensorRTBackend(precision="fp16")
    original = conv_onnx()
    backend.prepare(original, "a")
    assert ("create_network", 0) in rec.calls
    assert ("set_flag", "FP16") in rec.calls
    assert [c for c in rec.calls if c[0] == "parse"][0][1] == original  # fp32 graph kept
    assert backend.identity()["fp16_route"] == "builder_flag"


def test_fp16_without_any_route_is_an_error(install):
    install(strongly_typed=False, fp16_flag=False)
    with pytest.raises(HalpError, match="fp16"):
        TensorRTBackend(precision="fp16")


# ------------------------------------------------------------------------------ failures
def test_parser_failure_names_label_and_parser_messages(install):
    install(parse_errors=[("conv_0", "Unsupported operator FancyConv"),
                          ("relu_0", "Input 0 is invalid")])
    backend = TensorRTBackend()
    with pytest.raises(HalpError) as info:
        backend.prepare(conv_onnx(), label="layer3.conv1 c=48")
    msg = str(info.value)
    assert "layer3.conv1 c=48" in msg
    assert "Unsupported operator FancyConv" in msg and "conv_0" in msg
    assert "Input 0 is invalid" in msg and "relu_0" in msg


def test_build_returning_none_is_a_halp_error_with_label(install):
    install(build_returns_none=True)
    backend = TensorRTBackend()
    with pytest.raises(HalpError) as info:
        backend.prepare(conv_onnx(), label="layer1.conv2 c=16")
    assert "layer1.conv2 c=16" in str(info.value)
    assert "no implementation for layer conv_0" in str(info.value)  # logged TensorRT error


# ------------------------------------------------------------------------------ running
def test_prepare_allocates_binds_and_warms_up(install, rec):
    install()
    backend = TensorRTBackend()
    handle = backend.prepare(conv_onnx(), "a")
    names = rec.names()
    # buffers for both I/O tensors bound before the first launch
    bound = [c[1] for c in rec.calls if c[0] == "set_tensor_address"]
    assert sorted(bound) == ["x", "y"]
    first_launch = names.index("execute_async_v3")
    assert max(i for i, n in enumerate(names) if n == "set_tensor_address") < first_launch
    assert ("set_input_shape", "x", (1, 3, 4, 4)) in rec.calls
    assert ("alloc", (1, 2, 4, 4), "float32") in rec.calls  # output shape from the context
    # warm-up inside prepare: >= warmup_min_runs launches and >= warmup_min_ms of GPU time
    launches = names.count("execute_async_v3")
    assert launches >= backend.warmup_min_runs
    assert handle.warmup_runs == launches
    assert handle.warmup_ms >= backend.warmup_min_ms


def test_time_runs_brackets_each_launch_with_events_on_non_default_stream(install, rec):
    install()
    backend = TensorRTBackend()
    handle = backend.prepare(conv_onnx(), "a")
    rec.calls.clear()
    times = backend.time_runs(handle, 5)
    assert times == [0.25] * 5  # each interval holds exactly one fake launch
    names = rec.names()
    assert "copy_h2d" not in names and "copy_d2h" not in names
    assert "alloc" not in names
    timed = names[: names.index("synchronize")]
    assert timed == ["event_record", "execute_async_v3", "event_record"] * 5
    assert names.count("synchronize") == 1
    launches = [c for c in rec.calls if c[0] == "execute_async_v3"]
    assert all(c[1] == fake.FakeCuda.STREAM_HANDLE != 0 for c in launches)
    records = [c for c in rec.calls if c[0] == "event_record"]
    assert all(c[2] == fake.FakeCuda.STREAM_HANDLE for c in records)
    assert backend.time_runs(handle, 0) == []


def test_cold_timing_evicts_l2_on_the_stream_before_each_timed_run(install, rec):
    from halp_trt.runtime.protocol import Protocol, measure_interleaved

    install()
    backend = TensorRTBackend()
    rec.calls.clear()
    measure_interleaved(backend, {"a": conv_onnx(), "b": conv_onnx()},
                        Protocol(rounds=3, cold_above_bytes=0, untimed_runs_per_round=0))
    names = rec.names()
    evictions = [i for i, n in enumerate(names) if n == "evict_l2"]
    assert len(evictions) == 2 * 3  # 2 graphs x 3 rounds, one timed run each
    for i in evictions:  # right before a timed interval, never inside one
        assert names[i + 1:i + 4] == ["event_record", "execute_async_v3", "event_record"]


def test_infer_copies_in_runs_and_copies_out(install, rec):
    install()
    backend = TensorRTBackend()
    handle = backend.prepare(conv_onnx(), "a")
    x = np.arange(48, dtype=np.float64).reshape(1, 3, 4, 4)  # cast to the engine's float32
    rec.calls.clear()
    (y,) = backend.infer(handle, [x])
    s = x.sum(axis=1)
    np.testing.assert_allclose(y, np.stack([s, 2 * s], axis=1))
    assert y.dtype == np.float32
    assert rec.names() == ["copy_h2d", "execute_async_v3", "copy_d2h", "synchronize"]
    with pytest.raises(HalpError, match="shape"):
        backend.infer(handle, [np.zeros((1, 3, 5, 5), np.float32)])
    with pytest.raises(HalpError, match="input"):
        backend.infer(handle, [])


def test_release_frees_handle(install):
    install()
    backend = TensorRTBackend()
    handle = backend.prepare(conv_onnx(), "a")
    backend.release(handle)
    backend.release(handle)  # idempotent
    assert handle.context is None and handle.engine is None and not handle.buffers
    with pytest.raises(HalpError, match="released"):
        backend.time_runs(handle, 1)


def test_identity_describes_runtime_device_and_settings(install):
    install(version="10.16.0-fake")
    ident = TensorRTBackend(precision="fp16", workspace_mb=512,
                            builder_optimization_level=1).identity()
    assert ident["runtime"] == "tensorrt"
    assert ident["runtime_version"] == "10.16.0-fake"
    assert ident["device"] == "Fake GPU" and ident["compute_capability"] == "8.9"
    assert ident["precision"] == "fp16" and ident["fp16_route"] == "strongly_typed"
    assert ident["builder_optimization_level"] == 1 and ident["workspace_mb"] == 512
    assert "cuda_runtime" in ident and "cuda_driver" in ident


def test_identity_names_the_backend_and_the_auto_table_cache_uses_it(install, tmp_path,
                                                                     monkeypatch):
    """Every backend's identity carries its registry name (TensorRT's lacked it, so the auto
    cache named tables '..._None_fp16.json'); whether it is verified is its own attribute."""
    from halp_trt.latency import resolve

    install()
    backend = TensorRTBackend(precision="fp16")
    assert backend.identity()["backend"] == "tensorrt"
    assert backend.verified is False and "contract-tested" in backend.verification_note
    monkeypatch.setenv("HALP_TRT_CACHE", str(tmp_path))
    made = {}

    def fake_build(model, shape, backend_, path, name, cfg):
        made["path"] = path
        raise KeyboardInterrupt  # stop before measuring: only the name is under test

    monkeypatch.setattr("halp_trt.latency.build.build_table", fake_build)
    with pytest.raises(KeyboardInterrupt):
        resolve.resolve_table("auto", None, "resnet18", (1, 3, 64, 64), [], backend)
    name = os.path.basename(made["path"])
    # model, input, backend, precision, then a tag of the machine (the GPU here)
    assert re.fullmatch(r"resnet18_1x3x64x64_tensorrt_fp16_[0-9a-f]{8}\.json", name), name


# ------------------------------------------------------------------------------ fp16 conversion
def test_convert_onnx_to_fp16_matches_fp32_reference():
    from onnx.reference import ReferenceEvaluator

    src = conv_onnx(cin=4, cout=8, hw=6)
    half = convert_onnx_to_fp16(src)
    model = onnx.load_from_string(half)
    onnx.checker.check_model(model)
    g = model.graph
    assert g.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert g.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    x = np.random.default_rng(0).uniform(-1, 1, (1, 4, 6, 6)).astype(np.float32)
    (ref,) = ReferenceEvaluator(onnx.load_from_string(src)).run(None, {"x": x})
    (out,) = ReferenceEvaluator(model).run(None, {"x": x.astype(np.float16)})
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), ref, rtol=2e-2, atol=2e-2)


def test_convert_onnx_to_fp16_refuses_unknown_ops():
    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")],
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        initializer=[numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(HalpError, match="Resize"):
        convert_onnx_to_fp16(model.SerializeToString())


def test_fp16_route_rejects_non_onnx_bytes_with_label(install):
    install(strongly_typed=True)
    backend = TensorRTBackend(precision="fp16")
    with pytest.raises(HalpError, match="broken-layer"):
        backend.prepare(b"not an onnx model", label="broken-layer")
