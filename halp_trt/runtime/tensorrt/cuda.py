"""CUDA operations of the TensorRT backend (buffers, streams, events, L2 eviction), on one
device through torch CUDA. The contract tests replace ``make_cuda`` with a recording fake."""
from __future__ import annotations

import numpy as np

from halp_trt.errors import HalpError

class TorchCuda:
    """The handful of CUDA operations the backend needs, on one device, via torch."""

    def __init__(self, device: int):
        try:
            import torch
        except ImportError as exc:  # torch is a core dependency, so this is a broken install
            raise HalpError(
                "The TensorRT backend needs PyTorch with CUDA for device buffers and timing, "
                f"but torch could not be imported ({exc})."
            ) from exc
        if not torch.cuda.is_available():
            raise HalpError(
                "No CUDA device is available (torch.cuda.is_available() is False): the TensorRT "
                "backend needs an NVIDIA GPU, its driver, and a CUDA build of torch "
                f"(this torch: {torch.__version__}, CUDA {torch.version.cuda or 'none'})."
            )
        count = torch.cuda.device_count()
        if not 0 <= device < count:
            raise HalpError(f"CUDA device {device} does not exist ({count} device(s) visible).")
        torch.cuda.set_device(device)
        torch.cuda.init()  # create the primary context before TensorRT uses the device
        self._torch = torch
        self.device = torch.device("cuda", device)
        self._dtypes = {
            np.dtype(np.float32): torch.float32,
            np.dtype(np.float16): torch.float16,
            np.dtype(np.int64): torch.int64,
            np.dtype(np.int32): torch.int32,
            np.dtype(np.int8): torch.int8,
            np.dtype(np.uint8): torch.uint8,
            np.dtype(np.bool_): torch.bool,
        }

    def info(self) -> dict:
        torch = self._torch
        props = torch.cuda.get_device_properties(self.device)
        major, minor = torch.cuda.get_device_capability(self.device)
        info = {
            "device": torch.cuda.get_device_name(self.device),
            "device_index": self.device.index,
            "compute_capability": f"{major}.{minor}",
            "multiprocessors": getattr(props, "multi_processor_count", None),
            "total_memory_mb": int(props.total_memory) // (1 << 20),
            "cuda_runtime": torch.version.cuda,
            "cuda_driver": None,
        }
        try:  # optional: cuda-python reports the driver's CUDA version
            from cuda.bindings import runtime as cudart

            err, version = cudart.cudaDriverGetVersion()
            if int(err) == 0 and version:
                info["cuda_driver"] = f"{version // 1000}.{(version % 1000) // 10}"
        except Exception:  # noqa: BLE001 - informational only
            pass
        return info

    def new_stream(self):
        return self._torch.cuda.Stream(device=self.device)

    def stream_handle(self, stream) -> int:
        return int(stream.cuda_stream)

    def empty(self, shape: tuple, dtype: np.dtype):
        if dtype not in self._dtypes:
            raise HalpError(f"No torch dtype for I/O dtype {dtype}.")
        return self._torch.empty(tuple(shape), dtype=self._dtypes[dtype], device=self.device)

    def fill_random(self, buf, stream) -> None:
        # Timing on uninitialised memory can hit NaN/denormal paths; use ordinary values.
        with self._torch.cuda.stream(stream):
            if buf.is_floating_point():
                buf.uniform_(-1.0, 1.0)
            else:
                buf.zero_()

    def data_ptr(self, buf) -> int:
        return int(buf.data_ptr())

    def new_event(self):
        return self._torch.cuda.Event(enable_timing=True)

    def record(self, event, stream) -> None:
        event.record(stream)

    def synchronize(self, stream) -> None:
        stream.synchronize()

    def elapsed_ms(self, start, end) -> float:
        return float(start.elapsed_time(end))

    def copy_from_host(self, buf, array: np.ndarray, stream) -> None:
        with self._torch.cuda.stream(stream):
            buf.copy_(self._torch.from_numpy(array))

    def copy_to_host(self, buf, stream) -> np.ndarray:
        # .cpu() is issued on the current stream and waits for it, so it sees the launch.
        with self._torch.cuda.stream(stream):
            return buf.cpu().numpy()

    def evict_l2(self, stream) -> None:
        """Write a scratch buffer twice the L2's size on ``stream`` (ordered before the next
        launch, outside any timed interval), so the next run reads its weights from DRAM."""
        if getattr(self, "_scratch", None) is None:
            props = self._torch.cuda.get_device_properties(self.device)
            l2_bytes = int(getattr(props, "L2_cache_size", 0) or 0) or 64 << 20
            self._scratch = self._torch.empty(2 * l2_bytes, dtype=self._torch.uint8,
                                              device=self.device)
        with self._torch.cuda.stream(stream):
            self._scratch.zero_()



