"""ONNX Runtime backend: CPU execution provider by default (runs anywhere), CUDA or TensorRT
execution providers when onnxruntime-gpu provides them.

CPU defaults, measured on this project's shared 2-core machines: one intra-op thread (two were
bimodal), sequential execution, graph optimization ALL (with BASIC the 8-channel
steps of MLAS's NCHWc kernels disappear, so the level is part of the table's identity).

``precision="int8"`` (CPU provider only) times graphs statically quantized to INT8 in QDQ form
(``halp_trt.runtime.quantize``): an fp32 graph is quantized with synthetic calibration when it is
prepared, a graph that already quantizes (a whole model calibrated on real data) runs as given.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from halp_trt.runtime.base import Backend
from halp_trt.runtime.machine import CpuCacheEvictor, cpu_identity
from halp_trt.runtime.onnx_utils import graph_inputs
from halp_trt.runtime.quantize import QUANT_SCHEME, is_quantized, quantize_qdq
from halp_trt.errors import HalpError, MissingBackendError

_OPT_LEVELS = ("disable", "basic", "extended", "all")
_PRECISIONS = ("fp32", "int8")
_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
              "tensorrt": "TensorrtExecutionProvider"}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    verified = True
    verification_note = "measured on this machine with ONNX Runtime"

    def __init__(self, provider: str = "cpu", threads: int = 1, optimization: str = "all",
                 precision: str = "fp32"):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MissingBackendError("ONNX Runtime", "ort", str(exc)) from exc
        if provider not in _PROVIDERS:
            raise HalpError(f"unknown ONNX Runtime provider {provider!r}; use one of "
                            f"{sorted(_PROVIDERS)}")
        if _PROVIDERS[provider] not in ort.get_available_providers():
            raise MissingBackendError(f"ONNX Runtime's {_PROVIDERS[provider]}", "gpu",
                                      f"available: {ort.get_available_providers()}")
        if optimization not in _OPT_LEVELS:
            raise HalpError(f"unknown optimization level {optimization!r}; use one of "
                            f"{_OPT_LEVELS}")
        if precision not in _PRECISIONS:
            raise HalpError(f"the ONNX Runtime backend measures {' or '.join(_PRECISIONS)} graphs, "
                            f"not {precision!r}")
        if precision == "int8" and provider != "cpu":
            raise HalpError("ONNX Runtime int8 is measured with the CPU provider only (its QDQ "
                            f"kernels); provider {provider!r} would time something else")
        self._ort = ort
        self.provider, self.threads, self.optimization = provider, int(threads), optimization
        self.precision = precision
        self._evictor = CpuCacheEvictor()
        # (fp32 bytes, int8 bytes) of the last graph quantized: sessions_per_graph > 1 prepares
        # one graph several times in a row, and quantization costs as much as a session build
        self._last_quantized: tuple[bytes, bytes] | None = None
        # int8: inputs of the deployed model from the task (the pipeline sets them), used to
        # calibrate every graph whose single input has their shape — the whole models timed
        # during pruning are then quantized as the deployed ones will be (seen: synthetic
        # calibration timed a pruned resnet18 at 0.50 of the original, task data at 0.40)
        self.int8_calibration: list[np.ndarray] | None = None

    def _identity_impl(self) -> dict:
        ident = {"runtime": "onnxruntime",
                 "runtime_version": self._ort.__version__,
                 "provider": _PROVIDERS[self.provider], "precision": self.precision,
                 "threads": self.threads, "optimization_level": self.optimization}
        if self.provider == "cpu":
            ident["device"] = "cpu"
            ident.update(cpu_identity())
        else:
            ident["device"] = self.provider
        if self.precision == "int8":
            ident["quantization"] = dict(QUANT_SCHEME)
        return ident

    def _session_options(self):
        ort = self._ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[self.optimization]
        so.log_severity_level = 3
        # Sessions of one small graph reading a few percent apart for their lives is not set
        # here: on a 0.75 ms resnet18 (Zen 4), arena off, memory pattern off, no spinning,
        # pinning, IOBinding and input alignment all left 8 sessions 21-36% apart; enough
        # untimed runs before each timed one (Protocol.warm_ms) brought them to 1-2%.
        return so

    def int8_graph(self, onnx_bytes: bytes, label: str = "") -> bytes:
        """The INT8 (QDQ) graph this backend times for ``onnx_bytes``: as given when it already
        quantizes, else quantized with ``int8_calibration`` (whole models) or synthetic
        calibration (layer graphs). Deploy the bytes this returns to run what was timed."""
        if self.precision != "int8":
            raise HalpError(f"int8_graph needs an int8 backend; this one measures {self.precision}")
        try:
            if is_quantized(onnx_bytes):
                return onnx_bytes
        except Exception as exc:  # not parseable as ONNX
            raise HalpError(f"{label or 'the graph'} is not a readable ONNX graph: {exc}") from exc
        if self._last_quantized is not None and self._last_quantized[0] == onnx_bytes:
            return self._last_quantized[1]
        try:
            int8 = quantize_qdq(onnx_bytes, self._task_feeds(onnx_bytes))
        except HalpError as exc:
            raise HalpError(f"{label or 'the graph'}: {exc}") from exc
        self._last_quantized = (onnx_bytes, int8)
        return int8

    def _task_feeds(self, onnx_bytes: bytes) -> list[dict] | None:
        """Calibration feeds from ``int8_calibration`` when the graph takes one input of their
        shape (a whole model), else None (synthetic: per-layer graphs)."""
        if not self.int8_calibration:
            return None
        inputs = graph_inputs(onnx_bytes)
        if len(inputs) != 1:
            return None
        dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
        if list(self.int8_calibration[0].shape) != dims:
            return None
        return [{inputs[0].name: x} for x in self.int8_calibration]

    def _prepare_impl(self, onnx_bytes: bytes, label: str = "") -> Any:
        if self.precision == "int8":
            onnx_bytes = self.int8_graph(onnx_bytes, label)
        try:
            sess = self._ort.InferenceSession(onnx_bytes, sess_options=self._session_options(),
                                              providers=[_PROVIDERS[self.provider]])
        except Exception as exc:  # ORT raises its own exception types for bad graphs
            raise HalpError(f"ONNX Runtime could not build a session for {label or 'the graph'}:"
                            f" {exc}") from exc
        feeds = {}
        for inp in sess.get_inputs():
            shape = [d if isinstance(d, int) else 1 for d in inp.shape]
            dtype = np.float16 if "float16" in inp.type else np.float32
            feeds[inp.name] = np.random.default_rng(0).standard_normal(shape).astype(dtype)
        handle = {"session": sess, "feeds": feeds}
        for _ in range(2):  # first runs allocate arenas and pick kernels
            sess.run(None, feeds)
        return handle

    def _time_runs_impl(self, handle: Any, n_runs: int) -> list[float]:
        sess, feeds = handle["session"], handle["feeds"]
        times_ms = []
        for _ in range(n_runs):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            times_ms.append((time.perf_counter() - t0) * 1e3)
        return times_ms

    def _infer_impl(self, handle: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        sess = handle["session"]
        feeds = {i.name: x for i, x in zip(sess.get_inputs(), inputs)}
        return sess.run(None, feeds)

    def flush_cache(self, level: str = "llc") -> None:
        # Measured here: a 3x3 512->512 conv at 2x2 took 0.29 ms at 448 output channels (8.3 MB
        # of weights, still cached between back-to-back runs) and 0.6-0.75 ms at 465-512 — a
        # cliff that a whole resnet18, whose weights never stay cached, does not have.
        if self.provider == "cpu":
            self._evictor.evict(level)

    def release(self, handle: Any) -> None:
        handle.clear()
