"""Building tables for real on ONNX Runtime CPU (tiny model, few rounds): plan, resume after
kill -9, torchrun split/merge, CLI."""
import os
import signal
import subprocess
import sys
import time


from halp_trt.runtime import get_backend
from halp_trt.latency.build import BuildConfig, build_table, plan_axis
from halp_trt.runtime.protocol import Protocol
from halp_trt.latency.table import LatencyTable, StepInfo
from tiny_models import tiny_resnet
from fakes import free_port

SHAPE = (1, 3, 16, 16)
FAST = BuildConfig(protocol=Protocol(rounds=3, batch_size=16), sweep_window=16,
                   max_points_per_axis=5, progress=False)


def test_plan_axis_aligns_to_steps_and_thins():
    step8 = StepInfo(8, 0, True)
    assert plan_axis(64, step8, 20) == [8, 16, 24, 32, 40, 48, 56, 64]
    thin = plan_axis(512, step8, 6)
    assert len(thin) <= 7 and thin[-1] == 512 and thin[0] == 8
    assert all(c % 8 == 0 for c in thin)
    assert plan_axis(3, StepInfo(), 12, fixed=[3], prunable=False) == [3]


def test_build_small_table_and_lookup(tmp_path):
    model = tiny_resnet()
    out = tmp_path / "tiny.json"
    cfg = BuildConfig(**{**FAST.__dict__, "validate": 6})
    build_table(model, SHAPE, get_backend("onnxruntime"), str(out), "tiny", cfg)
    loaded = LatencyTable.load(str(out))
    assert loaded.complete and loaded.identity["threads"] == 1
    assert loaded.identity["input_shape"] == list(SHAPE)
    assert loaded.identity["protocol"]["rounds"] == 3
    # its weights stay in any last-level cache: big layers are timed after emptying L2 only
    assert loaded.identity["protocol"]["cold_level"] == "l2"
    # the classifier's output width is fixed; the stem's input (image) too
    lin = next(s for s in loaded.signatures.values() if s.signature.op == "linear")
    assert not lin.out_prunable and lin.grid_out == [10]
    # the stem and the block's two 3x3 convs share one signature (channels are the axes);
    # the stem's fixed input width (the image's 3 channels) is measured exactly
    stem = next(s for s in loaded.signatures.values() if "stem" in s.layers)
    assert {"stem", "block.conv1", "block.conv2"} <= set(stem.layers)
    assert 3 in stem.grid_in and stem.in_prunable
    for s in loaded.signatures.values():
        assert not s.missing()
        for (ci, co), st in s.entries.items():
            assert st.n == 3 and st.min_ms > 0 and st.min_ms <= st.median_ms
    val = loaded.extra["validation"]
    assert val["n"] == 6 and val["median_abs_rel_error"] is not None
    assert loaded.model_measured_ms > 0


_BUILD_SCRIPT = """
import sys, torch
from halp_trt.runtime import get_backend
from halp_trt.latency.build import BuildConfig, build_table
from halp_trt.runtime.protocol import Protocol
from tiny_models import tiny_resnet
cfg = BuildConfig(protocol=Protocol(rounds=int(sys.argv[2]), batch_size=4), sweep_window=16,
                  max_points_per_axis=5, progress=False, measure_model=False)
build_table(tiny_resnet(), (1, 3, 16, 16), get_backend("onnxruntime"), sys.argv[1], "tiny", cfg)
"""


def _entries(path):
    t = LatencyTable.load(str(path), require_complete=False)
    return {(k, ci, co): st for k, s in t.signatures.items() for (ci, co), st in s.entries.items()}


def test_killed_build_keeps_measurements_and_resumes(tmp_path):
    out = tmp_path / "resume.json"
    env = {**os.environ}
    proc = subprocess.Popen([sys.executable, "-c", _BUILD_SCRIPT, str(out), "8"], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and len(_entries(out)) >= 8:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "build finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = _entries(out)  # the file is never half-written: it parses
    assert partial
    assert not LatencyTable.load(str(out), require_complete=False).complete
    subprocess.run([sys.executable, "-c", _BUILD_SCRIPT, str(out), "8"], env=env, check=True,
                   timeout=300)
    final = LatencyTable.load(str(out))
    entries = _entries(out)
    assert final.complete and len(entries) > len(partial)
    # finished measurements were kept, not re-measured
    for key, st in partial.items():
        assert entries[key] == st


def test_torchrun_two_ranks_split_and_merge(tmp_path):
    out = tmp_path / "dist.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(free_port()), "-m", "halp_trt.cli", "build-table",
           "tiny_models:tiny_resnet", "--input-shape", "1,3,16,16", "--out", str(out),
           "--rounds", "3", "--max-points", "4"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    table = LatencyTable.load(str(out))
    assert table.complete
    for s in table.signatures.values():
        assert not s.missing()
    assert not list(tmp_path.glob("*.partial")), "rank partial files are removed after merge"
    assert res.stdout.count("wrote") == 1, "only rank 0 reports and writes"


def test_cli_build_and_inspect(tmp_path):
    from click.testing import CliRunner

    from halp_trt.cli import main

    out = tmp_path / "cli.json"
    runner = CliRunner()
    res = runner.invoke(main, ["build-table", "tiny_models:tiny_resnet", "--input-shape",
                               "1,3,16,16", "--out", str(out), "--rounds", "2", "--max-points",
                               "3"])
    assert res.exit_code == 0, res.output
    assert "configurations of a" in res.output
    res = runner.invoke(main, ["inspect", str(out), "--out", str(tmp_path / "png")])
    assert res.exit_code == 0, res.output
    pngs = list((tmp_path / "png").glob("*.png"))
    assert len(pngs) == len(LatencyTable.load(str(out)).signatures)
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    res = runner.invoke(main, ["inspect", str(out), "--layer", "block.conv*"])
    assert res.exit_code == 0 and "hw16x16" in res.output
    res = runner.invoke(main, ["build-table", "no_such_model", "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "unknown model" in res.output
    res = runner.invoke(main, ["build-table", "resnet18", "--input-shape", "1,3,a", "--out",
                               str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "--input-shape" in res.output


def test_cold_level_sizes_the_weights_at_the_deployed_precision(monkeypatch):
    import halp_trt.latency.build as build_module
    from types import SimpleNamespace

    from halp_trt.latency.build import TableBuilder

    model = tiny_resnet()
    n_params = sum(p.numel() for p in model.parameters())
    llc_bytes = 3 * n_params  # holds the int8 weights twice over, not the fp32 ones
    monkeypatch.setattr(build_module, "cold_level_for",
                        lambda nbytes: "l2" if nbytes <= 0.5 * llc_bytes else "llc")
    levels = {}
    for precision, device in (("fp32", "cpu"), ("int8", "cpu"), ("int8", "gpu")):
        backend = SimpleNamespace(identity=lambda p=precision, d=device: {"device": d,
                                                                          "precision": p})
        cfg = TableBuilder._resolve_cold_level(BuildConfig(), model, backend)
        levels[precision, device] = cfg.protocol.cold_level
    assert levels == {("fp32", "cpu"): "llc", ("int8", "cpu"): "l2", ("int8", "gpu"): "llc"}
    # an explicit level is kept as given
    explicit = TableBuilder._resolve_cold_level(BuildConfig(cold_level="l2"), model, backend)
    assert explicit.protocol.cold_level == "l2"
