"""Garbage in, no success out: the starting-model guard and the numeric check."""
import pytest
import torch
import torch.nn as nn

from halp_trt.errors import HalpError
from halp_trt.runtime import get_backend
from halp_trt.runtime.deploy import check_outputs
from halp_trt.runtime.export import export_onnx
from halp_trt.sanity import chance_accuracy, check_model_is_sane
from halp_trt.train import evaluate
from tiny_models import TinyResNet


class Scaled(nn.Module):
    def __init__(self, scale, num_classes=10):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, num_classes)
        self.scale = scale

    def forward(self, x):
        return self.fc(x.flatten(1)) * self.scale


def loader(n=64, classes=10, seed=0, bias_to=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = torch.randint(0, classes, (n,), generator=g) if bias_to is None else \
        torch.full((n,), bias_to)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]


def test_chance_is_the_most_frequent_class():
    assert chance_accuracy(torch.tensor([0, 0, 0, 1])) == 0.75


def test_diverged_or_untrained_models_are_refused_with_what_to_do():
    data = loader(256)
    huge = Scaled(1e12)
    with pytest.raises(HalpError, match="absurdly large outputs.*--pretrain-epochs.*--weights"):
        check_model_is_sane(huge, data, evaluate(huge, data), allow_untrained=False)
    torch.manual_seed(0)
    random_net = Scaled(1.0)
    acc = evaluate(random_net, data)
    with pytest.raises(HalpError, match="chance accuracy.*--allow-untrained"):
        check_model_is_sane(random_net, data, acc, allow_untrained=False)
    check_model_is_sane(random_net, data, acc, allow_untrained=True)  # benchmarks may
    nan_net = Scaled(float("nan"))
    with pytest.raises(HalpError, match="non-finite"):
        check_model_is_sane(nan_net, data, 0.0, allow_untrained=True)  # never, even then


def test_a_model_that_beats_chance_passes():
    data = loader(128, bias_to=3)  # every label 3: chance is 1.0 ... so use a real margin
    with pytest.raises(HalpError, match="chance"):
        check_model_is_sane(Scaled(1.0), data, 1.0, allow_untrained=False)
    data = loader(512)
    check_model_is_sane(Scaled(1.0), data, 0.5, allow_untrained=False)  # 0.5 >> 0.1 chance


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


def test_masked_vs_pruned_check_names_the_problem():
    from halp_trt.pruning.surgery import check_masked_equals_pruned

    a = torch.randn(2, 10)
    assert check_masked_equals_pruned(a, a + 1e-7) < 1e-4
    with pytest.raises(HalpError, match="differs from the masked one"):
        check_masked_equals_pruned(a, a + 1.0)
    with pytest.raises(HalpError):
        check_masked_equals_pruned(a, a * float("nan"))


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
