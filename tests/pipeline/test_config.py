"""DeployConfig: every field checked before any work, errors in the caller's language."""
import pytest

from halp_trt.errors import ConfigError
from halp_trt.pipeline.config import CHOICES, DeployConfig


@pytest.mark.parametrize("field,value", [("importance", "taylr"), ("contribution", "both"),
                                         ("calibration", "linear"), ("precision", "int4")])
def test_misspelled_choices_are_caught_up_front_and_name_the_field(tmp_path, field, value):
    with pytest.raises(ConfigError) as err:
        DeployConfig(out=str(tmp_path / "o"), **{field: value})
    e = err.value
    assert e.field == field and str(e).startswith(f"{field} must be one of")
    assert all(c in str(e) for c in CHOICES[field]) and repr(value) in str(e)
    assert e.render_for_cli().startswith(f"--{field} must be one of")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kw,field", [
    (dict(input_size=4), "input_size"), (dict(batch_size=0), "batch_size"),
    (dict(train_batch_size=0), "train_batch_size"), (dict(epochs=-1), "epochs"),
    (dict(lr=float("nan")), "lr"), (dict(target="2"), "target"),
    (dict(precision="fp16"), "precision"), (dict(max_batches=0), "max_batches"),
])
def test_numbers_and_targets_name_the_field_and_the_cli_its_flag(kw, field):
    with pytest.raises(ConfigError) as err:
        DeployConfig(out="o", **kw)
    assert err.value.field == field and field in str(err.value)
    assert "--" + field.replace("_", "-") in err.value.render_for_cli()


def test_a_valid_config_parses_its_target_as_a_fraction_of_the_measured_original():
    cfg = DeployConfig(out="o", target="30%", exclude="fc")
    assert cfg.target_fraction == pytest.approx(0.3) and cfg.target_ms is None
    assert cfg.parsed_target.of == "measured" and cfg.exclude == ("fc",)
    assert DeployConfig(out="o", target="4ms").target_ms == 4.0
    assert cfg.to_json()["exclude"] == ["fc"] and "parsed_target" not in cfg.to_json()
