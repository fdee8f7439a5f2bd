"""The interface every runtime backend implements.

A backend turns an ONNX graph into something runnable on its runtime (an ONNX Runtime session,
a TensorRT engine), runs it, and times it. The measurement protocol (interleaving, rounds,
statistics) lives in ``halp_trt.runtime.protocol`` and is the same for every backend.

Public methods validate and normalise; subclasses implement the ``_*_impl`` methods.
"""
from __future__ import annotations

import abc
from typing import Any, Sequence

import numpy as np

from halp_trt.errors import HalpError


class Backend(abc.ABC):
    """One runtime on one device.

    Lifecycle per graph: ``handle = prepare(onnx_bytes)`` (build + warm-up), then any number of
    ``time_runs(handle, n)`` / ``infer(handle, x)`` calls, then ``release(handle)``.
    """

    #: registry name, e.g. "onnxruntime" or "tensorrt"; always the identity's "backend"
    name: str = ""
    #: whether this backend has run on its real runtime in this project's checks; the report
    #: says which numbers can be trusted
    verified: bool = False
    #: one line for reports: where the numbers come from and how far they can be trusted
    verification_note: str = ""

    def identity(self) -> dict:
        """What makes latencies from this backend comparable: device, ISA, runtime and version,
        precision, threads, optimization level — and always the backend's name."""
        ident = dict(self._identity_impl())
        ident["backend"] = self.name
        return ident

    def prepare(self, onnx_bytes: bytes, label: str = "") -> Any:
        """Build and warm a runnable handle. ``label`` names the configuration in errors."""
        if not isinstance(onnx_bytes, (bytes, bytearray)) or not onnx_bytes:
            raise HalpError(f"{label or 'the graph'}: expected serialized ONNX bytes")
        return self._prepare_impl(bytes(onnx_bytes), label)

    def time_runs(self, handle: Any, n_runs: int) -> list[float]:
        """Run ``n_runs`` times back to back; return each run's latency in milliseconds.

        Inputs stay resident on the device; no host<->device copies inside the timed region."""
        if n_runs < 0:
            raise ValueError("n_runs must be >= 0")
        return self._time_runs_impl(handle, int(n_runs)) if n_runs else []

    def infer(self, handle: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run once on the given host inputs and return host outputs (numerical checks)."""
        return self._infer_impl(handle, [np.ascontiguousarray(x) for x in inputs])

    def flush_cache(self, level: str = "llc") -> None:
        """Evict the device's caches so the next run reads its weights cold, as it would inside
        a whole model (CPU ``level``: "llc" evicts the last-level cache, "l2" only the core's
        own). Backends without a way to do this leave it a no-op."""

    def release(self, handle: Any) -> None:
        """Free the handle's resources."""

    def close(self) -> None:
        """Free process-wide resources (builders, timing caches are saved by the caller)."""

    @abc.abstractmethod
    def _identity_impl(self) -> dict:
        """The runtime's own identity fields (``backend`` is added by ``identity()``)."""

    @abc.abstractmethod
    def _prepare_impl(self, onnx_bytes: bytes, label: str) -> Any:
        ...

    @abc.abstractmethod
    def _time_runs_impl(self, handle: Any, n_runs: int) -> list[float]:
        ...

    @abc.abstractmethod
    def _infer_impl(self, handle: Any, inputs: list[np.ndarray]) -> list[np.ndarray]:
        ...
