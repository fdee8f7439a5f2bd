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
    t = cfg.parsed_target
    assert (t.kind, t.of, t.value) == ("fraction", "measured", pytest.approx(0.3))
    assert cfg.exclude == ("fc",)
    t = DeployConfig(out="o", target="4ms").parsed_target
    assert (t.kind, t.value, t.to_ms(10.0)) == ("ms", 4.0, 4.0)
    assert cfg.to_json()["exclude"] == ["fc"] and "parsed_target" not in cfg.to_json()


def test_cli_defaults_and_choices_are_deploy_configs():
    """Every prune-and-deploy option has DeployConfig's default and choice list; a retyped
    default that drifts fails here."""
    from dataclasses import MISSING, fields

    import click

    from halp_trt.cli import main
    from halp_trt.pipeline.config import CHOICES, DeployConfig

    by_name = {f.name: f for f in fields(DeployConfig)}
    command = main.commands["prune-and-deploy"]
    ctx = click.Context(command)
    params = {p.name: p for p in command.params}
    assert set(params) - {"out_dir", "help"} <= set(by_name)
    checked = 0
    for name, p in params.items():
        if name not in by_name or by_name[name].default is MISSING:
            continue
        default, cli_default = by_name[name].default, p.get_default(ctx)
        if p.multiple:
            unset = not isinstance(cli_default, (list, tuple))  # click 8.2+: a sentinel
            default, cli_default = tuple(default), () if unset else tuple(cli_default)
        assert cli_default == default, name
        if name in CHOICES:
            assert isinstance(p.type, click.Choice) and tuple(p.type.choices) == CHOICES[name]
        checked += 1
    assert checked >= 25
    for command in ("build-table", "validate"):  # the runtimes and precisions offered there too
        opts = {p.name: p for p in main.commands[command].params}
        assert tuple(opts["backend"].type.choices) == CHOICES["backend"]
        assert tuple(opts["precision"].type.choices) == CHOICES["precision"]


def test_choice_lists_match_the_pruning_layer():
    from halp_trt.pipeline.config import CHOICES
    from halp_trt.pruning.contributions import RULES
    from halp_trt.pruning.importance import NORMALIZERS

    assert CHOICES["importance_normalizer"] == NORMALIZERS
    assert set(CHOICES["contribution"]) == set(RULES)
