"""The CLI is thin: it parses flags, calls the library, and turns its errors into one line."""
from click.testing import CliRunner

from halp_trt.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_help_lists_the_four_commands_and_version_works():
    res = invoke("--help")
    assert res.exit_code == 0
    for cmd in ("build-table", "prune-and-deploy", "inspect", "validate"):
        assert cmd in res.output
    assert invoke("--version").exit_code == 0


def test_library_field_errors_come_out_as_flags(tmp_path):
    res = invoke("prune-and-deploy", "--out", tmp_path / "o", "--input-size", "4")
    assert res.exit_code == 2
    assert res.output.startswith("error: --input-size must be between 8 and")
    assert "input_size" not in res.output and "Traceback" not in res.output
    res = invoke("prune-and-deploy", "--out", tmp_path / "o", "--target", "2")
    assert res.output.startswith("error: --target '2'") and "measured latency" in res.output


def test_choices_are_checked_by_the_cli_before_the_library(tmp_path):
    res = invoke("prune-and-deploy", "--out", tmp_path / "o", "--importance", "taylr")
    assert res.exit_code == 2 and "taylr" in res.output and not (tmp_path / "o").exists()


def test_inspect_of_a_missing_table_is_one_line(tmp_path):
    res = invoke("inspect", tmp_path / "none.json")
    assert res.exit_code == 2
    assert res.output.count("error:") == 1 and "build-table" in res.output
