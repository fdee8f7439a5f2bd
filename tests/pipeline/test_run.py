"""prune-and-deploy end to end at toy scale (tiny residual CNN, 16x16 digits, a few batches),
with real training, real ONNX Runtime sessions and real measurements."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from halp_trt.cli import main
from halp_trt.errors import HalpError
from halp_trt.pipeline import prune_and_deploy
from halp_trt.pruning.result import PruningResult, apply_result
from tiny_models import MODEL, tiny_resnet, toy_config
from fakes import free_port




def test_pipeline_writes_a_consistent_report(tmp_path, tiny_table):
    report = prune_and_deploy(toy_config(tmp_path, tiny_table))
    # the table was measured on this machine: the probe agrees
    probe = report["table"]["probe"]
    assert probe["fits"], probe
    assert probe["scale_ratio"] is None or 0.5 < probe["scale_ratio"] < 2, probe
    assert "given with --table" in report["table"]["why"]
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["speedup_measured"] == pytest.approx(report["speedup_measured"])
    for key in ("target_ratio", "speedup_measured", "max_abs_diff", "backend", "table"):
        assert key in on_disk
    for side in ("original", "pruned"):
        assert on_disk[side]["measured_ms"] > 0 and on_disk[side]["predicted_ms"] > 0
    assert 0 <= on_disk["accuracy"]["original"] <= 1 and 0 <= on_disk["accuracy"]["pruned"] <= 1
    assert on_disk["backend"]["verified"].startswith("measured on this machine")
    assert on_disk["table"]["identity"]["model"] == MODEL
    # the ratio comes with its spread over pairs of sessions, and the verdict says which
    lo, hi = on_disk["latency_ratio_spread"]
    assert lo <= on_disk["latency_ratio_measured"] <= hi
    n_sessions = len(on_disk["pruned"]["session_ms"])
    assert n_sessions == len(on_disk["original"]["session_ms"]) >= 3
    assert on_disk["target_verdict"] in ("met", "within the session spread", "missed")
    md = (tmp_path / "report.md").read_text()
    assert f"{lo:.3f}–{hi:.3f} over pairs of sessions" in md
    assert f"**{on_disk['target_verdict']}**" in md
    for name in ("report.md", "model.onnx", "original.onnx", "pruning.json", "pruned_weights.pt",
                 "widths.png",
                 "layer_latency.png"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "checkpoint.pt").exists()
    # the pruned architecture is rebuilt from the original definition + JSON + weights-only
    result = PruningResult.load(str(tmp_path / "pruning.json"))
    assert any(len(v) < result.original_widths[k] for k, v in result.kept.items())
    x = torch.randn(1, 3, 16, 16)
    rebuilt = apply_result(tiny_resnet(), x, result)
    rebuilt.load_state_dict(torch.load(tmp_path / "pruned_weights.pt", weights_only=True))
    rebuilt.eval()
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, rebuilt(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert on_disk["max_abs_diff"] < 1e-3
    # validate re-measures the written models, with the table's prediction for each
    res = CliRunner().invoke(main, ["validate", str(tmp_path / "original.onnx"),
                                    str(tmp_path / "model.onnx"), "--table", tiny_table,
                                    "--rounds", "5", "--json", str(tmp_path / "v.json")])
    assert res.exit_code == 0, res.output
    v = json.loads((tmp_path / "v.json").read_text())
    assert v["speedup_measured"] > 0 and v["pruned"]["predicted_ms"] > 0
    assert v["pruned"]["predicted_ms"] < v["original"]["predicted_ms"]
    lo, hi = v["latency_ratio_spread"]
    assert lo <= v["latency_ratio_measured"] <= hi and "over pairs of sessions" in res.output
    res = CliRunner().invoke(main, ["validate", str(tmp_path / "nope.onnx"),
                                    str(tmp_path / "model.onnx")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_stages_read_only_what_earlier_stages_leave():
    from halp_trt.pipeline.run import STAGES

    left: set[str] = set()
    for stage in STAGES:
        assert set(stage.reads) <= left, (stage.name, set(stage.reads) - left)
        assert not set(stage.leaves) & left, stage.name  # one stage owns each result
        left |= set(stage.leaves)
    # the stages after fine-tuning run on rank 0 only; none before them does
    ranks = [s.every_rank for s in STAGES]
    assert ranks == sorted(ranks, reverse=True)


def test_run_until_a_stage_stops_there_and_a_second_call_goes_on(tmp_path, tiny_table):
    from halp_trt.pipeline.run import DeployRun

    run = DeployRun(toy_config(tmp_path, tiny_table))
    with pytest.raises(HalpError, match="no stage 'pruning'.*load, original"):
        run.run(until="pruning")
    assert run.run(until="prune") == {}
    assert run.prune_batches > 0 and run.feedback_points
    assert not hasattr(run, "acc_pruned") and not (tmp_path / "report.json").exists()
    assert set(run.stage_s) == {"load", "original", "table", "calibrate", "prune"}
    report = run.run()
    assert (tmp_path / "report.json").is_file() and report["speedup_measured"] > 0
    assert list(run.stage_s) == ["load", "original", "table", "calibrate", "prune", "finetune",
                                 "deploy", "verify", "report"]


def test_pruning_options_reach_the_pruner(tmp_path, tiny_table):
    from halp_trt.pipeline.run import DeployRun

    run = DeployRun(toy_config(tmp_path, tiny_table, min_groups_kept=2,
                               importance_normalizer="mean"))
    run.run(until="calibrate")
    assert run.halp_config.min_groups_kept == 2
    assert run.halp_config.importance_normalizer == "mean"


def test_distillation_from_the_original_is_the_loss_of_pruning_and_fine_tuning(
        tmp_path, tiny_table, monkeypatch):
    """--distill: every pruning and fine-tuning batch is scored against the unpruned original's
    softened logits (the original itself, never trained), and the run deploys as usual."""
    import halp_trt.train as train
    from halp_trt.pipeline.run import DeployRun

    teachers = []
    real = train.distillation_loss_fn

    def spy(teacher, weight, temperature=4.0):
        teachers.append((teacher, weight, temperature))
        return real(teacher, weight, temperature)

    monkeypatch.setattr(train, "distillation_loss_fn", spy)
    run = DeployRun(toy_config(tmp_path, tiny_table, distill=0.7, distill_temperature=2.0))
    report = run.run()
    assert teachers and all(t is run.original_model and (w, temp) == (0.7, 2.0)
                            for t, w, temp in teachers)
    assert len(teachers) == 2  # the pruning epoch(s) and the fine-tuning
    original = {k: v.clone() for k, v in run.original_model.state_dict().items()}
    assert all(torch.equal(original[k], v) for k, v in run.state.original.items())
    assert report["speedup_measured"] > 0 and report["config"]["distill"] == 0.7


def test_pretraining_defaults_come_from_the_task(tmp_path, tiny_table):
    """Detectors need longer pre-training from scratch than classifiers: without
    --pretrain-epochs / --pretrain-lr the run takes its task's."""
    from halp_trt.pipeline.run import DeployRun
    from halp_trt.tasks import TASKS

    run = DeployRun(toy_config(tmp_path, tiny_table, pretrain_epochs=None))
    run.run(until="load")
    assert run.data_spec == "digits"  # the classification task's default data
    classification = TASKS["classification"]
    assert (run.pretrain_epochs, run.pretrain_lr) == (classification.pretrain_epochs,
                                                      classification.pretrain_lr)
    assert TASKS["detection"].pretrain_epochs > classification.pretrain_epochs
    run = DeployRun(toy_config(tmp_path / "given", tiny_table, pretrain_epochs=2,
                               pretrain_lr=1e-3))
    run.run(until="load")
    assert (run.pretrain_epochs, run.pretrain_lr) == (2, 1e-3)


