"""halp-trt: latency-driven structured pruning (HALP) for TensorRT and ONNX Runtime.

Importing the package is cheap: runtimes (onnxruntime, tensorrt, cuda) load lazily, only when a
backend is used.
"""

__version__ = "0.1.0"

from halp_trt.errors import HalpError, MissingBackendError  # noqa: E402,F401
