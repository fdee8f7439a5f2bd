"""The dense quality benchmark's bookkeeping: a row passes on the share of the original's
metric the pruned model keeps, a shrunk run never passes, a refusal is a reason (not a
traceback), and a rerun resumes."""
import json

import pytest
from tool_scripts import load_tool


@pytest.fixture(scope="module")
def bench():
    return load_tool("bench_dense_quality")


def report(original, pruned):
    return {"accuracy": {"original": original, "pruned": pruned, "drop": original - pruned,
                         "metric": "mAP"},
            "input_shape": [1, 3, 64, 64], "latency_ratio_measured": 0.49,
            "latency_ratio_spread": [0.48, 0.51], "target_verdict": "met",
            "original": {"measured_ms": 2.0}, "pruned": {"measured_ms": 0.98},
            "stage_s": {"pretrain": 10.0},
            "outside_graph": {k: {"postprocess_ms": 1.5, "preprocess_ms": 0.2}
                              for k in ("original", "pruned")}}


@pytest.fixture
def runs(monkeypatch):
    import halp_trt.pipeline

    seen = []

    def fake(cfg):
        seen.append(cfg)
        return RESULTS[cfg.model]

    monkeypatch.setattr(halp_trt.pipeline, "prune_and_deploy", fake)
    return seen


RESULTS = {"ssdlite320_mobilenet_v3_large": report(0.40, 0.37),
           "lraspp_mobilenet_v3_large": report(0.50, 0.40)}


def test_a_row_passes_on_the_share_of_the_metric_kept(bench, runs, tmp_path):
    good = bench.run_one("ssdlite320_mobilenet_v3_large", str(tmp_path), 0.5, None, None)
    assert good["passed"] and good["metric_kept"] == pytest.approx(0.925)
    assert good["postprocess_ms"] == {"original": 1.5, "pruned": 1.5}
    assert runs[0].target == "0.5" and runs[0].max_batches is None  # the default run
    bad = bench.run_one("lraspp_mobilenet_v3_large", str(tmp_path), 0.5, None, None)
    assert not bad["passed"] and "keeps 80%" in bad["reason"]


def test_a_shrunk_run_never_passes(bench, runs, tmp_path):
    row = bench.run_one("ssdlite320_mobilenet_v3_large", str(tmp_path), 0.5, 2, 1)
    assert row["shrunk"] and not row["passed"] and "smoke" in row["reason"]


def test_a_refusal_is_the_rows_reason_and_a_rerun_resumes(bench, monkeypatch, tmp_path):
    import halp_trt.pipeline
    from halp_trt.errors import HalpError

    calls = []

    def refuse(cfg):
        calls.append(cfg.model)
        raise HalpError("the original model is untrained (mAP 0.004 <= 0.01)")

    monkeypatch.setattr(halp_trt.pipeline, "prune_and_deploy", refuse)
    path = str(tmp_path / "q.json")
    bench.main(["--json", path, "--only", "fcos_resnet50_fpn"])
    row = json.load(open(path))["models"][0]
    assert not row["passed"] and "traceback" not in row
    assert row["reason"].startswith("the original model is untrained") and row["machine"]
    bench.main(["--json", path, "--only", "fcos_resnet50_fpn"])
    assert calls == ["fcos_resnet50_fpn"]  # resumed: not run twice
    with pytest.raises(SystemExit, match="not among the dense models"):
        bench.main(["--json", path, "--only", "yolov8n"])


def test_the_section_shows_every_row_with_its_machine(bench, runs, tmp_path):
    path = str(tmp_path / "q.json")
    bench.main(["--json", path, "--only",
                "ssdlite320_mobilenet_v3_large,lraspp_mobilenet_v3_large"])
    md = bench.markdown_section(json.load(open(path)))
    assert "**1 of 2 run pass**" in md
    ssd = next(ln for ln in md.splitlines() if ln.startswith("| ssdlite320"))
    assert "| 92% |" in ssd and "pass" in ssd and "1.50 → 1.50" in ssd
    assert "FAIL" in next(ln for ln in md.splitlines() if ln.startswith("| lraspp"))