def test_interrupted_pruning_resumes_from_checkpoint(tmp_path, tiny_table, monkeypatch):
    from halp_trt.pruning import feedback

    real_step = feedback.LatencyFeedback.step
    calls = {"n": 0}

    def interrupt_after_first_prune(self):
        rec = real_step(self)
        if rec is not None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise KeyboardInterrupt
        return rec

    monkeypatch.setattr(feedback.LatencyFeedback, "step", interrupt_after_first_prune)
    cfg = toy_config(tmp_path, tiny_table, steps=3)
    with pytest.raises(KeyboardInterrupt):
        prune_and_deploy(cfg)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["phase"] == "pruning" and len(state["pruner"]["history"]) == 1
    monkeypatch.setattr(feedback.LatencyFeedback, "step", real_step)
    report = prune_and_deploy(cfg)
    steps = [h["step"] for h in report["pruning_history"]]
    assert steps[:3] == [1, 2, 3], "the resumed run continues at step 2, not from scratch"
    assert not (tmp_path / "checkpoint.pt").exists()


def _run_cli(args):
    res = CliRunner().invoke(main, ["prune-and-deploy"] + args)
    return res.exit_code, res.output


@pytest.mark.parametrize("args,fragment", [
    (["--model", "no_such_net"], "unknown model"),
    (["--model", "no_such_module:factory"], "cannot import module"),
    (["--data", "imagefolder:/nonexistent/dir"], "does not exist"),
    (["--data", "mnist"], "unknown --data"),
    (["--target", "1.5"], "between 0 and 1"),
    (["--target", "0"], "between 0 and 1"),
    (["--target", "fast"], "neither a fraction"),
    (["--target", "-3ms"], "neither a fraction"),
    (["--input-size", "4"], "--input-size"),
    (["--input-size", "100000"], "between 8 and 4096"),
    (["--batch-size", "100000"], "at most 1024"),
    (["--distill", "1.0"], "--distill is the distillation loss's weight, in [0, 1)"),
    (["--distill", "0.5", "--task", "detection"], "not available for detection"),
])
def test_bad_options_give_one_clear_error(tmp_path, args, fragment):
    code, out = _run_cli(["--out", str(tmp_path / "o")] + args)
    assert code == 2, out
    assert fragment in out and "Traceback" not in out


