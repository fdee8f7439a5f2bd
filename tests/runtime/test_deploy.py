"""Deploy checks (halp_trt.runtime.deploy): the numeric check of a runtime's outputs against
PyTorch's on real ONNX Runtime sessions, and the INT8 verdict for known logits."""
import numpy as np
import pytest
import torch

from halp_trt.errors import HalpError
from halp_trt.runtime import get_backend
from halp_trt.runtime.deploy import INT8_MIN_TOP1_AGREEMENT, check_int8_outputs, check_outputs
from halp_trt.runtime.export import export_onnx
from halp_trt.runtime.onnxruntime import OnnxRuntimeBackend
from tiny_models import Scaled, TinyResNet


class CountingBackend(OnnxRuntimeBackend):
    """Real ONNX Runtime sessions; counts the sessions built and released."""

    def __init__(self):
        super().__init__()
        self.open = 0

    def _prepare_impl(self, onnx_bytes, label=""):
        self.open += 1
        return super()._prepare_impl(onnx_bytes, label)

    def release(self, handle):
        self.open -= 1
        super().release(handle)


def test_a_graph_that_is_not_the_model_fails_the_check_and_releases_its_session():
    """The check exists to catch an export that computes something else (other weights, other
    output shape); a failed check must not leak the runtime session either."""
    torch.manual_seed(0)
    model = TinyResNet(width=8).eval()
    xs = [torch.randn(1, 3, 16, 16) for _ in range(2)]
    backend = CountingBackend()
    assert check_outputs(backend, export_onnx(model, xs[0]), model, xs).ok
    other_weights = export_onnx(TinyResNet(width=8), xs[0])
    with pytest.raises(HalpError, match="differ from PyTorch's by .*the exported model is wrong"):
        check_outputs(backend, other_weights, model, xs)
    five_classes = export_onnx(TinyResNet(num_classes=5, width=8), xs[0])
    with pytest.raises(HalpError, match=r"runtime output shape \(1, 5\) differs from PyTorch's "
                                        r"\(1, 10\)"):
        check_outputs(backend, five_classes, model, xs)
    assert backend.open == 0


def _logits(n=200, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((n, classes))
    ref[np.arange(n), rng.integers(0, classes, n)] += 3.0  # a clear winner per input
    return ref


def test_int8_verdict_for_known_agreement_and_logit_error():
    """Top-1 agreement is the fraction of inputs whose argmax moved: 5 of 200 moved passes,
    40 of 200 (0.8 < 0.9) fails naming the figure; small noise passes, noise as large as the
    logits fails on the logit error."""
    ref = _logits()
    rng = np.random.default_rng(1)
    near = ref + 0.01 * rng.standard_normal(ref.shape)
    check = check_int8_outputs(ref, near)
    assert check.passed and check.top1_agreement == 1.0 and check.rel_logit_error < 0.01

    def with_moved_argmax(k):
        got = ref.copy()
        got[:k, :] = -got[:k, :]  # the winner becomes the loser
        return got

    ok = check_int8_outputs(ref, with_moved_argmax(5), max_rel_logit_error=np.inf)
    assert ok.passed and ok.top1_agreement == pytest.approx(195 / 200)
    bad = check_int8_outputs(ref, with_moved_argmax(40), max_rel_logit_error=np.inf)
    assert not bad.passed and bad.top1_agreement == pytest.approx(0.8)
    assert bad.reason == f"top-1 agreement 0.800 < {INT8_MIN_TOP1_AGREEMENT}"
    noisy = check_int8_outputs(ref, ref + ref.std() * rng.standard_normal(ref.shape),
                               min_top1_agreement=0)
    assert not noisy.passed and "logit error" in noisy.reason and noisy.rel_logit_error > 0.5
    assert "no outputs to compare" in check_int8_outputs(ref[:0], ref[:0]).reason


def test_numeric_check_fails_on_huge_outputs_instead_of_scaling_its_tolerance():
    backend = get_backend("onnxruntime")
    x = [torch.randn(1, 3, 8, 8)]
    huge = Scaled(1e18).eval()
    with pytest.raises(HalpError, match="beyond any sane model's scale"):
        check_outputs(backend, export_onnx(huge, x[0]), huge, x)
    sane = TinyResNet(width=8).eval()
    xs = [torch.randn(1, 3, 16, 16)]
    check = check_outputs(backend, export_onnx(sane, xs[0]), sane, xs)
    assert check.ok and check.tolerance <= 1e-3 * 1e3


def test_random_weight_runs_check_huge_outputs_relative_to_their_own_scale():
    """--allow-untrained (benchmarks on random weights): huge but finite outputs are checked
    against their own scale instead of refused."""
    backend = get_backend("onnxruntime")
    x = [torch.randn(1, 3, 8, 8)]
    huge = Scaled(1e8).eval()
    check = check_outputs(backend, export_onnx(huge, x[0]), huge, x, sane_outputs=False)
    assert check.ok and check.tolerance == pytest.approx(1e-3 * check.reference_max_abs)
    nan_net = Scaled(float("nan")).eval()
    with pytest.raises(HalpError, match="non-finite"):
        check_outputs(backend, export_onnx(nan_net, x[0]), nan_net, x, sane_outputs=False)
