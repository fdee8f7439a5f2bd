"""Several targets in one run: shared training, table and calibration; one model per target;
a Pareto front of measured latency vs accuracy."""
import json

import pytest

from halp_trt.errors import ConfigError
from halp_trt.pipeline import DeployConfig, prune_and_deploy
from tiny_models import toy_config


def test_several_targets_share_the_original_and_give_one_model_each(tmp_path, monkeypatch):
    import halp_trt.runtime
    from fakes import SizeTimedBackend
    from halp_trt.latency.build import BuildConfig, build_table
    from halp_trt.pipeline import run as run_module
    from halp_trt.runtime.protocol import Protocol
    from tiny_models import tiny_resnet

    # a deterministic clock, for the table too: on 16x16 layers real timings vary by more than
    # targets 0.85 and 0.95 differ, and the comparisons below hinged on that noise (seen: 48 vs
    # 46 channels; with a really measured table, about one run in seven pruned 0.95 to 0.70)
    monkeypatch.setattr(halp_trt.runtime, "backend_for",
                        lambda gpu, precision="fp32", **kw: SizeTimedBackend())
    tiny_table = str(tmp_path / "size_timed_table.json")
    build_table(tiny_resnet(), (1, 3, 16, 16), SizeTimedBackend(), tiny_table,
                "tiny_models:tiny_resnet", BuildConfig(protocol=Protocol(rounds=3),
                                                       sweep_window=16, max_points_per_axis=5,
                                                       progress=False))
    pretrained = {"n": 0}
    real_pretrain = run_module.DeployRun._pretrain

    def counting_pretrain(self, model):
        pretrained["n"] += 1
        return real_pretrain(self, model)

    monkeypatch.setattr(run_module.DeployRun, "_pretrain", counting_pretrain)
    # the fake clock is not the machine the table was measured on: no probe
    front = prune_and_deploy(toy_config(tmp_path, tiny_table, target="0.85,0.95", epochs=0,
                                        probe_table=False))
    assert pretrained["n"] == 1, "the original is trained once for every target"
    assert [p["target"] for p in sorted(front["points"], key=lambda p: p["target"])] == \
        ["0.85", "0.95"]
    reports = {t: json.loads((tmp_path / f"target_0_{t}" / "report.json").read_text())
               for t in ("85", "95")}
    # both measured against the same original weights and the same calibration
    assert reports["85"]["accuracy"]["original"] == reports["95"]["accuracy"]["original"]
    assert reports["85"]["table"]["calibration"] == reports["95"]["table"]["calibration"]
    for t, r in reports.items():
        assert (tmp_path / f"target_0_{t}" / "model.onnx").exists()
        point = next(p for p in front["points"] if p["target"] == f"0.{t}")
        assert point["measured_ms"] == pytest.approx(r["pruned"]["measured_ms"])
    # the lower target is the faster model (not necessarily fewer channels: the knapsack may
    # keep more cheap channels and drop fewer expensive ones — seen: 58 vs 57 at 0.85 vs 0.95)
    # (about one run in four both targets settle on the same widths, under 0.85: equal then)
    assert reports["85"]["pruned"]["measured_ms"] <= reports["95"]["pruned"]["measured_ms"]
    for t, r in reports.items():
        assert r["latency_ratio_measured"] <= int(t) / 100 * 1.05, (t, r["latency_ratio_measured"])
    md = (tmp_path / "pareto.md").read_text()
    assert "| original |" in md and "`target_0_85/`" in md
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    assert json.loads((tmp_path / "pareto.json").read_text())["points"] == front["points"]
    assert not (tmp_path / "target_0_85" / "checkpoint.pt").exists()

    # the same command again: nothing is retrained or re-pruned
    again = prune_and_deploy(toy_config(tmp_path, tiny_table, target="0.85,0.95", epochs=0,
                                        probe_table=False))
    assert pretrained["n"] == 1 and again["points"] == front["points"]


def test_repeated_or_bad_targets_are_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="repeats"):
        DeployConfig(out=str(tmp_path), target="0.5,50%")
    with pytest.raises(ConfigError):
        DeployConfig(out=str(tmp_path), target="0.5,abc")


def test_state_dict_metadata_survives_the_run(tmp_path, tiny_table):
    """The original's weights are kept as a copy with their metadata: models that check their
    state dict's version on load (MNASNet) are rebuilt from it for each stage and target."""
    front = prune_and_deploy(toy_config(tmp_path, tiny_table,
                                        model="tiny_models:versioned_tiny_resnet",
                                        target="0.95,0.9", epochs=0, steps=1))
    assert len(front["points"]) == 2
