"""Errors users can cause, through the CLI: everything a user can get wrong gives one clear error (what is
wrong, what to do), no traceback, exit code 2; interruptions never lose finished work; noisy
timings are flagged. Cases already tested elsewhere are not repeated here: missing/empty/
not-JSON/version/negative tables and identity checks (latency/test_table), bad targets, unknown
model or module, missing data folder, unreadable and pickled weights (pipeline/test_run), kill -9
during build-table (latency/test_build), an interrupted checkpoint write (pipeline/test_state),
missing backends (test_imports), shufflenet in the pruner (pruning/test_pruner), TensorRT build
failures (runtime/tensorrt/test_backend_contract)."""
import json
import os
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import halp_trt.runtime.deploy  # noqa: F401  (bind their imports before any test patches them)
import halp_trt.pruning.feedback  # noqa: F401
from halp_trt.runtime.onnxruntime import OnnxRuntimeBackend
from halp_trt.latency.build import BuildConfig, build_table
from halp_trt.cli import main
from halp_trt.errors import HalpError
from halp_trt.runtime.export import export_onnx
from halp_trt.runtime.protocol import Protocol
from halp_trt.latency.table import LatencyTable
from fakes import ReachedHeavyWork
from tiny_models import UnexportableNet, tiny_resnet

MODEL = "tiny_models:tiny_resnet"
HERE = "tiny_models"  # the module:factory models below live there
FAST = BuildConfig(protocol=Protocol(rounds=3), sweep_window=16, max_points_per_axis=5,
                   progress=False)


class NoisyBackend(OnnxRuntimeBackend):
    """Real ONNX Runtime timings, two of every three calls per graph slowed 3x: the kind of
    burst a busy machine produces (median far above the minimum)."""

    def _prepare_impl(self, onnx_bytes, label=""):
        handle = super()._prepare_impl(onnx_bytes, label)
        handle["calls"] = 0
        return handle

    def _time_runs_impl(self, handle, n_runs):
        handle["calls"] += 1
        slow = 3.0 if handle["calls"] % 3 else 1.0
        return [t * slow for t in super()._time_runs_impl(handle, n_runs)]


# ---- helpers ----------------------------------------------------------------------------------



@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    x = torch.randn(1, 3, 16, 16)
    for name, net in (("original", tiny_resnet()), ("pruned", tiny_resnet())):
        (d / f"{name}.onnx").write_bytes(export_onnx(net, x))
    return str(d / "original.onnx"), str(d / "pruned.onnx")



def invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clear_error(res, *fragments):
    """One `error:` line, exit code 2, no traceback, and every fragment in the message."""
    out = res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), \
        f"{res.exception!r}\n{out}"
    assert res.exit_code == 2, out
    assert "Traceback" not in out
    assert sum(ln.startswith("error: ") for ln in out.splitlines()) == 1, out
    for f in fragments:
        assert f in out, f"{f!r} not in:\n{out}"


def pd_args(out, table, *extra):
    return ["prune-and-deploy", "--out", out, "--model", MODEL, "--input-size", "16", "--table",
            table, "--pretrain-epochs", "0", "--rounds", "3", "--max-batches", "1",
            "--allow-untrained", *extra]


