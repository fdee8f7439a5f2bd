"""Whole-model ONNX export.

We use torch's TorchScript-based exporter (``dynamo=False``): the torch.export-based default of
torch 2.14 needs the extra ``onnxscript`` package and is much slower on the per-model exports a
pruning run makes. The TorchScript exporter still works in 2.14 and warns that it is
deprecated; the warning is silenced here because the choice is deliberate. Per-layer graphs for
the latency table are built directly with onnx.helper (``halp_trt.layer_graphs``).
"""
from __future__ import annotations

import io
import warnings

import torch

from halp_trt.errors import HalpError

OPSET = 17


def export_onnx(model: torch.nn.Module, example_input: torch.Tensor, dynamic_batch: bool = False
                ) -> bytes:
    """Serialized ONNX of ``model`` in eval mode (BatchNorm uses running statistics)."""
    was_training = model.training
    model.eval()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example_input,), buf, input_names=["input"], output_names=["output"],
                opset_version=OPSET, do_constant_folding=True, dynamo=False,
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch
                else None)
    except Exception as exc:  # the exporter's errors name the failing op
        raise HalpError(f"ONNX export of the model failed: {type(exc).__name__}: {exc}") from exc
    finally:
        model.train(was_training)
    return buf.getvalue()
