"""Registry of latency backends behind one interface (``halp_trt.runtime.base.Backend``).

Backends are registered by import path so that choosing one imports only its runtime:
``import halp_trt`` loads neither onnxruntime nor tensorrt.
"""
from __future__ import annotations

import importlib

from halp_trt.errors import HalpError

_REGISTRY: dict[str, str] = {
    "onnxruntime": "halp_trt.runtime.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "halp_trt.runtime.tensorrt:TensorRTBackend",
    "openvino": "halp_trt.runtime.openvino:OpenVinoBackend",
}


def register_backend(name: str, target: str) -> None:
    """Add a backend as ``"package.module:ClassName"`` (a subclass of Backend)."""
    _REGISTRY[name] = target


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(name: str, **options):
    """Instantiate the backend ``name`` with its options (precision, threads, ...)."""
    if name not in _REGISTRY:
        raise HalpError(f"unknown backend {name!r}; choose one of {available_backends()}")
    module_name, cls_name = _REGISTRY[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(**options)


def backend_for(gpu: bool = False, precision: str = "fp32", backend: str | None = None,
                **options):
    """The CLI's choice: ``backend`` by name (onnxruntime, openvino, tensorrt); ``gpu`` is the
    TensorRT shorthand; ONNX Runtime on the CPU when neither is given."""
    name = backend or ("tensorrt" if gpu else "onnxruntime")
    if gpu and name != "tensorrt":
        raise HalpError(f"--gpu means the TensorRT backend; it cannot be combined with --backend "
                        f"{name}")
    if name not in _REGISTRY:
        raise HalpError(f"unknown backend {name!r}; choose one of {available_backends()}")
    if name == "tensorrt":
        return get_backend("tensorrt", precision=precision, **options)
    if precision == "fp32":
        return get_backend(name, **options)
    if precision == "int8":
        if name == "onnxruntime":
            return get_backend(name, precision="int8", **options)
        raise HalpError(f"precision int8 is measured with ONNX Runtime's CPU kernels (--backend "
                        f"onnxruntime); {name} measures fp32 here.")
    raise HalpError(f"precision {precision} needs the TensorRT backend (--gpu); {name} on "
                    "the CPU measures fp32 here" + (" or int8." if name == "onnxruntime" else "."))