def write_images(root, classes, n=2, modes=("RGB",), sizes=((20, 12),)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for part in ("train", "val"):
        for c in classes:
            os.makedirs(root / part / c, exist_ok=True)
            for i in range(n):
                mode, (w, h) = modes[i % len(modes)], sizes[i % len(sizes)]
                img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")
                img.convert(mode).save(root / part / c / f"{i}.png")
    return root


# ---- table files ------------------------------------------------------------------------------

def _table_variant(src, dst, kind):
    text = open(src).read()
    d = json.loads(text)
    entries = next(iter(d["signatures"].values()))["entries"]
    if kind == "missing":
        return
    if kind == "empty":
        dst.write_text("")
    elif kind == "truncated":
        dst.write_text(text[: len(text) // 2])
    elif kind == "binary":
        dst.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    elif kind == "html":
        dst.write_text("<html>not a table</html>")
    else:
        if kind == "version":
            d["version"] = 2
        elif kind == "negative":
            entries[0][3] = -0.01
        elif kind == "nan":
            entries[0][4] = float("nan")  # written as a bare NaN, which json accepts
        elif kind == "inf":
            entries[0][5] = float("inf")
        elif kind == "negative-runs":  # 0 runs: a transfer's prediction, valid
            entries[0][2] = -1
        elif kind == "model-negative":
            d["model"]["min_ms"] = -1.0
        elif kind == "huge":
            entries[0][3] = 10 ** 400  # an integer JSON literal beyond any float
        dst.write_text(json.dumps(d))


TABLE_CASES = [
    ("missing", "does not exist"), ("empty", "is empty"), ("truncated", "may be truncated"),
    ("binary", "cannot read latency table"), ("html", "not valid JSON"),
    ("version", "version 2 is not supported"), ("negative", "invalid statistics"),
    ("nan", "invalid statistics"), ("inf", "invalid statistics"),
    ("negative-runs", "invalid statistics"), ("model-negative", "whole-model statistics"),
    ("huge", "malformed"),
]


@pytest.mark.parametrize("kind,fragment", TABLE_CASES)
def test_bad_table_files_fail_clearly_in_every_command(tmp_path, tiny_table, onnx_pair, kind,
                                                        fragment, no_heavy_work):
    path = tmp_path / "t.json"
    _table_variant(tiny_table, path, kind)
    for args in (["inspect", path],
                 ["validate", *onnx_pair, "--table", path],
                 pd_args(tmp_path / "out", path)):
        res = invoke(args)
        assert_clear_error(res, f"latency table {path}", fragment)


def test_table_from_another_setup_is_refused_unless_overridden(tmp_path, tiny_table,
                                                               no_heavy_work):
    for key, value in [("device", "cuda:0"), ("runtime", "tensorrt"), ("precision", "fp16"),
                       ("batch", 8)]:
        d = json.loads(open(tiny_table).read())
        d["identity"][key] = value
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps(d))
        res = invoke(pd_args(tmp_path / key, path))
        assert_clear_error(res, "measured on a different setup", f"{key}: table has {value!r}",
                           "--allow-table-mismatch")
    # the override: the run goes on to measure (batch 8 here, since it is the last table)
    res = invoke(pd_args(tmp_path / "override", path, "--allow-table-mismatch"))
    assert isinstance(res.exception, ReachedHeavyWork), res.output


def test_layers_the_table_lacks_are_named_with_the_command_that_measures_them(
        tmp_path, tiny_table, no_heavy_work):
    # other input size: the signatures (feature-map sizes) are not in the table
    res = invoke(pd_args(tmp_path / "a", tiny_table, "--input-size", "24"))
    assert_clear_error(res, "layer stem (conv_k3x3_s1x1_p1x1_d1x1_g1_hw24x24) is not in it",
                       f"halp-trt build-table {MODEL} --input-shape 1,3,24,24 --out")
    # wider layers than the table measured
    res = invoke(pd_args(tmp_path / "b", tiny_table, "--model", f"{HERE}:wide_resnet"))
    assert_clear_error(res, "3->24 channels, the table covers up to 16->16",
                       f"halp-trt build-table {HERE}:wide_resnet --input-shape 1,3,16,16")


# ---- targets ----------------------------------------------------------------------------------

@pytest.mark.parametrize("target,fragment", [
    ("-0.5", "between 0 and 1"), ("0ms", "must be a positive number"),
    ("1", "between 0 and 1"), ("100%", "between 0 and 1"), ("nan", "between 0 and 1"),
    ("inf", "between 0 and 1"), ("1e400ms", "must be a positive number"),
    ("12 mss", "neither a fraction"), ("ms", "neither a fraction"), ("", "neither a fraction"),
])
def test_bad_targets_fail_before_any_work(tmp_path, target, fragment, no_heavy_work):
    res = invoke(["prune-and-deploy", "--out", tmp_path / "o", "--target", target])
    assert_clear_error(res, "--target", fragment)
    assert not (tmp_path / "o").exists(), "nothing is created for a bad option"


def test_target_below_the_tables_minimum_names_the_minimum(tmp_path, tiny_table):
    res = invoke(pd_args(tmp_path / "a", tiny_table, "--target", "0.05"))
    assert_clear_error(res, "--target 0.05", "infeasible", "smallest model")
    floor = float(re.search(r"Use --target ([0-9.]+) or more", res.output).group(1))
    assert 0.05 < floor < 1
    res = invoke(pd_args(tmp_path / "b", tiny_table, "--target", "1000ms"))
    assert_clear_error(res, "not below the original's measured", "nothing to prune")


# ---- models -----------------------------------------------------------------------------------

@pytest.mark.parametrize("model,fragment", [
    ("rel_broken_module:net", "cannot import module 'rel_broken_module'"),
    (f"{HERE}:no_such_factory", "has no callable 'no_such_factory'"),
    (f"{HERE}:failing_factory", "out of memory while building"),
    (f"{HERE}:not_a_module", "is not a torch.nn.Module"),
])
def test_bad_model_factories(tmp_path, monkeypatch, model, fragment):
    (tmp_path / "rel_broken_module.py").write_text("raise ImportError('needs package foo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    res = invoke(["build-table", model, "--input-shape", "1,3,16,16", "--out", tmp_path / "t.json"])
    assert_clear_error(res, fragment)
    assert not (tmp_path / "t.json").exists()


def test_architecture_the_dependency_graph_cannot_handle(tmp_path, monkeypatch):
    from halp_trt.graph import groups

    class Untraceable:
        def __init__(self, concat_sizes=None):
            pass

        def build_dependency(self, *args, **kwargs):
            raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(groups, "_torch2_dependency_graph", Untraceable)
    res = invoke(["build-table", "tiny_models:tiny_resnet", "--input-shape", "1,3,16,16",
                  "--out", tmp_path / "t.json"])
    assert_clear_error(res, "could not trace", "use another model")


def test_model_that_cannot_run_on_the_input_shape(tmp_path, tiny_table, no_heavy_work):
    res = invoke(["build-table", f"{HERE}:gray_net", "--input-shape", "1,3,16,16", "--out",
                  tmp_path / "t.json"])
    assert_clear_error(res, "cannot run on an input of shape (1, 3, 16, 16)", "1 channels",
                       "--input-shape")
    res = invoke(pd_args(tmp_path / "o", tiny_table, "--model", f"{HERE}:gray_net"))
    assert_clear_error(res, "cannot run on an input of shape (1, 3, 16, 16)", "--input-size")


def test_pickled_module_instead_of_state_dict_is_refused(tmp_path, tiny_table, no_heavy_work):
    path = tmp_path / "whole_model.pt"
    torch.save(tiny_resnet(), path)  # a pickled nn.Module: loading it would run code
    res = invoke(pd_args(tmp_path / "o", tiny_table, "--weights", path))
    assert_clear_error(res, "only weights-only state dicts are accepted")


# ---- data -------------------------------------------------------------------------------------

def test_data_folder_problems(tmp_path, tiny_table, no_heavy_work):
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    no_images = tmp_path / "no_images"
    for part in ("train", "val"):
        (no_images / part / "cat").mkdir(parents=True)
        (no_images / part / "cat" / "notes.txt").write_text("not an image")
    corrupt = write_images(tmp_path / "corrupt", ["a", "b"])
    (corrupt / "train" / "a" / "0.png").write_bytes(b"truncated download")
    classes = write_images(tmp_path / "classes", ["a", "b"])
    write_images(tmp_path / "classes_val", ["c"])
    os.rename(tmp_path / "classes_val" / "val" / "c", classes / "val" / "c")
    three = write_images(tmp_path / "three", ["a", "b", "c"])
    for data, model, fragments in [
        (empty, MODEL, ["holds no images", "class folder"]),
        (no_images, MODEL, ["holds no images", "Supported extensions"]),
        (corrupt, MODEL, ["cannot read image", "0.png", "remove or replace the file"]),
        (classes, MODEL, ["train/ and val/ have different class folders"]),
        (three, f"{HERE}:ten_class_net", ["the model has 10 outputs", "has 3 classes"]),
    ]:
        res = invoke(pd_args(tmp_path / "out", tiny_table, "--model", model, "--data",
                             f"imagefolder:{data}"))
        assert_clear_error(res, *fragments)


def test_images_of_any_size_and_channels_are_converted(tmp_path):
    from halp_trt.data import check_sample, load_data, make_loader

    root = write_images(tmp_path / "mixed", ["a", "b"], n=4, modes=("RGB", "L", "RGBA", "P"),
                        sizes=((20, 12), (7, 30), (64, 64)))
    data = load_data(f"imagefolder:{root}", (16, 16))
    check_sample(data, (1, 3, 16, 16))
    x, y = next(iter(make_loader(data.train, 8, False)))
    assert tuple(x.shape) == (8, 3, 16, 16) and data.num_classes == 2


# ---- runtimes ---------------------------------------------------------------------------------

def test_onnx_export_failure_names_the_layer(tmp_path):
    with pytest.raises(HalpError, match=r"in layer act \(Bessel\).*aten::special_bessel_j0"):
        export_onnx(UnexportableNet(), torch.randn(1, 3, 8, 8))
    # build-table exports the whole model last: the error names the layer, the layers'
    # measurements are kept
    out = tmp_path / "t.json"
    res = invoke(["build-table", f"{HERE}:unexportable_net", "--input-shape", "1,3,8,8", "--out",
                  out, "--rounds", "1", "--max-points", "2"])
    assert_clear_error(res, "ONNX export of the model failed in layer act (Bessel)",
                       "special_bessel_j0")
    partial = LatencyTable.load(str(out), require_complete=False)
    assert not partial.complete and all(not s.missing() for s in partial.signatures.values())


def test_session_build_failure_shows_the_runtimes_message(tmp_path, onnx_pair):
    import onnx
    from onnx import TensorProto, helper

    with pytest.raises(HalpError, match="layer3.conv1.*INVALID_PROTOBUF"):
        OnnxRuntimeBackend().prepare(b"not an onnx graph", label="layer3.conv1")
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])
    # the pruned model's output shape (1, 10): validate compares shapes before it measures
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])
    graph = helper.make_graph([helper.make_node("FancyOp", ["input"], ["output"],
                                                domain="com.example")], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "custom.onnx"))
    res = invoke(["validate", tmp_path / "custom.onnx", onnx_pair[1], "--rounds", "3"])
    assert_clear_error(res, "ONNX Runtime could not build a session for original",
                       "FancyOp(-1) is not a registered function/op")


