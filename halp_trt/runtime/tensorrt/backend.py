"""TensorRT 10 latency backend (GPU): each per-layer ONNX graph is parsed into a TensorRT network,
built into an engine, and timed with CUDA events around ``execute_async_v3`` on a non-default
stream.

Written from the TensorRT 10 Python API without a GPU: the contract tests run against a fake
``tensorrt`` module; ``tests/test_tensorrt_real.py`` is the check on real hardware. Design
points are in ``TensorRTBackend``'s docstring."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from halp_trt.fileio import write_bytes_atomic
from halp_trt.runtime.base import Backend
from halp_trt.errors import HalpError, MissingBackendError
from halp_trt.runtime.onnx_utils import convert_onnx_to_fp16, has_float32
from halp_trt.runtime.tensorrt.cuda import TorchCuda
from halp_trt.runtime.tensorrt.logger import get_logger

log = logging.getLogger(__name__)

_PRECISIONS = ("fp32", "fp16")

#: Factory for the CUDA seam; the contract tests replace it with a recording fake.
_make_cuda = TorchCuda


# --------------------------------------------------------------------------------------------
# Handle
# --------------------------------------------------------------------------------------------
@dataclass
class _TensorSpec:
    name: str
    shape: tuple
    dtype: np.dtype


@dataclass
class TensorRTHandle:
    """A built, warmed engine with resident device buffers."""

    label: str
    engine: Any
    context: Any
    inputs: list[_TensorSpec]
    outputs: list[_TensorSpec]
    buffers: dict[str, Any] = field(default_factory=dict)
    warmup_runs: int = 0
    warmup_ms: float = 0.0
    build_seconds: float = 0.0
    released: bool = False


# --------------------------------------------------------------------------------------------
# Backend
# --------------------------------------------------------------------------------------------
class TensorRTBackend(Backend):
    """TensorRT engines on one CUDA device.

    * ``tensorrt`` and ``torch`` are imported in the constructor only, so importing this module
      is cheap and works on machines without either.
    * One ``trt.Builder`` and one timing cache per backend instance, reused for every build:
      builder creation is slow and the timing cache is what makes building hundreds of layer
      variants affordable. ``save_timing_cache()`` (also called by ``close()``) persists it.
    * Device buffers, the stream and the events come from torch CUDA behind the small
      ``TorchCuda`` seam (``cuda.py``), which the contract tests replace via ``_make_cuda``.
    * fp16: the strongly typed route when ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
      exists (it runs in the graph's precision, so a float32 graph is converted with
      :func:`convert_onnx_to_fp16`, simple CNN/MLP op set only); else ``BuilderFlag.FP16``
      (deprecated since 10.12) on the float32 graph. ``identity()["fp16_route"]`` says which."""

    name = "tensorrt"
    verified = False
    verification_note = ("TensorRT path: written from the API and contract-tested; these numbers "
                         "come from the machine it ran on")

    #: warm-up in prepare(): at least this many launches and this much GPU time
    warmup_min_runs = 10
    warmup_min_ms = 50.0
    warmup_max_runs = 20000

    def __init__(
        self,
        precision: str = "fp32",
        timing_cache_path: str | None = None,
        workspace_mb: int = 1024,
        builder_optimization_level: int | None = None,
        device: int = 0,
    ):
        if precision not in _PRECISIONS:
            raise HalpError(f"TensorRT precision must be one of {_PRECISIONS}, not {precision!r}.")
        if builder_optimization_level is not None and not 0 <= int(builder_optimization_level) <= 5:
            raise HalpError(
                f"builder_optimization_level must be 0..5, not {builder_optimization_level!r}."
            )
        if int(workspace_mb) <= 0:
            raise HalpError(f"workspace_mb must be positive, not {workspace_mb!r}.")
        self.precision = precision
        self.timing_cache_path = os.fspath(timing_cache_path) if timing_cache_path else None
        self.workspace_mb = int(workspace_mb)
        self.builder_optimization_level = (
            None if builder_optimization_level is None else int(builder_optimization_level)
        )
        self.device = int(device)
        self._closed = False

        try:
            import tensorrt as trt
        except (ImportError, OSError) as exc:  # OSError: wheel present, libnvinfer missing
            raise MissingBackendError("TensorRT", "trt", str(exc)) from exc
        self._trt = trt

        # CUDA first, so the builder and runtime see the selected device's context.
        self._cuda = _make_cuda(self.device)
        self._stream = self._cuda.new_stream()
        self._stream_handle = self._cuda.stream_handle(self._stream)

        self._logger = get_logger(trt)
        self._builder = trt.Builder(self._logger)
        self._runtime = trt.Runtime(self._logger)

        self._network_flags, self._fp16_route = self._choose_precision_route()

        self._timing_cache_status = "new"
        self._timing_cache = self._load_timing_cache()

    # ---------------------------------------------------------------- setup helpers
    def _choose_precision_route(self) -> tuple[int, str | None]:
        trt = self._trt
        if self.precision == "fp32":
            return 0, None
        strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if strongly is not None:
            return 1 << int(strongly), "strongly_typed"
        if hasattr(trt.BuilderFlag, "FP16"):
            return 0, "builder_flag"
        raise HalpError(
            f"This TensorRT ({getattr(trt, '__version__', '?')}) offers neither strongly typed "
            "networks nor BuilderFlag.FP16, so fp16 engines cannot be built."
        )

    def _load_timing_cache(self):
        # create_timing_cache lives on a builder config; the cache object outlives that config
        # and is attached to every later config, so all builds share (and extend) it.
        config = self._builder.create_builder_config()
        previous = b""
        if self.timing_cache_path and os.path.exists(self.timing_cache_path):
            with open(self.timing_cache_path, "rb") as f:
                previous = f.read()
        cache = None
        if previous:
            try:
                cache = config.create_timing_cache(previous)
            except Exception as exc:  # noqa: BLE001 - a bad cache must not stop measuring
                log.warning("Ignoring unreadable TensorRT timing cache %s: %s",
                            self.timing_cache_path, exc)
            # A cache from another device or TensorRT version is refused here, not mid-table.
            if cache is not None and not _ok(config.set_timing_cache(cache, False)):
                log.warning("Ignoring TensorRT timing cache %s: made on another device or "
                            "TensorRT version", self.timing_cache_path)
                cache = None
                self._timing_cache_status = "discarded (mismatch)"
            elif cache is None:
                self._timing_cache_status = "discarded (unreadable)"
            else:
                self._timing_cache_status = "loaded"
        if cache is None:
            cache = config.create_timing_cache(b"")
        if cache is None:
            raise HalpError("TensorRT could not create a timing cache.")
        return cache

    @property
    def timing_cache_status(self) -> str:
        """"new", "loaded", or "discarded (...)" when the file at start could not be used."""
        return self._timing_cache_status

    def _check_open(self) -> None:
        if self._closed:
            raise HalpError("This TensorRT backend has been closed.")

    # ---------------------------------------------------------------- Backend API
    def _identity_impl(self) -> dict:
        ident = {
            "runtime": "tensorrt",
            "runtime_version": str(getattr(self._trt, "__version__", "unknown")),
            "precision": self.precision,
            "fp16_route": self._fp16_route,
            "network": "strongly_typed" if self._fp16_route == "strongly_typed" else "weakly_typed",
            "builder_optimization_level": self.builder_optimization_level,  # None: TRT default
            "workspace_mb": self.workspace_mb,
            "timing": "cuda_events_per_launch_non_default_stream",
        }
        if self._fp16_route == "strongly_typed":
            ident["fp16_graph"] = "float32 graphs converted by convert_onnx_to_fp16"
        ident.update(self._cuda.info())
        return ident

    def _prepare_impl(self, onnx_bytes: bytes, label: str = "") -> TensorRTHandle:
        self._check_open()
        trt = self._trt
        label = label or "(unnamed graph)"
        onnx_bytes = bytes(onnx_bytes)
        self._logger.errors.clear()  # so failure messages only show this graph's errors
        if self._fp16_route == "strongly_typed" and has_float32(onnx_bytes, label):
            onnx_bytes = convert_onnx_to_fp16(onnx_bytes, label=label)

        t0 = time.perf_counter()
        network = self._builder.create_network(self._network_flags)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx_bytes):
            raise HalpError(
                f"TensorRT could not parse the ONNX graph for {label}:\n"
                + "\n".join(f"  - {e}" for e in _parser_errors(parser))
            )

        config = self._builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_mb << 20)
        if self.builder_optimization_level is not None:
            config.builder_optimization_level = self.builder_optimization_level
        if self._fp16_route == "builder_flag":
            config.set_flag(trt.BuilderFlag.FP16)
        if not _ok(config.set_timing_cache(self._timing_cache, False)):  # ignore_mismatch=False
            raise HalpError(f"TensorRT refused the timing cache while building {label}.")

        plan = self._builder.build_serialized_network(network, config)
        if plan is None:
            raise HalpError(
                f"TensorRT failed to build an engine for {label}"
                + self._logged_errors("no error was logged; try a larger workspace_mb")
            )
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise HalpError(f"TensorRT could not deserialize the engine for {label}"
                            + self._logged_errors(""))
        build_seconds = time.perf_counter() - t0
        context = engine.create_execution_context()
        if context is None:
            raise HalpError(f"TensorRT could not create an execution context for {label} "
                            "(out of device memory?)" + self._logged_errors(""))

        inputs, outputs = self._io_specs(engine, context, label)
        handle = TensorRTHandle(label, engine, context, inputs, outputs,
                                build_seconds=build_seconds)
        for spec in inputs + outputs:
            buf = self._cuda.empty(spec.shape, spec.dtype)
            handle.buffers[spec.name] = buf
            if not _ok(context.set_tensor_address(spec.name, self._cuda.data_ptr(buf))):
                raise HalpError(f"TensorRT rejected the buffer for tensor {spec.name!r} of {label}.")
        for spec in inputs:
            self._cuda.fill_random(handle.buffers[spec.name], self._stream)
        self._warm_up(handle)
        return handle

    def _time_runs_impl(self, handle: TensorRTHandle, n_runs: int) -> list[float]:
        self._check_handle(handle)
        n_runs = int(n_runs)
        if n_runs <= 0:
            return []
        cuda, stream, ctx = self._cuda, self._stream, handle.context
        self._logger.errors.clear()
        starts = [cuda.new_event() for _ in range(n_runs)]
        ends = [cuda.new_event() for _ in range(n_runs)]
        # Launches go back to back; each is bracketed by its own event pair on the same stream,
        # so each interval is that launch's GPU time. No copies, one sync at the end.
        for start, end in zip(starts, ends):
            cuda.record(start, stream)
            ok = ctx.execute_async_v3(self._stream_handle)
            cuda.record(end, stream)
            if not _ok(ok):
                cuda.synchronize(stream)
                raise HalpError(f"TensorRT execution failed for {handle.label}"
                                + self._logged_errors(""))
        cuda.synchronize(stream)
        return [cuda.elapsed_ms(s, e) for s, e in zip(starts, ends)]

    def _infer_impl(self, handle: TensorRTHandle, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        self._check_handle(handle)
        if len(inputs) != len(handle.inputs):
            raise HalpError(f"{handle.label} takes {len(handle.inputs)} input(s), "
                            f"got {len(inputs)}.")
        cuda, stream = self._cuda, self._stream
        for spec, arr in zip(handle.inputs, inputs):
            arr = np.ascontiguousarray(np.asarray(arr), dtype=spec.dtype)
            if tuple(arr.shape) != spec.shape:
                raise HalpError(f"Input {spec.name!r} of {handle.label} has shape {spec.shape}, "
                                f"got {tuple(arr.shape)} (engines are built for static shapes).")
            cuda.copy_from_host(handle.buffers[spec.name], arr, stream)
        if not _ok(handle.context.execute_async_v3(self._stream_handle)):
            raise HalpError(f"TensorRT execution failed for {handle.label}"
                            + self._logged_errors(""))
        outs = [cuda.copy_to_host(handle.buffers[s.name], stream) for s in handle.outputs]
        cuda.synchronize(stream)
        # The infer() copies overwrote the random timing inputs; harmless, values don't matter.
        return outs

    def flush_cache(self, level: str = "llc") -> None:
        """Evict the GPU's L2 (layers timed cold, as inside a whole model; ``level`` names CPU
        cache levels and does not apply)."""
        self._check_open()
        self._cuda.evict_l2(self._stream)

    def release(self, handle: TensorRTHandle) -> None:
        if handle is None or handle.released:
            return
        self._cuda.synchronize(self._stream)  # nothing may still use the buffers
        # Context before engine before buffers: each depends on the next.
        handle.context = None
        handle.engine = None
        handle.buffers.clear()
        handle.released = True

    def save_timing_cache(self) -> str | None:
        """Write the timing cache to ``timing_cache_path`` atomically; return the path."""
        if not self.timing_cache_path or self._timing_cache is None:
            return None
        data = memoryview(self._timing_cache.serialize()).tobytes()
        path = os.path.abspath(self.timing_cache_path)
        write_bytes_atomic(path, data)
        return path

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.save_timing_cache()
        finally:
            self._closed = True
            self._timing_cache = None
            self._builder = None
            self._runtime = None

    # ---------------------------------------------------------------- internals
    def _io_specs(self, engine, context, label) -> tuple[list[_TensorSpec], list[_TensorSpec]]:
        trt = self._trt
        inputs, outputs = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            mode = engine.get_tensor_mode(name)
            dtype = _np_dtype(trt, engine.get_tensor_dtype(name), name, label)
            if mode == trt.TensorIOMode.INPUT:
                shape = tuple(int(d) for d in engine.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise HalpError(f"Input {name!r} of {label} has a dynamic shape {shape}; "
                                    "export layer graphs with static shapes.")
                if not _ok(context.set_input_shape(name, shape)):
                    raise HalpError(f"TensorRT rejected shape {shape} for input {name!r} of "
                                    f"{label}.")
                inputs.append(_TensorSpec(name, shape, dtype))
            elif mode == trt.TensorIOMode.OUTPUT:
                outputs.append(_TensorSpec(name, None, dtype))
        for spec in outputs:  # resolved once all input shapes are set
            spec.shape = tuple(int(d) for d in context.get_tensor_shape(spec.name))
            if any(d < 0 for d in spec.shape):
                raise HalpError(f"Output {spec.name!r} of {label} has an unresolved shape "
                                f"{spec.shape}.")
        return inputs, outputs

    def _warm_up(self, handle: TensorRTHandle) -> None:
        # Batches double in size so short kernels don't pay one host sync per launch.
        cuda, stream, ctx = self._cuda, self._stream, handle.context
        runs, gpu_ms, batch = 0, 0.0, max(1, self.warmup_min_runs)
        while runs < self.warmup_max_runs:
            batch = min(batch, self.warmup_max_runs - runs)
            start, end = cuda.new_event(), cuda.new_event()
            cuda.record(start, stream)
            for _ in range(batch):
                if not _ok(ctx.execute_async_v3(self._stream_handle)):
                    cuda.synchronize(stream)
                    raise HalpError(f"TensorRT execution failed for {handle.label} during "
                                    "warm-up" + self._logged_errors(""))
            cuda.record(end, stream)
            cuda.synchronize(stream)
            runs += batch
            gpu_ms += cuda.elapsed_ms(start, end)
            if runs >= self.warmup_min_runs and gpu_ms >= self.warmup_min_ms:
                break
            batch = runs
        handle.warmup_runs, handle.warmup_ms = runs, gpu_ms

    def _check_handle(self, handle: TensorRTHandle) -> None:
        self._check_open()
        if not isinstance(handle, TensorRTHandle):
            raise HalpError("Not a TensorRT handle (was it prepared by another backend?).")
        if handle.released:
            raise HalpError(f"The handle for {handle.label} has been released.")

    def _logged_errors(self, fallback: str) -> str:
        errors = list(self._logger.errors)
        if errors:
            return ":\n" + "\n".join(f"  - {e}" for e in errors)
        return f" ({fallback})." if fallback else "."


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _ok(result) -> bool:
    # TensorRT returns bool; some bindings return None for void calls.
    return result is None or bool(result)


def _np_dtype(trt, trt_dtype, name: str, label: str) -> np.dtype:
    try:
        return np.dtype(trt.nptype(trt_dtype))
    except TypeError as exc:
        raise HalpError(f"Tensor {name!r} of {label} has type {trt_dtype}, which has no numpy "
                        "equivalent; keep graph inputs/outputs in fp32 or fp16.") from exc


def _parser_errors(parser) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        desc = _call(err, "desc") or str(err)
        node = _call(err, "node_name")  # node_name() exists in TensorRT >= 10
        if not node:
            index = _call(err, "node")
            node = f"#{index}" if index is not None and index != -1 else None
        code = _call(err, "code")
        out.append(f"{'node ' + str(node) if node else 'graph'}: {desc}"
                   + (f" [{code}]" if code is not None else ""))
    return out or ["(the parser reported no details)"]


def _call(obj, method: str):
    fn = getattr(obj, method, None)
    if fn is None:
        return None
    try:
        return fn()
    except Exception:  # noqa: BLE001 - error details are best-effort
        return None