def test_unreadable_weights_and_pickled_code_are_refused(tmp_path, tiny_table):
    # the weights are refused whatever the table's probe reads (it once refused this coarse
    # 3-round table of sub-millisecond layers on its own machine before the wrong weights
    # were reached)
    table_args = ["--table", tiny_table, "--allow-table-mismatch"]
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    code, out = _run_cli(["--out", str(tmp_path / "a"), "--model", MODEL, "--input-size", "16",
                          *table_args, "--weights", str(garbage)])
    assert code == 2 and "weights" in out and "Traceback" not in out

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    code, out = _run_cli(["--out", str(tmp_path / "b"), "--model", MODEL, "--input-size", "16",
                          *table_args, "--weights", str(evil)])
    assert code == 2 and "weights-only" in out
    assert not (tmp_path / "pwned").exists()

    wrong = tmp_path / "wrong.pt"
    torch.save(tiny_resnet(num_classes=3).state_dict(), wrong)
    code, out = _run_cli(["--out", str(tmp_path / "c"), "--model", MODEL, "--input-size", "16",
                          *table_args, "--weights", str(wrong)])
    assert code == 2 and "do not fit the model" in out


def test_infeasible_target_names_the_minimum(tmp_path, tiny_table):
    with pytest.raises(HalpError, match="infeasible"):
        prune_and_deploy(toy_config(tmp_path, tiny_table, target="0.001ms"))