def test_unwritable_outputs_fail_before_any_work(tmp_path, tiny_table, onnx_pair,
                                                 no_heavy_work):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    bad = blocker / "sub"  # a folder inside a regular file cannot be created
    for args in (["build-table", MODEL, "--input-shape", "1,3,16,16", "--out", bad / "t.json"],
                 pd_args(bad, tiny_table),
                 ["inspect", tiny_table, "--out", bad],
                 ["validate", *onnx_pair, "--json", bad / "v.json"]):
        assert_clear_error(invoke(args), f"cannot write to {bad}", "writable location")


# ---- interruptions ----------------------------------------------------------------------------

def _entries(path):
    t = LatencyTable.load(str(path), require_complete=False)
    return {(k, ci, co): st for k, s in t.signatures.items() for (ci, co), st in s.entries.items()}


def test_ctrl_c_during_build_table_keeps_every_finished_batch_and_resumes(tmp_path, monkeypatch):
    import halp_trt.latency.build as build

    real = build.measure_interleaved
    batches = []

    def interrupt_second_batch(backend, graphs, *args, **kwargs):
        batches.append(len(graphs))
        if len(batches) == 2:
            raise KeyboardInterrupt
        return real(backend, graphs, *args, **kwargs)

    out = tmp_path / "t.json"
    args = ["build-table", MODEL, "--input-shape", "1,3,16,16", "--out", out, "--rounds", "2",
            "--max-points", "3"]
    monkeypatch.setattr(build, "measure_interleaved", interrupt_second_batch)
    res = invoke(args)
    assert res.exit_code == 130 and "Traceback" not in res.output
    assert "finished work is saved" in res.output and "rerun the same command" in res.output
    partial = _entries(out)  # the file parses: never half-written
    assert len(partial) == batches[0], "the finished first batch was kept"
    assert not LatencyTable.load(str(out), require_complete=False).complete
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]
    monkeypatch.setattr(build, "measure_interleaved", real)
    res = invoke(args)
    assert res.exit_code == 0, res.output
    final = _entries(out)
    assert LatencyTable.load(str(out)).complete and len(final) > len(partial)
    assert all(final[k] == st for k, st in partial.items()), "kept, not re-measured"


