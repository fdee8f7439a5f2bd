"""halp-trt: latency-driven structured pruning (HALP) for TensorRT and ONNX Runtime.

Layers, bottom up: ``runtime`` (backends, export, timing protocol) and ``graph`` (prunable
layers, coupled channel groups) → ``latency`` (tables) → ``pruning`` (HALP) → the pipeline,
training, data, report and CLI.

    import halp_trt
    pruned, result = halp_trt.prune(model, x, target=0.5, table="t.json", data=loader)
    report = halp_trt.prune_and_deploy(halp_trt.DeployConfig(out="run1"))

Importing the package is cheap: the public names load on first use, and runtimes (onnxruntime,
tensorrt, cuda) only when a backend is used.
"""
from halp_trt.errors import ConfigError, HalpError, MissingBackendError
from halp_trt.version import __version__

_LAZY = {
    "prune": "halp_trt.api",
    "HALPConfig": "halp_trt.pruning.config",
    "HALPPruner": "halp_trt.pruning.pruner",
    "Importance": "halp_trt.pruning.importance",
    "register_surgery": "halp_trt.graph.custom",
    "PruningResult": "halp_trt.pruning.result",
    "apply_result": "halp_trt.pruning.result",
    "LatencyTable": "halp_trt.latency.table",
    "BuildConfig": "halp_trt.latency.build",
    "build_table": "halp_trt.latency.build",
    "TransferConfig": "halp_trt.latency.transfer",
    "transfer_table": "halp_trt.latency.transfer",
    "DeployConfig": "halp_trt.pipeline.config",
    "prune_and_deploy": "halp_trt.pipeline",
    "get_backend": "halp_trt.runtime",
    "available_backends": "halp_trt.runtime",
    "DetectionCore": "halp_trt.tasks.detection",
}

__all__ = ["__version__", "HalpError", "ConfigError", "MissingBackendError", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'halp_trt' has no attribute {name!r}")
