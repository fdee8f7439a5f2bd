import pytest

from halp_trt.errors import ConfigError, HalpError
from halp_trt.pruning.targets import Target, parse_target


@pytest.mark.parametrize("text,expected", [
    ("0.5", Target("fraction", 0.5)),
    (0.3, Target("fraction", 0.3)),
    (" .25 ", Target("fraction", 0.25)),
    ("50%", Target("fraction", 0.5)),
    ("12ms", Target("ms", 12.0)),
    ("12.5 ms", Target("ms", 12.5)),
    ("3MS", Target("ms", 3.0)),
    ("1e1ms", Target("ms", 10.0)),
])
def test_parse_target(text, expected):
    assert parse_target(text) == expected


@pytest.mark.parametrize("bad", ["", "fast", "12 s", "ms", "0", "1", "1.0", "1.5", "-0.2",
                                 "0ms", "-3ms", "150%", "0%", 0, 1, 2.0, float("nan"), True,
                                 None, [0.5]])
def test_parse_target_rejects(bad):
    with pytest.raises(HalpError):
        parse_target(bad)


def test_target_to_ms():
    assert parse_target("0.25").to_ms(8.0) == 2.0
    assert parse_target("3ms").to_ms(8.0) == 3.0
    assert str(parse_target("3ms")) == "3ms" and str(parse_target(0.5)) == "0.5"


def test_a_fraction_says_what_it_is_a_fraction_of_and_errors_name_the_field():
    assert parse_target("0.5").of == "predicted"
    assert parse_target("0.5", of="measured").of == "measured"
    with pytest.raises(ConfigError) as err:
        parse_target("2", of="measured", field_name="target")
    assert "measured latency" in str(err.value) and str(err.value).startswith("target '2'")
    assert err.value.render_for_cli().startswith("--target '2'")