def test_ctrl_c_during_fine_tuning_resumes_and_reports_noisy_timing(tmp_path, tiny_table,
                                                                    monkeypatch):
    """Fine-tuning saves a checkpoint after each epoch and has no interrupt handler, so what
    Ctrl-C leaves here is also what kill -9 leaves."""
    from halp_trt import train

    real = train.train_epoch
    log = []

    def interrupt_second_finetune_epoch(model, loader, optimizer, pruner=None, **kw):
        log.append(pruner is not None)
        pruned_before = any(log[:-1])
        if pruner is None and pruned_before and log.count(False) == 2:
            raise KeyboardInterrupt
        return real(model, loader, optimizer, pruner, **kw)

    args = ["prune-and-deploy", "--out", tmp_path, "--model", MODEL, "--input-size", "16",
            "--table", tiny_table, "--target", "0.85", "--steps", "1", "--interval", "2",
            "--epochs", "2", "--pretrain-epochs", "0", "--rounds", "3", "--max-batches", "2",
            "--train-batch-size", "32", "--allow-untrained"]
    monkeypatch.setattr(train, "train_epoch", interrupt_second_finetune_epoch)
    res = invoke(args)
    assert res.exit_code == 130 and "Traceback" not in res.output, res.output
    assert "rerun the same command to resume" in res.output
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["phase"] == "finetune" and state["finetune_epochs_done"] == 1

    resumed = []

    def record(model, loader, optimizer, pruner=None, **kw):
        resumed.append(pruner)
        return real(model, loader, optimizer, pruner, **kw)

    monkeypatch.setattr(train, "train_epoch", record)
    monkeypatch.setattr("halp_trt.runtime.backend_for", lambda gpu, precision, **kw: NoisyBackend())
    res = invoke(args)
    assert res.exit_code == 0, res.output
    assert resumed == [None], "only the remaining fine-tuning epoch ran; no pruning again"
    assert not (tmp_path / "checkpoint.pt").exists()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["noisy_measurement"] is True
    assert "**Warning:** the latency measurements were noisy" in \
        (tmp_path / "report.md").read_text()


