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


def test_a_segmentation_model_must_beat_predicting_background_everywhere():
    """Background fills most pixels, so a constant prediction already scores a high mean
    IoU; a model that learned nothing more is refused, one that segments passes."""
    import torch.nn as nn

    from halp_trt.data import make_loader
    from halp_trt.tasks.segmentation import ShapesSegmentation, constant_prediction_miou, mean_iou

    val = make_loader(ShapesSegmentation(16, 32, seed=1), 8, False)
    masks = torch.cat([m for _, m in val])
    floor = constant_prediction_miou(masks, 4)
    share = float((masks == 0).float().mean())
    assert floor == pytest.approx(share / 4, abs=1e-4)  # background's IoU, 0 for the others

    class Answers(nn.Module):
        """Logits from a lookup: perfect masks, or background everywhere."""
        def __init__(self, perfect):
            super().__init__()
            self.perfect, self.bias = perfect, nn.Parameter(torch.zeros(1))

        def forward(self, x):
            # the loader is not shuffled: the masks of these images, in order
            out = []
            for _ in range(x.shape[0]):
                m = masks[self.i] if self.perfect else torch.zeros_like(masks[0])
                self.i = (self.i + 1) % len(masks)
                out.append(nn.functional.one_hot(m, 4).permute(2, 0, 1).float())
            return torch.stack(out) + self.bias

    for perfect, refused in ((False, True), (True, False)):
        model = Answers(perfect)
        model.i = 0
        score = mean_iou(model, val, 4)
        model.i = 0
        kw = dict(allow_untrained=False, chance_test=False, metric="mean IoU",
                  constant_score=lambda y: constant_prediction_miou(y, 4))
        if refused:
            assert score == pytest.approx(floor, abs=1e-4)
            with pytest.raises(HalpError, match="no better than predicting the most frequent "
                                                "class everywhere.*--allow-untrained"):
                check_model_is_sane(model, val, score, **kw)
        else:
            assert score == pytest.approx(1.0)
            check_model_is_sane(model, val, score, **kw)
