"""A recording stand-in for the ``tensorrt`` module and the backend's CUDA seam.

Only the TensorRT 10 API surface that ``halp_trt.runtime.tensorrt`` uses is modelled. Every call
that matters for the contract is appended to ``Recorder.calls`` as a tuple, in order, from both
the fake TensorRT side and the fake CUDA side, so tests can assert on sequences (e.g. "event,
launch, event" with no copies in between).

The fake engine has one input ``x`` (float32, ``input_shape``) and one output ``y`` whose channel
``k`` is ``(k + 1) * x.sum(axis=1)``; its "kernel" runs on the numpy arrays that back the fake
device buffers, so ``infer`` round trips are checkable without torch.
"""
from __future__ import annotations

import itertools
import types
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Recorder:
    calls: list = field(default_factory=list)
    builders: list = field(default_factory=list)
    configs: list = field(default_factory=list)
    created_caches: list = field(default_factory=list)  # (bytes passed, cache object)
    launches: int = 0
    memory: dict = field(default_factory=dict)  # fake device pointer -> numpy array

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


class _Enum:
    """Enough of a pybind enum: named members with ``int()``."""

    def __init__(self, name: str, value: int):
        self.name, self.value = name, value

    def __int__(self):
        return self.value

    def __repr__(self):
        return f"<{self.name}: {self.value}>"


def _enum_namespace(**members: int):
    return types.SimpleNamespace(**{k: _Enum(k, v) for k, v in members.items()})


def make_fake_trt(
    recorder: Recorder,
    *,
    strongly_typed: bool = True,
    fp16_flag: bool = True,
    parse_errors: list[tuple[str, str]] | None = None,
    build_returns_none: bool = False,
    refuse_loaded_cache: bool = False,
    input_shape: tuple = (1, 3, 4, 4),
    out_channels: int = 2,
    version: str = "10.16.0-fake",
) -> types.ModuleType:
    """Build a fake ``tensorrt`` module whose calls land in ``recorder``."""
    rec = recorder
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    severity = _enum_namespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

    class ILogger:
        Severity = severity

        def __init__(self):
            pass

    class Logger(ILogger):
        WARNING = severity.WARNING

    trt.ILogger, trt.Logger = ILogger, Logger

    flag_members = {"EXPLICIT_BATCH": 0}
    if strongly_typed:
        flag_members["STRONGLY_TYPED"] = 1
    trt.NetworkDefinitionCreationFlag = _enum_namespace(**flag_members)
    builder_flags = {"TF32": 7}
    if fp16_flag:
        builder_flags["FP16"] = 0
    trt.BuilderFlag = _enum_namespace(**builder_flags)
    trt.MemoryPoolType = _enum_namespace(WORKSPACE=0)
    trt.TensorIOMode = _enum_namespace(NONE=0, INPUT=1, OUTPUT=2)
    trt.DataType = _enum_namespace(FLOAT=0, HALF=1, BF16=7)
    trt.float32, trt.float16, trt.bfloat16 = trt.DataType.FLOAT, trt.DataType.HALF, trt.DataType.BF16

    def nptype(dt):
        mapping = {trt.float32: np.float32, trt.float16: np.float16}
        if dt in mapping:
            return mapping[dt]
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

    trt.nptype = nptype

    class TimingCache:
        def __init__(self, data: bytes):
            self.data = bytes(data)
            self.builds: list[str] = []

        def serialize(self) -> bytes:
            # grows with each build, like a real cache gaining tactic timings
            return self.data + b"".join(b"|" + b.encode() for b in self.builds)

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.onnx_bytes = None

    class ParserError:
        def __init__(self, node, desc):
            self._node, self._desc = node, desc

        def desc(self):
            return self._desc

        def node_name(self):
            return self._node

        def code(self):
            return "UNSUPPORTED_NODE"

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self._errors = []

        def parse(self, model):
            rec.calls.append(("parse", bytes(model)))
            self.network.onnx_bytes = bytes(model)
            if parse_errors:
                self._errors = [ParserError(n, d) for n, d in parse_errors]
                return False
            return True

        @property
        def num_errors(self):
            return len(self._errors)

        def get_error(self, i):
            return self._errors[i]

    trt.OnnxParser = OnnxParser

    class BuilderConfig:
        def __init__(self):
            self.pool_limits = {}
            self.flags = set()
            self.timing_cache = None
            self.builder_optimization_level = 3  # TensorRT's default

        def set_memory_pool_limit(self, pool, size):
            rec.calls.append(("set_memory_pool_limit", pool.name, size))
            self.pool_limits[pool.name] = size

        def set_flag(self, flag):
            rec.calls.append(("set_flag", flag.name))
            self.flags.add(flag.name)

        def create_timing_cache(self, serialized_timing_cache):
            cache = TimingCache(serialized_timing_cache)
            rec.created_caches.append((bytes(serialized_timing_cache), cache))
            rec.calls.append(("create_timing_cache", bytes(serialized_timing_cache)))
            return cache

        def set_timing_cache(self, cache, ignore_mismatch):
            rec.calls.append(("set_timing_cache", id(cache), ignore_mismatch))
            if refuse_loaded_cache and cache.data:  # e.g. a cache made on another GPU
                return False
            self.timing_cache = cache
            return True

    class Builder:
        def __init__(self, logger):
            rec.builders.append(self)
            rec.calls.append(("Builder",))
            self.logger = logger

        def create_network(self, flags=0):
            rec.calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            config = BuilderConfig()
            rec.configs.append(config)
            return config

        def build_serialized_network(self, network, config):
            rec.calls.append(("build_serialized_network", network.flags))
            if build_returns_none:
                self.logger.log(severity.ERROR, "fake: no implementation for layer conv_0")
                return None
            if config.timing_cache is not None:
                config.timing_cache.builds.append(f"b{len(config.timing_cache.builds)}")
            return b"PLAN"

    trt.Builder = Builder

    in_shape = tuple(input_shape)
    out_shape = (in_shape[0], out_channels) + in_shape[2:]

    class ExecutionContext:
        def __init__(self):
            self.addresses = {}
            self.input_shapes = {}

        def set_input_shape(self, name, shape):
            rec.calls.append(("set_input_shape", name, tuple(shape)))
            self.input_shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return {"x": in_shape, "y": out_shape}[name]

        def set_tensor_address(self, name, memory):
            rec.calls.append(("set_tensor_address", name, memory))
            self.addresses[name] = memory
            return True

        def execute_async_v3(self, stream_handle):
            rec.calls.append(("execute_async_v3", stream_handle))
            rec.launches += 1
            x = rec.memory[self.addresses["x"]]
            y = rec.memory[self.addresses["y"]]
            s = x.sum(axis=1)
            for k in range(out_channels):
                y[:, k] = (k + 1) * s
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["x", "y"][i]

        def get_tensor_mode(self, name):
            return {"x": trt.TensorIOMode.INPUT, "y": trt.TensorIOMode.OUTPUT}[name]

        def get_tensor_shape(self, name):
            return {"x": in_shape, "y": (-1, out_channels) + in_shape[2:]}[name]

        def get_tensor_dtype(self, name):
            return trt.float32

        def create_execution_context(self):
            rec.calls.append(("create_execution_context",))
            return ExecutionContext()

    class Runtime:
        def __init__(self, logger):
            rec.calls.append(("Runtime",))

        def deserialize_cuda_engine(self, plan):
            rec.calls.append(("deserialize_cuda_engine", bytes(plan)))
            return Engine()

    trt.Runtime = Runtime
    return trt


