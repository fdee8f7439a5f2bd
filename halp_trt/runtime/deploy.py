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


# The largest output magnitude the numeric check scales its tolerance to. Logits of a sane
# model are O(1-100); letting the tolerance grow with the outputs passed a diverged model whose
# outputs were ~1e19 (tolerance 1.5e16) as "numerically equal".
SANE_OUTPUT_SCALE = 1e3
# Outputs beyond this are garbage (a diverged model), not something to check equality on.
MAX_OUTPUT = 1e6


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
                  label: str = "model", sane_outputs: bool = True) -> NumericCheck:
    """Run real inputs through the runtime and through PyTorch; fail loudly past tolerance
    (``rel_tolerance`` times the largest reference output magnitude, that magnitude taken
    between 1 and ``SANE_OUTPUT_SCALE``). Non-finite outputs on either side fail, and so do
    outputs beyond ``MAX_OUTPUT`` unless ``sane_outputs`` is False (random-weight benchmarks,
    whose outputs may be huge: then the tolerance scales with them)."""
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
                for side, out in (("PyTorch", want), ("the runtime", got)):
                    if not np.all(np.isfinite(out)):
                        raise HalpError(f"{label}: {side} gives non-finite outputs (NaN/inf) "
                                        "on real inputs; the model is broken, nothing to deploy")
                    peak = float(np.max(np.abs(out))) if out.size else 0.0
                    if sane_outputs and peak > MAX_OUTPUT:
                        raise HalpError(f"{label}: {side} gives outputs up to {peak:.3g}, beyond "
                                        "any sane model's scale (it diverged); a numeric check "
                                        "against it proves nothing")
                worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - want))))
                ref_max = max(ref_max, float(np.max(np.abs(want))))
    finally:
        backend.release(handle)
    scale = min(max(ref_max, 1.0), SANE_OUTPUT_SCALE) if sane_outputs else max(ref_max, 1.0)
    check = NumericCheck(worst, ref_max, rel_tolerance * scale, len(inputs))
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
