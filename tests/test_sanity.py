"""Garbage in, no success out: the starting-model guard. (The numeric check of deployed outputs
is tested in runtime/test_deploy.py.)"""
import pytest
import torch
from tiny_models import Scaled

from halp_trt.errors import HalpError
from halp_trt.sanity import chance_accuracy, check_model_is_sane
from halp_trt.train import evaluate


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


def test_an_untrained_detector_is_refused_before_pruning():
    """mAP has no label-frequency chance: the detection task names the mAP an untrained
    detector reaches, and a starting detector at or below it has nothing to preserve."""
    from halp_trt.data import make_loader
    from halp_trt.tasks import TASKS
    from halp_trt.tasks.detection import ShapesDetection, as_detection_core
    from tiny_models import tiny_retinanet

    torch.manual_seed(0)
    task = TASKS["detection"]
    core = as_detection_core(tiny_retinanet(4), 64)
    val = make_loader(ShapesDetection(16, 64, seed=1), 8, False)
    untrained_map = task.evaluate(core, val, 4)
    assert untrained_map <= task.untrained_at_or_below
    with pytest.raises(HalpError, match="learned nothing measurable.*mAP.*--pretrain-epochs"):
        check_model_is_sane(core, val, untrained_map, allow_untrained=False, chance_test=False,
                            untrained_at_or_below=task.untrained_at_or_below, metric="mAP")
    check_model_is_sane(core, val, untrained_map, allow_untrained=True, chance_test=False,
                        untrained_at_or_below=task.untrained_at_or_below)


def test_a_pruned_model_that_lost_its_metric_is_not_deployed():
    from halp_trt.sanity import MIN_KEPT_SHARE, check_not_collapsed

    with pytest.raises(HalpError, match=r"0\.2553 -> 0\.0002.*not deployed.*--epochs"):
        check_not_collapsed(0.2553, 0.0002, "mAP", allow_untrained=False)
    check_not_collapsed(0.2553, 0.2553 * MIN_KEPT_SHARE, "mAP", allow_untrained=False)
    check_not_collapsed(0.2553, 0.0002, "mAP", allow_untrained=True)  # random-weight benchmarks
