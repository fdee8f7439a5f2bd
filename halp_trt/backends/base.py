"""The interface every latency backend implements.

A backend turns an ONNX graph into something runnable on its runtime (an ONNX Runtime session,
a TensorRT engine), runs it, and times it. Measurement protocol (interleaving, rounds,
statistics) lives in ``halp_trt.measure`` and is the same for every backend.
"""
from __future__ import annotations

import abc
from typing import Any, Sequence

import numpy as np


class Backend(abc.ABC):
    """One runtime on one device.

    Lifecycle per graph: ``handle = prepare(onnx_bytes)`` (build + warm-up), then any number of
    ``time_runs(handle, n)`` / ``infer(handle, x)`` calls, then ``release(handle)``.
    """

    #: registry name, e.g. "onnxruntime" or "tensorrt"
    name: str = ""

    @abc.abstractmethod
    def identity(self) -> dict:
        """What makes latencies from this backend comparable: device, ISA, runtime and version,
        precision, threads, optimization level. Stored in the table's identity."""

    @abc.abstractmethod
    def prepare(self, onnx_bytes: bytes, label: str = "") -> Any:
        """Build and warm a runnable handle. ``label`` names the configuration in errors."""

    @abc.abstractmethod
    def time_runs(self, handle: Any, n_runs: int) -> list[float]:
        """Run ``n_runs`` times back to back; return each run's latency in milliseconds.

        Inputs stay resident on the device; no host<->device copies inside the timed region."""

    @abc.abstractmethod
    def infer(self, handle: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run once on the given host inputs and return host outputs (numerical checks)."""

    def flush_cache(self) -> None:
        """Evict the device's caches so the next run reads its weights cold, as it would inside
        a whole model. Backends without a way to do this leave it a no-op."""

    def release(self, handle: Any) -> None:
        """Free the handle's resources."""

    def close(self) -> None:
        """Free process-wide resources (builders, timing caches are saved by the caller)."""
