"""Whole-model ONNX export.

We use torch's TorchScript-based exporter (``dynamo=False``): the torch.export-based default of
torch 2.14 needs the extra ``onnxscript`` package and is much slower on the per-model exports a
pruning run makes. The TorchScript exporter still works in 2.14 and warns that it is
deprecated; the warning is silenced here because the choice is deliberate. Per-layer graphs for
the latency table are built directly with onnx.helper (``halp_trt.latency.layer_onnx``).
"""
from __future__ import annotations

import io
import re
import warnings

import torch

from halp_trt.errors import HalpError

OPSET = 17


def output_tensors(output) -> list[torch.Tensor]:
    """A model output's tensors in a fixed order — the order of the exported graph's outputs: a
    tensor, or tuples/lists/dicts of them (detection heads, segmentation dicts)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for k in output for t in output_tensors(output[k])]
    if isinstance(output, (tuple, list)):
        return [t for o in output for t in output_tensors(o)]
    return []


def export_onnx(model: torch.nn.Module, example_input: torch.Tensor) -> bytes:
    """Serialized ONNX of ``model`` in eval mode (BatchNorm uses running statistics)."""
    was_training = model.training
    model.eval()
    buf = io.BytesIO()
    # nn.MultiheadAttention takes a fused kernel (aten::_native_multi_head_attention) in eval
    # without gradients, which the exporter cannot translate; with gradients enabled it runs the
    # same math unfused (projections, scaled dot-product attention, output projection), which
    # exports. Export only traces: no gradient is computed either way. A head-pruned attention
    # is a halp_trt.graph.attention.HeadAttention (nn.MultiheadAttention cannot have fewer
    # heads than embed_dim / head_dim): the same math written out, which exports either way.
    has_mha = any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())
    grad_mode = torch.enable_grad() if has_mha else torch.no_grad()
    # timm's attention calls scaled_dot_product_attention when ``fused_attn`` is set; the
    # exporter traces some of those calls with ``is_causal`` as a tensor and fails (timm's
    # EVA / DINOv3 ViTs). The unfused path is the same math written out — the MatMul/Softmax
    # graph the exporter would emit for the fused call — so export takes it.
    fused = [m for m in model.modules() if getattr(m, "fused_attn", None) is True]
    for m in fused:
        m.fused_attn = False
    try:
        with warnings.catch_warnings(), grad_mode:
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example_input,), buf, input_names=["input"], output_names=["output"],
                opset_version=OPSET, do_constant_folding=True, dynamo=False)
    except Exception as exc:  # the exporter's errors name the failing op; we name the layer
        op = re.search(r"'(\w+::\w+)'", str(exc))
        where = _layer_running(model, example_input, op.group(1)) if op else None
        where = (f" in layer {where} ({type(dict(model.named_modules())[where]).__name__})"
                 if where else f" in {type(model).__name__}.forward" if where == "" else "")
        raise HalpError(f"ONNX export of the model failed{where}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:300]}. Replace that operation with one "
                        f"ONNX opset {OPSET} supports") from exc
    finally:
        model.train(was_training)
        for m in fused:
            m.fused_attn = True
    return buf.getvalue()


def _layer_running(model: torch.nn.Module, example_input: torch.Tensor, op: str) -> str | None:
    """Name of the innermost module whose forward runs the ATen ``op`` ("" for the model's own
    forward; None if not found)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    stack: list[str] = []
    found: list[str] = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not found and func._schema.name == op:
                found.append(stack[-1] if stack else "")
            return func(*args, **(kwargs or {}))

    def pop(_module, _inputs, _output):
        stack.pop()

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, i, n=name: stack.append(n)))
        handles.append(module.register_forward_hook(pop))
    try:
        with torch.no_grad(), Spy():
            model(example_input)
    except Exception:
        return None
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None
