"""OpenVINO backend: the CPU plugin, configured for single-request latency.

Configuration, measured on this project's shared 2-core AMD EPYC (AVX-512 with BF16):
- inference precision is forced to f32. The CPU plugin's default on hosts with AVX512_BF16 or
  AMX is bf16 (read back as the plugin's default here), which ran a 3x3 128->128 conv at 32x32
  in 1.53 ms against 2.76 ms in f32 and would not match PyTorch to 1e-4;
- latency hint, one stream, INFERENCE_NUM_THREADS = threads: with one thread a synchronous
  ``infer()`` runs on the calling thread, as ONNX Runtime's single intra-op thread does;
- CPU pinning on, as OpenVINO's latency defaults do on Linux. It pins the calling thread to one
  core for the duration of each ``infer()`` and restores its affinity afterwards, which costs
  ~2 us per call (15 vs 13 us on a 16-channel conv at 8x8). ``pin_threads=False`` turns it off,
  e.g. when other processes pinned by OpenVINO would all land on the same core.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from halp_trt.errors import HalpError, MissingBackendError
from halp_trt.runtime.base import Backend
from halp_trt.runtime.machine import CpuCacheEvictor, cpu_identity


class OpenVinoBackend(Backend):
    name = "openvino"
    verified = True
    verification_note = "measured on this machine with OpenVINO's CPU plugin"

    def __init__(self, device: str = "CPU", threads: int = 1, precision: str = "fp32",
                 pin_threads: bool = True):
        try:
            import openvino as ov
            import openvino.properties as props
            import openvino.properties.device as device_props
            import openvino.properties.hint as hints
            import openvino.properties.streams as streams
        except ImportError as exc:
            raise MissingBackendError("OpenVINO", "openvino", str(exc)) from exc
        if str(device).upper() != "CPU":
            # the config below (threads, pinning, cache flush) is the CPU plugin's
            raise HalpError(f"the OpenVINO backend supports the CPU device only, not {device!r}")
        if precision != "fp32":
            raise HalpError(f"the OpenVINO backend measures fp32 graphs only, not {precision!r}")
        if int(threads) < 1:
            raise HalpError(f"threads must be >= 1, got {threads}")
        self._ov = ov
        self._core = ov.Core()
        self.device, self.threads, self.precision = "CPU", int(threads), precision
        supported = self._core.get_property(self.device, props.supported_properties)
        # pinning exists on the x86/ARM CPU plugins; where it does not, say so in the identity
        self.pin_threads = bool(pin_threads) and hints.enable_cpu_pinning() in supported
        self._config = {
            hints.performance_mode: hints.PerformanceMode.LATENCY,
            streams.num: 1,
            props.inference_num_threads: self.threads,
            hints.inference_precision: ov.Type.f32,
        }
        if hints.enable_cpu_pinning() in supported:
            self._config[hints.enable_cpu_pinning] = self.pin_threads
        self._precision_key = hints.inference_precision
        self._device_name = self._core.get_property(self.device, device_props.full_name)
        self._capabilities = (list(self._core.get_property(self.device, device_props.capabilities))
                              if device_props.capabilities() in supported else None)
        self._evictor = CpuCacheEvictor()

    def _identity_impl(self) -> dict:
        ident = {"runtime": "openvino", "runtime_version": self._ov.get_version(),
                 "device": "cpu", "ov_device_name": self._device_name,
                 "precision": self.precision, "threads": self.threads,
                 "optimization_level": "default", "performance_hint": "latency", "streams": 1,
                 "cpu_pinning": self.pin_threads}
        if self._capabilities is not None:
            ident["ov_optimization_capabilities"] = self._capabilities
        ident.update(cpu_identity())
        return ident

    def _prepare_impl(self, onnx_bytes: bytes, label: str = "") -> Any:
        ov = self._ov
        try:
            model = self._core.read_model(onnx_bytes)  # bytes are parsed in memory, no file
            compiled = self._core.compile_model(model, self.device, self._config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses for bad graphs
            raise HalpError(f"OpenVINO could not compile {label or 'the graph'}: {exc}") from exc
        got = compiled.get_property(self._precision_key)
        if got != ov.Type.f32:  # a silent bf16 would time a different kernel family
            raise HalpError(f"OpenVINO compiled {label or 'the graph'} for {got}, not f32")
        request = compiled.create_infer_request()
        rng = np.random.default_rng(0)
        feeds = []
        for i, port in enumerate(compiled.inputs):
            shape = [d.get_length() if d.is_static else 1 for d in port.get_partial_shape()]
            dtype = np.float16 if port.get_element_type() == ov.Type.f16 else np.float32
            feeds.append(rng.standard_normal(shape).astype(dtype))
            request.set_input_tensor(i, ov.Tensor(feeds[-1]))
        for _ in range(2):  # first runs allocate memory and pick kernels
            request.infer()
        return {"compiled": compiled, "request": request, "feeds": feeds}

    def _time_runs_impl(self, handle: Any, n_runs: int) -> list[float]:
        infer = handle["request"].infer
        times_ms = []
        for _ in range(n_runs):
            t0 = time.perf_counter()
            infer()
            times_ms.append((time.perf_counter() - t0) * 1e3)
        return times_ms

    def _infer_impl(self, handle: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        # a request of its own, so the timed request keeps its resident random inputs
        if "check_request" not in handle:
            handle["check_request"] = handle["compiled"].create_infer_request()
        request = handle["check_request"]
        for i, x in enumerate(inputs):
            request.set_input_tensor(i, self._ov.Tensor(x))
        request.infer()
        return [request.get_output_tensor(i).data.copy()
                for i in range(len(handle["compiled"].outputs))]

    def flush_cache(self, level: str = "llc") -> None:
        # see the ONNX Runtime backend for the cliff that warm weights put into a table
        self._evictor.evict(level)

    def release(self, handle: Any) -> None:
        handle.clear()

    def close(self) -> None:
        self._evictor.release()
