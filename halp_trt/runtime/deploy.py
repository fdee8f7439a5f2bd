"""Deploying and checking a model: build the runtime session/engine, compare its outputs with
PyTorch's, and measure original vs pruned with the table's protocol (interleaved, so both
see the same machine state)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from halp_trt.errors import HalpError
from halp_trt.runtime.protocol import Protocol, Stats, measure_interleaved, model_protocol


@dataclass
class NumericCheck:
    max_abs_diff: float
    reference_max_abs: float
    tolerance: float
    n_inputs: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def check_outputs(backend, onnx_bytes: bytes, model: torch.nn.Module,
                  inputs: Sequence[torch.Tensor], rel_tolerance: float = 1e-3,
                  label: str = "model") -> NumericCheck:
    """Run real inputs through the runtime and through PyTorch; fail loudly past tolerance
    (``rel_tolerance`` times the largest reference output magnitude)."""
    handle = backend.prepare(onnx_bytes, label=label)
    worst, ref_max = 0.0, 0.0
    try:
        model.eval()
        with torch.no_grad():
            for x in inputs:
                want = model(x).numpy()
                got = backend.infer(handle, [x.numpy()])[0]
                if got.shape != want.shape:
                    raise HalpError(f"{label}: runtime output shape {got.shape} differs from "
                                    f"PyTorch's {want.shape}")
                worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - want))))
                ref_max = max(ref_max, float(np.max(np.abs(want))))
    finally:
        backend.release(handle)
    check = NumericCheck(worst, ref_max, rel_tolerance * max(ref_max, 1.0), len(inputs))
    if not check.ok:
        raise HalpError(f"{label}: runtime outputs differ from PyTorch's by {worst:.3g} "
                        f"(tolerance {check.tolerance:.3g}); the exported model is wrong")
    return check


@dataclass
class Comparison:
    original: Stats
    pruned: Stats
    estimator: str = "min"

    @property
    def speedup(self) -> float:
        return self.original.estimate(self.estimator) / self.pruned.estimate(self.estimator)


def compare_onnx(backend, original: bytes, pruned: bytes, protocol: Protocol | None = None
                 ) -> Comparison:
    protocol = protocol or model_protocol(30)
    stats = measure_interleaved(backend, {"original": original, "pruned": pruned}, protocol)
    est = protocol.estimator
    return Comparison(stats["original"], stats["pruned"], est)
