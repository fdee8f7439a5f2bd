"""The prune-and-deploy report (halp_trt.report): figures and verdict from known measurements,
what the Markdown says about them, and the figures' PNGs."""
from types import SimpleNamespace

import pytest

from halp_trt.latency.calibration import Calibration
from halp_trt.pruning.targets import parse_target
from halp_trt.report import build_report, write_markdown, write_plots
from halp_trt.runtime.deploy import Comparison, NumericCheck
from halp_trt.runtime.protocol import Stats


def _report(orig_ms=2.0, pruned_ms=1.0, target_fraction=None, target_ms=None, median_over=1.0,
            **extra):
    """A report of known numbers: the original measured at ``orig_ms``, the pruned model at
    ``pruned_ms`` (medians ``median_over`` × the minima), a table whose layers sum to 10 ms
    (4 ms pruned) on a 5x ratio calibration."""
    cmp = Comparison(Stats(30, orig_ms, orig_ms, orig_ms * median_over, 0.01),
                     Stats(30, pruned_ms, pruned_ms, pruned_ms * median_over, 0.01))
    cfg = SimpleNamespace(model="m", data="d", input_shape=(1, 3, 8, 8),
                          target=str(target_fraction or f"{target_ms}ms"),
                          parsed_target=parse_target(str(target_fraction or f"{target_ms}ms"),
                                                     of="measured"), to_json=dict)
    result = SimpleNamespace(original_widths={"a": 8, "b": 16}, kept={"a": [0, 1], "b": [3]},
                             history=[{"step": 1, "target_ms": 5.0, "predicted_ms": 4.0}])
    backend = SimpleNamespace(identity=lambda: {"runtime": "fake"}, verification_note="fake",
                              verified=False)
    report = build_report(cfg, SimpleNamespace(identity={}), "t.json", "given", None, backend,
                          Calibration("ratio", 10.0, orig_ms), 10.0, {"a": 1.5, "b": 2.5}, cmp,
                          NumericCheck(1e-6, 1.0, 1e-3, 2), 0.9, 0.85, result, 3.0,
                          {"prune": 2.0}, {})
    report.update(extra)
    return report


def test_a_target_in_ms_is_judged_against_the_measured_original():
    """``--target 1ms`` on an original measured at 2 ms asks for half its latency; the pruned
    model at 1 ms meets it, and every figure follows from the measurements."""
    r = _report(2.0, 1.0, target_ms=1.0)
    assert r["target_ratio"] == pytest.approx(0.5)
    assert r["latency_ratio_measured"] == pytest.approx(0.5)
    assert r["latency_ratio_vs_target"] == pytest.approx(1.0)
    assert r["target_verdict"] == "met"
    assert r["speedup_measured"] == pytest.approx(2.0)
    assert r["original"]["predicted_ms"] == pytest.approx(2.0)  # calibrated on the original
    assert r["speedup_predicted"] == pytest.approx(10.0 / 4.0)
    assert r["latency_ratio_spread"] == pytest.approx([0.5, 0.5])  # no sessions kept
    assert r["widths"] == {"a": {"original": 8, "kept": 2}, "b": {"original": 16, "kept": 1}}
    assert r["accuracy"]["drop"] == pytest.approx(0.05)
    assert not r["noisy_measurement"]


def test_markdown_says_which_side_a_target_was_missed_on_and_warns_of_noise(tmp_path):
    """A miss is reported as slower or faster than asked (pruning too much costs accuracy for
    nothing), and a noisy measurement is flagged with what to do."""
    path = tmp_path / "report.md"
    r = _report(2.0, 1.0, target_fraction=0.8, median_over=1.3)  # 0.5 measured vs 0.8 asked
    assert r["target_verdict"] == "missed" and r["noisy_measurement"]
    write_markdown(str(path), r)
    md = path.read_text()
    assert "**missed** (faster than (pruned more) the target" in md
    assert "(-37.5% vs target)" in md
    assert "**Warning:** the latency measurements were noisy" in md
    assert "| a | 8 | 2 |" in md and "| 1 | 5.000 | 4.000 |" in md
    write_markdown(str(path), _report(2.0, 1.9, target_fraction=0.8))
    assert "**missed** (slower than the target" in path.read_text()
    assert "Warning" not in path.read_text()


def test_markdown_reports_int8_figures_when_deployed_in_int8(tmp_path):
    """An INT8 deployment's accuracy and agreement with PyTorch must be in the report: the
    latencies alone would hide what quantization cost."""
    int8 = {"calibration_batches": 4, "accuracy": {"original": 0.9, "pruned": 0.84},
            "check": {"top1_agreement": 0.97, "rel_logit_error": 0.05, "n_inputs": 200}}
    path = tmp_path / "report.md"
    write_markdown(str(path), _report(int8=int8, target_fraction=0.5))
    md = path.read_text()
    assert "INT8 (QDQ, 4 calibration batches): accuracy original 0.9000, pruned 0.8400" in md
    assert "top-1 agreement 0.970, logit error 5.0% on 200 inputs" in md


def test_plots_are_written_as_png(tmp_path):
    """widths.png and layer_latency.png: the report's Markdown points at both."""
    specs = [SimpleNamespace(name=n, in_channels=8, out_channels=16) for n in ("a", "b")]
    table = SimpleNamespace(layer_ms=lambda s, ci, co: ci * co / 100)
    paths = write_plots(str(tmp_path), _report(target_fraction=0.5), table, specs,
                        {"a": 0.5, "b": 0.25})
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["widths.png", "layer_latency.png"]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
