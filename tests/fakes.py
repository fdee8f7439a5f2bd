"""Test doubles and helpers shared by several test files."""
from __future__ import annotations

import socket

from halp_trt.latency.steps import round_up_to_step
from halp_trt.latency.synthetic import StaircaseLatencyModel  # noqa: F401 - tests import it here


class ReachedHeavyWork(Exception):
    """Raised in place of training, evaluating or measuring: the command got past its checks."""


def free_port() -> int:
    """A TCP port nothing listens on now: fixed torchrun ports collide with any other job
    (or a parallel test run) on the same machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SizeTimedBackend:
    """Real ONNX Runtime sessions (outputs are real) with a deterministic clock: a graph
    "takes" a time proportional to its serialized size, so decisions that depend on
    measurements repeat exactly from run to run."""

    def __new__(cls, ms_per_kb: float = 0.01):
        from halp_trt.runtime.onnxruntime import OnnxRuntimeBackend

        class _SizeTimed(OnnxRuntimeBackend):
            def _prepare_impl(self, onnx_bytes, label=""):
                handle = super()._prepare_impl(onnx_bytes, label)
                handle["ms"] = ms_per_kb * len(onnx_bytes) / 1024
                return handle

            def _time_runs_impl(self, handle, n_runs):
                return [handle["ms"]] * n_runs

        return _SizeTimed()


class StaircaseTimedBackend:
    """Real ONNX Runtime sessions with a deterministic staircase clock: a graph "takes"
    ``scale`` × the sum over its weight tensors of (output channels rounded up to ``step``) ×
    the rest of the tensor's size — the landscape of a runtime with ``step``-channel blocks.
    Two instances with different ``step`` or ``scale`` are two machines."""

    def __new__(cls, step: int = 8, scale: float = 1.0):
        import onnx

        from halp_trt.runtime.onnxruntime import OnnxRuntimeBackend

        def graph_ms(onnx_bytes: bytes) -> float:
            total = 0.0
            for init in onnx.load_from_string(onnx_bytes).graph.initializer:
                dims = list(init.dims)
                if len(dims) >= 2:
                    rest = 1
                    for d in dims[1:]:
                        rest *= d
                    total += round_up_to_step(dims[0], step) * rest
            return scale * (0.01 + 1e-5 * total)

        class _StaircaseTimed(OnnxRuntimeBackend):
            def _prepare_impl(self, onnx_bytes, label=""):
                handle = super()._prepare_impl(onnx_bytes, label)
                handle["ms"] = graph_ms(onnx_bytes)
                return handle

            def _time_runs_impl(self, handle, n_runs):
                return [handle["ms"]] * n_runs

        return _StaircaseTimed()


def randomise_bn(model, seed: int = 0, mean_scale: float | None = None) -> None:
    """Non-trivial BN statistics and affine parameters, so a wrong mask shows in the output.
    Running means uniform in [-0.5, 0.5), or N(0, mean_scale) when given."""
    import torch
    import torch.nn as nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5 if mean_scale is None
                                     else torch.randn(n, generator=g) * mean_scale)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def prune_one_step(model, example, target: float = 0.5):
    """``model`` (BN statistics randomised) pruned one magnitude step on a staircase latency
    model, as the architecture-pattern tests do: (pruner, step record), the step within its
    target."""
    from halp_trt.pruning.config import HALPConfig
    from halp_trt.pruning.pruner import HALPPruner

    randomise_bn(model)
    pruner = HALPPruner(model, example, StaircaseLatencyModel(step=4),
                        HALPConfig(target=target, importance="magnitude"))
    record = pruner.prune_step()
    assert record.predicted_ms <= record.target_ms + 1e-9
    return pruner, record