def test_ddp_two_gloo_processes(tmp_path, tiny_table):
    """torchrun with 2 CPU processes: identical decisions on both ranks (checked inside the
    pipeline), only rank 0 writes."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(free_port()), "-m", "halp_trt.cli", "prune-and-deploy", "--out", str(out),
           "--model", MODEL, "--input-size", "16", "--table", tiny_table, "--target", "0.85",
           "--steps", "2", "--interval", "2", "--epochs", "1", "--pretrain-epochs", "1",
           "--rounds", "3", "--max-batches", "3", "--train-batch-size", "32", "--allow-untrained"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["speedup_measured"] > 0
    assert res.stdout.count("speedup") == 1, "only rank 0 reports"


def test_resumed_run_makes_the_same_decisions_as_an_uninterrupted_one(tmp_path, tiny_table,
                                                                      monkeypatch):
    """Killed right after the first pruning epoch's checkpoint, then resumed: same widths, same
    kept channels, same measured points as a run that was never interrupted (timing is made
    deterministic; everything else is the real pipeline)."""
    import halp_trt.runtime
    from fakes import SizeTimedBackend
    from halp_trt.pipeline.run import DeployRun

    monkeypatch.setattr(halp_trt.runtime, "backend_for",
                        lambda gpu, precision="fp32", **kw: SizeTimedBackend())
    # the fake clock is not the machine the table was measured on: no probe
    kw = dict(steps=3, interval=2, max_batches=3, pretrain_epochs=1, epochs=0, seed=3,
              probe_table=False)
    straight = prune_and_deploy(toy_config(tmp_path / "straight", tiny_table, **kw))

    real_checkpoint = DeployRun.checkpoint
    killed = {"n": 0}

    def checkpoint_then_die(self, **fields):
        real_checkpoint(self, **fields)
        if fields.get("phase") == "pruning" and fields.get("prune_epochs_done") == 1 \
                and not killed["n"]:
            killed["n"] += 1
            raise SystemExit("killed")  # like kill -9 right after the save: no handler runs

    monkeypatch.setattr(DeployRun, "checkpoint", checkpoint_then_die)
    with pytest.raises(SystemExit):
        prune_and_deploy(toy_config(tmp_path / "resumed", tiny_table, **kw))
    assert killed["n"] == 1
    state = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert state["phase"] == "pruning" and 0 < len(state["pruner"]["history"]) < 3
    monkeypatch.setattr(DeployRun, "checkpoint", real_checkpoint)
    resumed = prune_and_deploy(toy_config(tmp_path / "resumed", tiny_table, **kw))

    a = PruningResult.load(str(tmp_path / "straight" / "pruning.json"))
    b = PruningResult.load(str(tmp_path / "resumed" / "pruning.json"))
    assert a.kept == b.kept
    assert [h["kept"] for h in straight["pruning_history"]] == \
        [h["kept"] for h in resumed["pruning_history"]]
    assert straight["feedback"] == resumed["feedback"]
    assert straight["accuracy"]["pruned"] == resumed["accuracy"]["pruned"]
    wa = torch.load(tmp_path / "straight" / "pruned_weights.pt", weights_only=True)
    wb = torch.load(tmp_path / "resumed" / "pruned_weights.pt", weights_only=True)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)


def test_int8_run_deploys_a_quantized_model_checked_against_pytorch(tmp_path):
    """Table, timing and deployment in INT8 (QDQ): the deployed ONNX is quantized with task
    data, checked against PyTorch by top-1 agreement and logit error, and its accuracy is
    reported next to the float one."""
    import onnx

    from halp_trt.latency.build import BuildConfig, build_table
    from halp_trt.runtime import get_backend
    from halp_trt.runtime.protocol import Protocol

    table = tmp_path / "int8.json"
    build_table(tiny_resnet(), (1, 3, 16, 16), get_backend("onnxruntime", precision="int8"),
                str(table), MODEL, BuildConfig(protocol=Protocol(rounds=3), sweep_window=16,
                                               max_points_per_axis=4, progress=False))
    assert json.loads(table.read_text())["identity"]["quantization"]["format"] == "QDQ"
    # a trained start (not allow_untrained): the INT8 check then applies its full thresholds
    # trained long enough that its logit margins outlast INT8 rounding at any widths the
    # measured loop picks (3 epochs once left the pruned model at 0.891 agreement)
    report = prune_and_deploy(toy_config(tmp_path / "run", str(table), precision="int8",
                                         pretrain_epochs=5, max_batches=25,
                                         allow_untrained=False))
    assert report["backend"]["precision"] == "int8"
    q = report["int8"]
    assert q["check"]["passed"] and q["check"]["n_inputs"] >= 100
    assert q["check"]["top1_agreement"] >= 0.9
    assert 0 <= q["accuracy"]["pruned"] <= 1 and q["calibration_batches"] > 0
    deployed = onnx.load(str(tmp_path / "run" / "model.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in deployed.graph.node)
    assert "INT8 (QDQ" in (tmp_path / "run" / "report.md").read_text()


def test_a_cosine_rate_spans_pruning_and_fine_tuning_and_resumes_where_it_was(tmp_path):
    from halp_trt.pipeline.run import DeployRun

    run = DeployRun(toy_config(tmp_path, "unused.json", steps=4, interval=5, epochs=2,
                               max_batches=None, lr=0.1, lr_schedule="cosine"))
    run.train_loader = [None] * 10  # 10 batches an epoch: pruning needs 2, then 2 fine-tuning
    assert run._lr_scheduler(torch.optim.SGD([torch.zeros(1)], lr=0.1), 0) is not None

    def rates(batches_done, n):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        sched, out = run._lr_scheduler(opt, batches_done), []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    whole = rates(0, 40)
    assert whole[0] == pytest.approx(0.1) and whole[20] == pytest.approx(0.05)
    assert whole[-1] == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi * 39 / 40)))
    assert all(a > b for a, b in zip(whole, whole[1:]))
    assert rates(20, 20) == pytest.approx(whole[20:])  # the fine-tuning optimizer goes on
    run.cfg.lr_schedule = "constant"
    assert run._lr_scheduler(torch.optim.SGD([torch.zeros(1)], lr=0.1), 0) is None
