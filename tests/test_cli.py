"""The CLI is thin: it parses flags, calls the library, and turns its errors into one line."""
import pytest
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


def test_validate_prints_and_returns_the_ratio_spread_over_sessions(tmp_path, monkeypatch):
    """A fake clock (real ONNX files): a graph takes 1 ms per KB of its bytes, and the i-th
    session of each graph is 0%, +8%, -3% off for its whole life."""
    import json

    import torch

    from halp_trt.runtime.base import Backend
    from halp_trt.runtime.export import export_onnx

    offsets = (1.0, 1.08, 0.97)

    class OffsetSessions(Backend):
        name = "offset-sessions"

        def __init__(self):
            self.built = {}

        def _identity_impl(self):
            return {"runtime": "fake"}

        def _prepare_impl(self, onnx_bytes, label=""):
            i = self.built[onnx_bytes] = self.built.get(onnx_bytes, -1) + 1
            return {"ms": len(onnx_bytes) / 1024 * offsets[i % 3]}

        def _time_runs_impl(self, handle, n_runs):
            return [handle["ms"]] * n_runs

        def _infer_impl(self, handle, inputs):
            raise NotImplementedError

    paths = []
    for width in (16, 6):
        path = tmp_path / f"w{width}.onnx"
        net = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.ReLU(),
                                  torch.nn.Conv2d(width, 4, 3))
        path.write_bytes(export_onnx(net, torch.randn(1, 3, 8, 8)))
        paths.append(path)
    monkeypatch.setattr("halp_trt.runtime.backend_for", lambda gpu, precision, **kw:
                        OffsetSessions())
    res = invoke("validate", *paths, "--rounds", "3", "--json", tmp_path / "v.json")
    assert res.exit_code == 0, res.output
    v = json.loads((tmp_path / "v.json").read_text())
    kb = {k: len(p.read_bytes()) / 1024 for k, p in zip(("original", "pruned"), paths)}
    ratio = kb["pruned"] / kb["original"]
    assert v["latency_ratio_measured"] == pytest.approx(ratio)
    assert v["latency_ratio_spread"] == pytest.approx([ratio * 0.97 / 1.08, ratio * 1.08 / 0.97])
    assert v["speedup_spread"] == pytest.approx([0.97 / 1.08 / ratio, 1.08 / 0.97 / ratio])
    # three measurement calls of three sessions each (fresh sessions per call)
    assert v["pruned"]["session_ms"] == pytest.approx([kb["pruned"] * o for o in offsets] * 3)
    lo, hi = v["latency_ratio_spread"]
    assert (f"latency ratio (pruned/original): {ratio:.3f}, {lo:.3f}-{hi:.3f} over pairs of "
            "sessions (9 and 9 sessions in 3 calls;") in res.output
    assert f"pruned {kb['pruned'] * 0.97:.3f}-{kb['pruned'] * 1.08:.3f} ms" in res.output
