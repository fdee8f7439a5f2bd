"""TensorRT 10 backend: engines per ONNX graph on one CUDA device.

``backend.py`` holds the Backend; ``cuda.py`` the CUDA buffers/streams/events it uses (through
torch); ``logger.py`` TensorRT's process-wide logger. Nothing here imports tensorrt or CUDA until
a backend is constructed. Written from the TensorRT 10 API and contract-tested against a fake
``tensorrt`` module only: unverified on a GPU.
"""
from halp_trt.runtime.tensorrt.backend import TensorRTBackend, TensorRTHandle

__all__ = ["TensorRTBackend", "TensorRTHandle"]
