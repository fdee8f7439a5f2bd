import math

import pytest

from halp_trt.errors import HalpError
from halp_trt.pruning.schedule import schedule_targets_ms


def test_exp_schedule_endpoints_ratio_and_monotone():
    full, final, m = 10.0, 2.5, 4
    t = schedule_targets_ms(full, final, m, "exp")
    assert len(t) == m
    assert t[-1] == final
    assert t[0] == pytest.approx(math.exp(0.25 * math.log(final) + 0.75 * math.log(full)))
    assert all(a > b for a, b in zip([full] + t, t))
    # equal ratios between consecutive targets (geometric), starting from the full latency
    ratios = [b / a for a, b in zip([full] + t, t)]
    assert ratios == pytest.approx([ratios[0]] * m)
    assert ratios[0] == pytest.approx((final / full) ** (1 / m))


def test_linear_schedule_equal_steps():
    full, final, m = 9.0, 3.0, 3
    t = schedule_targets_ms(full, final, m, "linear")
    assert t == pytest.approx([7.0, 5.0, 3.0])
    diffs = [a - b for a, b in zip([full] + t, t)]
    assert diffs == pytest.approx([2.0] * 3)


def test_one_shot():
    assert schedule_targets_ms(8.0, 4.0, 1, "exp") == [4.0]
    assert schedule_targets_ms(8.0, 4.0, 1, "linear") == [4.0]


@pytest.mark.parametrize("kind", ["exp", "linear"])
def test_schedule_is_monotone_for_many_steps(kind):
    t = schedule_targets_ms(100.0, 1.0, 50, kind)
    assert all(a > b for a, b in zip(t, t[1:]))
    assert 1.0 <= min(t) and max(t) < 100.0


@pytest.mark.parametrize("bad", [dict(kind="cosine"), dict(steps=0), dict(steps=2.5),
                                 dict(final=0.0), dict(full=-1.0)])
def test_schedule_rejects_bad_arguments(bad):
    args = dict(full=10.0, final=5.0, steps=3, kind="exp")
    args.update(bad)
    with pytest.raises(HalpError):
        schedule_targets_ms(args["full"], args["final"], args["steps"], args["kind"])
