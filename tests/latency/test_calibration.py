"""From the table's layer sum to whole-model latency."""
import pytest

from halp_trt.errors import HalpError
from halp_trt.errors import ConfigError
from halp_trt.latency.calibration import (Calibration, clamp_slope, floor_worth_measuring,
                                          from_measurements, layers_target_ms)


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


def test_a_goal_is_mapped_to_the_layer_sum_that_predicts_it():
    c = Calibration("affine", 8.0, 10.0, 4.0, 6.5)
    layers_ms, note = layers_target_ms(c, 7.0, layers_min_ms=2.0, target_text="0.7")
    assert layers_ms == pytest.approx(c.layers_ms(7.0)) and note is None


def test_a_goal_near_the_floor_prunes_to_the_floor_and_one_far_below_names_the_minimum():
    c = Calibration("affine", 8.0, 10.0, 4.0, 6.5)  # floor at layer sum 3: 5.625 ms
    layers_ms, note = layers_target_ms(c, 5.0, layers_min_ms=3.0, target_text="0.5")
    assert layers_ms == 3.0 and "near the target" in note  # 5.625 <= 1.3 x 5.0
    with pytest.raises(ConfigError) as err:
        layers_target_ms(c, 4.0, layers_min_ms=3.0, target_text="0.4")
    assert err.value.field == "target" and "0.563 or more" in str(err.value)
    with pytest.raises(ConfigError, match="not below the original"):
        layers_target_ms(c, 10.0, layers_min_ms=3.0, target_text="1.0")


def test_the_floor_is_measured_only_near_a_goal_and_only_once():
    c = Calibration("affine", 8.0, 10.0, 4.0, 6.5)  # floor at layer sum 3 -> 5.625 ms
    assert floor_worth_measuring(c, 3.0, goal_ms=11.0) and not floor_worth_measuring(c, 3.0, 12.0)
    measured = Calibration("affine", 8.0, 10.0, 4.0, 6.5, layers_floor_ms=3.0,
                           model_floor_ms=4.0)
    assert not floor_worth_measuring(measured, 3.0, goal_ms=5.0)


def test_affine_without_a_narrower_second_point_falls_back_to_ratio_and_says_so():
    measured = {"layers_full_ms": 8.0, "model_full_ms": 10.0, "layers_slim_ms": 8.0,
                "model_slim_ms": 10.0}
    c, note = from_measurements("affine", measured)
    assert c.kind == "ratio" and "proportionally" in note
    c, note = from_measurements("affine", dict(measured, layers_slim_ms=4.0, model_slim_ms=6.5))
    assert c.kind == "affine" and note is None
