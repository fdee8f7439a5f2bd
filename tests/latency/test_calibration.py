"""From the table's layer sum to whole-model latency."""
import pytest
import torch

from fakes import StaircaseLatencyModel
from halp_trt.errors import HalpError
from halp_trt.latency.calibration import Calibration, clamp_slope, floor_copy, slimmed_copy
from halp_trt.pruning.config import HALPConfig
from halp_trt.pruning.pruner import HALPPruner
from tiny_models import TinyResNet


def test_affine_goes_through_both_measured_points_and_inverts():
    c = Calibration("affine", layers_full_ms=8.0, model_full_ms=10.0, layers_slim_ms=4.0,
                    model_slim_ms=6.5)
    a, b = c.slope_intercept
    assert a == pytest.approx(3.5 / 4.0) and b == pytest.approx(10.0 - 8.0 * a)
    assert c.model_ms(8.0) == pytest.approx(10.0) and c.model_ms(4.0) == pytest.approx(6.5)
    for ms in (3.0, 7.0, 10.0):
        assert c.model_ms(c.layers_ms(ms)) == pytest.approx(ms)
    assert c.to_json()["slope"] == pytest.approx(a)


def test_prior_points_are_the_slimmed_copy_of_an_affine_calibration_without_a_floor():
    c = Calibration("affine", layers_full_ms=8.0, model_full_ms=10.0, layers_slim_ms=4.0,
                    model_slim_ms=6.5)
    assert c.prior_points() == [(pytest.approx(0.5), pytest.approx(0.65))]
    # the other kinds need only the original; a measured floor overrides the line below the
    # copy; a copy measured no faster than the original is no point to lean on
    assert Calibration("ratio", 8.0, 10.0, 4.0, 6.5).prior_points() == []
    assert Calibration("additive", 8.0, 10.0, 4.0, 6.5).prior_points() == []
    assert Calibration("affine", 8.0, 10.0, 4.0, 6.5, 2.0, 3.0).prior_points() == []
    assert Calibration("affine", 8.0, 10.0, 4.0, 10.5).prior_points() == []


def test_additive_and_ratio_need_only_the_original():
    add = Calibration("additive", 8.0, 10.0)
    assert add.model_ms(4.0) == pytest.approx(6.0)
    ratio = Calibration("ratio", 8.0, 10.0)
    assert ratio.model_ms(4.0) == pytest.approx(5.0)


def test_a_noisy_slope_is_clamped_to_a_factor_two_of_proportional():
    # the slim copy measured as slow as the original: slope 0, clamped to 0.5 x proportional
    c = Calibration("affine", 8.0, 10.0, 4.0, 10.0)
    assert c.slope_intercept[0] == pytest.approx(0.5 * 10.0 / 8.0)
    assert clamp_slope(100.0, 1.0) == 2.0 and clamp_slope(-1.0, 1.0) == 0.5
    assert clamp_slope(1.3, 1.0) == 1.3


@pytest.mark.parametrize("args", [("cubic", 8.0, 10.0), ("ratio", 0.0, 10.0),
                                  ("affine", 8.0, 10.0), ("affine", 8.0, 10.0, 9.0, 11.0)])
def test_bad_calibrations_are_refused(args):
    with pytest.raises(HalpError):
        Calibration(*args)


def test_slimmed_copy_cuts_every_group_to_the_factor_in_whole_steps():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    model = TinyResNet(width=32)
    pr = HALPPruner(model, x, StaircaseLatencyModel(step=4), HALPConfig(target=1 - 1e-9,
                                                                       steps=1, interval=1))
    full_ms = pr.predict_ms()
    sizes = {g.root: (g.size, pr.group_sizes[g.id]) for g in pr.prunable}
    slim, layers_ms = slimmed_copy(pr, 0.5)
    assert layers_ms < full_ms
    mods = dict(slim.named_modules())
    for root, (size, step) in sizes.items():
        kept = mods[root].out_channels
        assert kept % step == 0 or kept == size
        assert abs(kept - 0.5 * size) <= step
    assert slim(x).shape == (1, 10)


def test_a_measured_floor_bends_the_line_below_the_slim_point_only():
    # original (10, 8), slim (5, 5) -> line 0.6 x + 2 puts a layer sum of 1 at 2.6 ms; the
    # smallest model measured at 1.0 ms bends the prediction below the slim point
    c = Calibration("affine", 10.0, 8.0, 5.0, 5.0, layers_floor_ms=1.0, model_floor_ms=1.0)
    line = Calibration("affine", 10.0, 8.0, 5.0, 5.0)
    assert c.model_ms(1.0) == pytest.approx(1.0) and line.model_ms(1.0) == pytest.approx(2.6)
    assert c.model_ms(3.0) == pytest.approx(3.0)  # on the floor-slim segment
    assert c.model_ms(7.0) == pytest.approx(line.model_ms(7.0))  # above the slim: unchanged
    for ms in (1.0, 2.5, 4.9, 6.0, 8.0):
        assert c.model_ms(c.layers_ms(ms)) == pytest.approx(ms)
    # a floor that is not below the slim point says nothing new: ignored
    odd = Calibration("affine", 10.0, 8.0, 5.0, 5.0, layers_floor_ms=6.0, model_floor_ms=1.0)
    assert odd.model_ms(1.0) == pytest.approx(line.model_ms(1.0))


def test_floor_copy_is_the_smallest_model_the_pruner_allows():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    pr = HALPPruner(TinyResNet(width=32), x, StaircaseLatencyModel(step=4),
                    HALPConfig(target=1 - 1e-9, steps=1, interval=1))
    widths = pr.min_widths()
    sizes = {g.root: widths[g.id] for g in pr.prunable}
    floor, layers_ms = floor_copy(pr)
    assert layers_ms == pytest.approx(pr.min_ms)
    mods = dict(floor.named_modules())
    assert all(mods[root].out_channels == k for root, k in sizes.items())
    assert floor(x).shape == (1, 10)
