"""Deploying and checking a model: build the runtime session/engine, compare its outputs with
PyTorch's, and measure original vs pruned with the table's protocol (interleaved, so both
see the same machine state)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Sequence

import numpy as np
import torch

from halp_trt.errors import HalpError
from halp_trt.runtime.export import output_tensors
from halp_trt.runtime.protocol import (Protocol, Stats, mean_of_sessions, measure_sessions,
                                       model_protocol)


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
                wants = [t.numpy() for t in output_tensors(model(x))]
                gots = backend.infer(handle, [x.numpy()])
                if len(gots) != len(wants):
                    raise HalpError(f"{label}: the runtime gives {len(gots)} outputs, PyTorch "
                                    f"{len(wants)}")
                for i, (want, got) in enumerate(zip(wants, gots)):
                    worst, ref_max = _compare_one(label, i, want, got, sane_outputs, worst,
                                                  ref_max)
    finally:
        backend.release(handle)
    scale = min(max(ref_max, 1.0), SANE_OUTPUT_SCALE) if sane_outputs else max(ref_max, 1.0)
    check = NumericCheck(worst, ref_max, rel_tolerance * scale, len(inputs))
    if not check.ok:
        raise HalpError(f"{label}: runtime outputs differ from PyTorch's by {worst:.3g} "
                        f"(tolerance {check.tolerance:.3g}); the exported model is wrong")
    return check


def _compare_one(label: str, index: int, want: np.ndarray, got: np.ndarray, sane_outputs: bool,
                 worst: float, ref_max: float) -> tuple[float, float]:
    """One output of one input: shape, finiteness and scale checked; (worst difference,
    largest reference magnitude) so far."""
    which = f"output {index}" if index else "output"
    if got.shape != want.shape:
        raise HalpError(f"{label}: runtime {which} shape {got.shape} differs from "
                        f"PyTorch's {want.shape}")
    for side, out in (("PyTorch", want), ("the runtime", got)):
        if not np.all(np.isfinite(out)):
            raise HalpError(f"{label}: {side} gives non-finite outputs (NaN/inf) on real inputs; "
                            "the model is broken, nothing to deploy")
        peak = float(np.max(np.abs(out))) if out.size else 0.0
        if sane_outputs and peak > MAX_OUTPUT:
            raise HalpError(f"{label}: {side} gives outputs up to {peak:.3g}, beyond any sane "
                            "model's scale (it diverged); a numeric check against it proves "
                            "nothing")
    if not want.size:
        return worst, ref_max
    return (max(worst, float(np.max(np.abs(got.astype(np.float64) - want)))),
            max(ref_max, float(np.max(np.abs(want)))))


# INT8 against the float model. Observed on tests/tiny_models.py's TinyResNet (a residual block
# and a depthwise conv) trained 60-150 steps on sklearn digits at 16x16 (73-97% test accuracy),
# statically quantized (halp_trt.runtime.quantize: QDQ, per-channel weights) with 64 training
# images and compared on 397 test images: top-1 agreement 0.970-0.997, RMS logit error 1.9-6.1%
# of the reference RMS (30 steps: 0.965, 5.5%; untrained: agreement down to 0.88 on logit
# margins of ~1e-3). Garbage against the same reference: random logits 0.12 / 134%; calibration
# data at 0.2x its scale (saturated activations) 0.09 / 380%; stem weights times 1e6 before
# quantizing 0.23 / 2.5e8%. The thresholds leave ~3x room over the worst sane figure (deeper
# models accumulate more rounding) and sit far below what carries no information (zero outputs
# give 100%, unrelated ones ~141%).
INT8_MIN_TOP1_AGREEMENT = 0.9
INT8_MAX_REL_LOGIT_ERROR = 0.2


@dataclass
class Int8Check:
    top1_agreement: float  # fraction of inputs whose argmax matches the reference's
    max_abs_diff: float
    rel_logit_error: float  # RMS(int8 - reference) / RMS(reference)
    passed: bool
    reason: str  # why it failed; "" when passed
    n_inputs: int = 0


def check_int8_outputs(reference_logits: np.ndarray, int8_logits: np.ndarray,
                       min_top1_agreement: float = INT8_MIN_TOP1_AGREEMENT,
                       max_rel_logit_error: float = INT8_MAX_REL_LOGIT_ERROR) -> Int8Check:
    """Whether an INT8 model's outputs are a faithful approximation of the float model's.

    Both arrays are (inputs, classes) logits of the same real inputs (other shapes are flattened
    per input, the first axis being the inputs). INT8 cannot meet fp32's elementwise tolerance,
    so this checks what deployment needs: the predicted class (top-1 agreement; needs enough
    inputs to mean something, ~100) and the logits' overall error relative to their scale.
    Non-finite outputs and references beyond ``MAX_OUTPUT`` (a diverged model) fail. For models
    with random weights, whose logit margins are tiny, pass ``min_top1_agreement=0``.
    """
    ref = np.asarray(reference_logits, dtype=np.float64)
    got = np.asarray(int8_logits, dtype=np.float64)
    n = int(ref.shape[0]) if ref.ndim else 0

    def failed(reason, agreement=0.0, max_abs=float("inf"), rel=float("inf")):
        return Int8Check(agreement, max_abs, rel, False, reason, n)

    if ref.shape != got.shape:
        return failed(f"output shapes differ: INT8 {got.shape}, reference {ref.shape}")
    if ref.ndim == 0 or n == 0 or ref.size == 0:
        return failed("no outputs to compare (expected one row of logits per input)")
    for side, out in (("reference", ref), ("INT8", got)):
        if not np.all(np.isfinite(out)):
            return failed(f"the {side} outputs are not finite (NaN/inf)")
    ref, got = ref.reshape(n, -1), got.reshape(n, -1)
    peak = float(np.max(np.abs(ref)))
    if peak > MAX_OUTPUT:
        return failed(f"the reference outputs reach {peak:.3g}, beyond any sane model's scale "
                      "(it diverged); agreement with it proves nothing")
    agreement = float(np.mean(np.argmax(ref, axis=1) == np.argmax(got, axis=1)))
    max_abs = float(np.max(np.abs(got - ref)))
    ref_rms = float(np.sqrt(np.mean(ref ** 2)))
    err_rms = float(np.sqrt(np.mean((got - ref) ** 2)))
    rel = err_rms / ref_rms if ref_rms > 0 else (0.0 if err_rms == 0 else float("inf"))
    reasons = []
    if agreement < min_top1_agreement:
        reasons.append(f"top-1 agreement {agreement:.3f} < {min_top1_agreement}")
    if not rel <= max_rel_logit_error:
        reasons.append(f"logit error {rel:.3g} of the reference's RMS > {max_rel_logit_error}")
    return Int8Check(agreement, max_abs, rel, not reasons, "; ".join(reasons), n)



# validation inputs the INT8 pruned model is compared with PyTorch on (top-1 agreement needs
# ~100 to mean something)
INT8_CHECK_INPUTS = 128


def deploy_int8(backend, original_onnx: bytes, pruned_onnx: bytes, pruned_model: torch.nn.Module,
                batches, batch_size: int, allow_untrained: bool = False,
                log=print) -> tuple[bytes, bytes, dict]:
    """Quantize original and pruned with ``backend``'s own INT8 path (its calibration inputs
    set), check the INT8 pruned model against ``pruned_model`` on the first
    ``INT8_CHECK_INPUTS`` inputs of ``batches`` (an iterable of labelled validation batches,
    read twice; those not of the graphs' ``batch_size`` are skipped), and measure both INT8
    models' accuracy on all of them. Returns the two INT8
    graphs (what is deployed and timed from here on) and a summary; a pruned model that does
    not match raises ``HalpError``."""
    log(f"quantizing to INT8 (QDQ) with {len(backend.int8_calibration)} calibration batches")
    graphs = {"original": backend.int8_graph(original_onnx, "original model"),
              "pruned": backend.int8_graph(pruned_onnx, "pruned model")}
    accuracy, ref, got = {}, [], []
    for key, onnx_bytes in graphs.items():
        handle = backend.prepare(onnx_bytes, label=f"INT8 {key} model")
        correct = total = 0
        try:
            for x, y in batches:
                if x.shape[0] != batch_size:
                    continue
                out = backend.infer(handle, [x.numpy()])[0]
                correct += int((out.argmax(-1) == y.numpy()).sum())
                total += len(y)
                if key == "pruned" and sum(len(g) for g in got) < INT8_CHECK_INPUTS:
                    with torch.no_grad():
                        ref.append(pruned_model(x).numpy())
                    got.append(out)
        finally:
            backend.release(handle)
        accuracy[key] = correct / max(total, 1)
    check = check_int8_outputs(np.concatenate(ref), np.concatenate(got),
                               **({"min_top1_agreement": 0.0} if allow_untrained else {}))
    if not check.passed:
        raise HalpError(f"the INT8 pruned model does not match the float one: {check.reason}. "
                        "Check the calibration data, or deploy in fp32")
    log(f"INT8 pruned model: top-1 agreement {check.top1_agreement:.3f} with PyTorch, logit "
        f"error {100 * check.rel_logit_error:.1f}%; INT8 accuracy original "
        f"{accuracy['original']:.4f}, pruned {accuracy['pruned']:.4f}")
    return graphs["original"], graphs["pruned"], {
        "check": asdict(check), "accuracy": accuracy,
        "calibration_batches": len(backend.int8_calibration)}


@dataclass
class Comparison:
    """Original and pruned measured interleaved. ``*_sessions`` hold each session's own
    statistics, ``original``/``pruned`` their mean, so the point ratio lies inside
    ``ratio_spread``."""

    original: Stats
    pruned: Stats
    estimator: str = "min"
    original_sessions: Sequence[Stats] = ()
    pruned_sessions: Sequence[Stats] = ()
    # which measurement call each session belongs to (sessions of one call were timed
    # interleaved with each other; pairs across calls never were); empty: all one call
    original_calls: Sequence[int] = ()
    pruned_calls: Sequence[int] = ()

    @property
    def speedup(self) -> float:
        return self.original.estimate(self.estimator) / self.pruned.estimate(self.estimator)

    @property
    def ratio(self) -> float:
        """Pruned over original latency (the point estimate)."""
        return 1.0 / self.speedup

    @property
    def session_pair_ratios(self) -> list[list[float]]:
        """[i][j]: pruned session i over original session j of the same measurement call —
        what a measurement with one session per graph could have read."""
        est = self.estimator
        oc = list(self.original_calls) or [0] * len(self.original_sessions)
        pc = list(self.pruned_calls) or [0] * len(self.pruned_sessions)
        return [[p.estimate(est) / o.estimate(est)
                 for o, co in zip(self.original_sessions, oc) if co == cp]
                for p, cp in zip(self.pruned_sessions, pc)]

    @property
    def ratio_spread(self) -> tuple[float, float]:
        """(min, max) of the pruned/original ratio over every pair of sessions; the point
        ratio twice when no per-session statistics were kept."""
        pairs = [r for row in self.session_pair_ratios for r in row]
        if not pairs:
            return self.ratio, self.ratio
        return min(pairs), max(pairs)


# Separate measurement calls (fresh sessions each) per comparison. Sessions of one call share
# an offset that their spread does not show: a pruned resnet18 at 2.5 ms (Zen 4) read
# 0.453-0.503 of the original in six calls minutes apart, each call's sessions within ~2%.
COMPARE_CALLS = 3


def compare_onnx(backend, original: bytes, pruned: bytes, protocol: Protocol | None = None,
                 calls: int = COMPARE_CALLS) -> Comparison:
    """Original and pruned timed interleaved, in ``calls`` separate calls of
    ``protocol.rounds`` rounds each, so the spread covers what changes from one set of sessions
    to the next. Rounds are not split between calls: a minimum over fewer rounds sits further
    above the truth for the smaller, relatively noisier model (a 15-round split read the
    pruned/original ratio 6-10% above the 30-round bracket that picked the model)."""
    protocol = protocol or model_protocol(30)
    o_sessions, p_sessions, o_calls, p_calls = [], [], [], []
    for c in range(calls):
        stats = measure_sessions(backend, {"original": original, "pruned": pruned},
                                 replace(protocol, seed=protocol.seed + c))
        o_sessions += stats["original"].sessions
        p_sessions += stats["pruned"].sessions
        o_calls += [c] * len(stats["original"].sessions)
        p_calls += [c] * len(stats["pruned"].sessions)
    return Comparison(mean_of_sessions(o_sessions), mean_of_sessions(p_sessions),
                      protocol.estimator, o_sessions, p_sessions, o_calls, p_calls)

