"""Static INT8 quantization of an ONNX graph for ONNX Runtime's CPU kernels (QDQ format).

The QDQ graph keeps the float graph's structure with QuantizeLinear/DequantizeLinear pairs
around each quantizable op; at session build ONNX Runtime fuses them into integer kernels
(QLinearConv, QGemm). Measured on this project's avx512_vnni machine with a 3x3 64->64 conv at
16x16: fp32 0.166 ms, int8 0.057 ms (the QLinearConv runs NHWC between two Transposes).
A lone layer graph also pays its input QuantizeLinear, output DequantizeLinear and the two
Transposes, ~14 us of the ~62 us ORT's profiler gave that conv; inside a whole INT8 model
consecutive layers stay quantized and NHWC, so that overhead is paid once, not per layer.
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Iterable

import numpy as np

from halp_trt.errors import HalpError
from halp_trt.runtime.onnx_utils import graph_inputs

# Activations signed (S8S8). ONNX Runtime's documentation names S8S8 with QDQ its default and
# first choice on CPU; U8S8 only matters on AVX2/AVX512 hosts without VNNI, whose u8*s8
# instruction can saturate. Measured here (avx512_vnni, interleaved minima over 15 rounds) the
# two run at the same speed on 3x3, 1x1, depthwise convs and Gemm (e.g. 0.0570 vs 0.0570 ms,
# 3x3 64->64 at 16x16; 0.0125 vs 0.0123 ms, Gemm 512->512), so the choice costs nothing, and
# signed INT8 activations are also the only kind TensorRT takes.
ACTIVATION_TYPE = "QInt8"
QUANT_SCHEME = {"format": "QDQ", "activations": ACTIVATION_TYPE,
                "weights": "QInt8 per-channel", "calibration": "minmax"}

# Synthetic calibration set for per-layer latency graphs.
SYNTHETIC_SAMPLES = 8
SYNTHETIC_SEED = 0

_QUANT_OPS = ("QuantizeLinear", "DynamicQuantizeLinear")


def is_quantized(onnx_bytes: bytes) -> bool:
    """Whether the graph already quantizes (e.g. a whole model quantized with real data)."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    return any(node.op_type in _QUANT_OPS for node in model.graph.node)


def synthetic_calibration(onnx_bytes: bytes, samples: int = SYNTHETIC_SAMPLES,
                          seed: int = SYNTHETIC_SEED) -> list[dict[str, np.ndarray]]:
    """``samples`` feeds of N(0, 1) values for every float graph input (dynamic dims as 1)."""
    from onnx.helper import tensor_dtype_to_np_dtype

    specs = []
    for inp in graph_inputs(onnx_bytes):
        tensor = inp.type.tensor_type
        dtype = np.dtype(tensor_dtype_to_np_dtype(tensor.elem_type))
        if dtype.kind != "f":
            raise HalpError(f"input {inp.name!r} is {dtype}; synthetic calibration covers float "
                            "inputs only, pass calibration feeds")
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                 for d in tensor.shape.dim]
        specs.append((inp.name, shape, dtype))
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(dtype) for name, shape, dtype in specs}
            for _ in range(samples)]


def _calibration_reader(feeds: Iterable[dict[str, np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class _FeedReader(CalibrationDataReader):
        def __init__(self, items):
            self._items = iter(items)

        def get_next(self):
            return next(self._items, None)

    return _FeedReader(list(feeds))


class _DropQuantizerAdvice(logging.Filter):
    """quantize_static advises "pre-processing" on every call through the root logger; on our
    graphs it is not needed (torch exports and onnx.helper graphs carry their shapes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        inside = f"{os.sep}onnxruntime{os.sep}quantization{os.sep}" in record.pathname
        return not (inside and record.levelno < logging.ERROR)


def quantize_qdq(onnx_bytes: bytes, calibration: list[dict[str, np.ndarray]] | None = None,
                 per_channel: bool = True) -> bytes:
    """The graph statically quantized to INT8 in QDQ format (``QUANT_SCHEME``): activations
    QInt8 with MinMax ranges from ``calibration`` (a list of feed dicts), weights QInt8
    (per output channel unless ``per_channel`` is False).

    Without ``calibration`` a fixed synthetic set is used: ``SYNTHETIC_SAMPLES`` N(0, 1) feeds
    per graph input, seeded. That is what per-layer latency graphs get: an INT8 kernel's speed
    depends on the shapes, not on the scales and zero points (measured: calibrating a 3x3 conv,
    a 1x1 conv and a Gemm with N(0,1), |N(0,1)| or 30*N(0,1) moved their latency by less than
    the noise), and a layer graph's weights are random anyway. A model whose INT8 *outputs*
    matter must be calibrated with real inputs.
    """
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    if not isinstance(onnx_bytes, (bytes, bytearray)) or not onnx_bytes:
        raise HalpError("quantize_qdq: expected serialized ONNX bytes")
    if calibration is None:
        calibration = synthetic_calibration(bytes(onnx_bytes))
    if not calibration:
        raise HalpError("quantize_qdq: the calibration set is empty")
    # quantize_static reads and writes files only. ORT's shape-inference pre-processing
    # (quant_pre_process) is skipped: without it, layer graphs and exported models still
    # quantize every Conv/Gemm (checked on layer graphs and on tiny_models' TinyResNet).
    advice = _DropQuantizerAdvice()
    root = logging.getLogger()
    root.addFilter(advice)
    try:
        with tempfile.TemporaryDirectory(prefix="halp-int8-") as tmp:
            src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
            with open(src, "wb") as f:
                f.write(onnx_bytes)
            quantize_static(src, dst, _calibration_reader(calibration),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=getattr(QuantType, ACTIVATION_TYPE),
                            weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
            with open(dst, "rb") as f:
                return f.read()
    except HalpError:
        raise
    except Exception as exc:  # the quantizer raises whatever its passes raise
        raise HalpError(f"INT8 quantization failed: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:300] if str(exc) else ''}") from exc
    finally:
        root.removeFilter(advice)