def test_unusable_or_foreign_checkpoints_are_refused(tmp_path, tiny_table, no_heavy_work):
    from halp_trt.pipeline.state import RunState

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "checkpoint.pt").write_bytes(b"half-written")
    assert_clear_error(invoke(pd_args(tmp_path / "a", tiny_table)), "cannot resume from",
                       "Delete it to start over")
    (tmp_path / "b").mkdir()
    RunState(phase="original", run={"model": "resnet50", "data": "digits", "input_size": 64,
                                    "batch_size": 1}).save(str(tmp_path / "b" / "checkpoint.pt"))
    assert_clear_error(invoke(pd_args(tmp_path / "b", tiny_table)), "belongs to another run",
                       "choose another --out")


# ---- noisy timing -----------------------------------------------------------------------------

def test_noisy_timing_is_flagged_in_the_table_inspect_and_validate(tmp_path, onnx_pair,
                                                                   monkeypatch):
    out = tmp_path / "noisy.json"
    with pytest.warns(UserWarning, match="high spread"):
        table = build_table(tiny_resnet(), (1, 3, 16, 16), NoisyBackend(), str(out), MODEL, FAST)
    noisy = [st for s in table.signatures.values() for st in s.entries.values() if st.noisy]
    assert noisy and LatencyTable.load(str(out)).extra["noisy_entries"] == len(noisy)
    res = invoke(["inspect", out])
    assert res.exit_code == 0, res.output
    header = next(ln for ln in res.output.splitlines() if ln.startswith("signature"))
    assert header.split()[-1] == "noisy"
    rows = [ln.split() for ln in res.output.splitlines() if ln.startswith(("conv", "dwconv",
                                                                           "linear"))]
    assert sum(int(r[-1]) for r in rows) == len(noisy)
    monkeypatch.setattr("halp_trt.runtime.backend_for", lambda gpu, precision, **kw: NoisyBackend())
    res = invoke(["validate", *onnx_pair, "--rounds", "5"])
    assert res.exit_code == 0, res.output
    assert "warning: noisy measurement" in res.output