class FakeEvent:
    def __init__(self, n):
        self.n = n
        self.stamp = None  # launches seen when recorded


class FakeCuda:
    """Stands in for ``_TorchCuda``: numpy "device" buffers, recorded events and copies.

    ``elapsed_ms`` is ``ms_per_launch`` times the launches between the two events, so a test can
    tell that each interval brackets exactly the launches it should.
    """

    STREAM_HANDLE = 0x5EED  # any non-zero value: the default stream would be 0

    def __init__(self, recorder: Recorder, device: int = 0, ms_per_launch: float = 0.25):
        self.rec = recorder
        self.device = device
        self.ms_per_launch = ms_per_launch
        self._ptrs = itertools.count(0x1000, 0x1000)
        self._events = itertools.count()
        self.stream = object()
        recorder.calls.append(("cuda_init", device))

    def info(self):
        return {"device": "Fake GPU", "device_index": self.device, "compute_capability": "8.9",
                "multiprocessors": 1, "total_memory_mb": 1024, "cuda_runtime": "13.0",
                "cuda_driver": None}

    def new_stream(self):
        return self.stream

    def stream_handle(self, stream):
        assert stream is self.stream
        return self.STREAM_HANDLE

    def empty(self, shape, dtype):
        arr = np.zeros(shape, dtype=dtype)
        ptr = next(self._ptrs)
        self.rec.memory[ptr] = arr
        self.rec.calls.append(("alloc", tuple(shape), np.dtype(dtype).name))
        return arr

    def fill_random(self, buf, stream):
        buf[...] = np.random.default_rng(0).uniform(-1, 1, buf.shape).astype(buf.dtype)

    def data_ptr(self, buf):
        for ptr, arr in self.rec.memory.items():
            if arr is buf:
                return ptr
        raise KeyError("unknown buffer")

    def new_event(self):
        return FakeEvent(next(self._events))

    def record(self, event, stream):
        assert stream is self.stream
        event.stamp = self.rec.launches
        self.rec.calls.append(("event_record", event.n, self.STREAM_HANDLE))

    def synchronize(self, stream):
        self.rec.calls.append(("synchronize",))

    def elapsed_ms(self, start, end):
        self.rec.calls.append(("elapsed_time", start.n, end.n))
        return (end.stamp - start.stamp) * self.ms_per_launch

    def copy_from_host(self, buf, array, stream):
        self.rec.calls.append(("copy_h2d", array.shape))
        buf[...] = array

    def copy_to_host(self, buf, stream):
        self.rec.calls.append(("copy_d2h", buf.shape))
        return buf.copy()

    def evict_l2(self, stream):
        assert stream is self.stream
        self.rec.calls.append(("evict_l2", self.STREAM_HANDLE))
