"""``validate`` (halp_trt.validate): table predictions for ONNX graphs (each Conv/Gemm matched to
its signature by attributes and input size) and the measured/predicted figures of two models,
with the shipped resnet18 Zen 4 profile and a backend whose clock is the graph's size."""
import json
import os

import onnx
import pytest
import torch
import torch.nn as nn

from halp_trt.errors import HalpError
from halp_trt.latency.table import LatencyTable
from halp_trt.runtime.base import Backend
from halp_trt.runtime.export import export_onnx
from halp_trt.validate import format_validation, predict_onnx_ms, validate_onnx

TABLE = os.path.join(os.path.dirname(__file__), "..", "profiles",
                     "resnet18_1x3x64x64_ort-cpu_zen4-avx512.json")
STEM = "conv_k7x7_s2x2_p3x3_d1x1_g1_hw64x64"  # resnet18's stem at 64x64


def _onnx(width, kernel=7):
    """A resnet18-like stem and classifier at 64x64, exported."""
    net = nn.Sequential(nn.Conv2d(3, width, kernel, 2, kernel // 2, bias=False), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))
    return onnx.load_from_string(export_onnx(net, torch.randn(1, 3, 64, 64)))


@pytest.fixture(scope="module")
def table():
    return LatencyTable.load(TABLE)


def test_each_conv_and_gemm_is_looked_up_at_its_signature_and_widths(table):
    """The ONNX side must find the entries the PyTorch side prunes with: the stem's signature
    at its channel counts and the classifier (a Gemm) at its input and output widths."""
    for width in (64, 24):
        got = predict_onnx_ms(table, _onnx(width))
        want = (table.signatures[STEM].lookup(3, width)
                + table.signatures["linear_x1"].lookup(width, 10))
        assert got["layers"] == 2 and got["layers_sum_ms"] == pytest.approx(want)


def test_graphs_the_table_cannot_predict_are_refused(table):
    """A layer without an entry (a 5x5 stem) is named with its signature rather than predicted
    as zero; a graph with nothing to look up is an error, not a 0 ms prediction."""
    with pytest.raises(HalpError, match=r"no entry for 1 layer\(s\).*conv_k5x5_s2x2_p2x2_d1x1_g1"
                                        r"_hw64x64.*build a table for this model"):
        predict_onnx_ms(table, _onnx(64, kernel=5))
    relu = onnx.load_from_string(export_onnx(nn.ReLU(), torch.randn(1, 3, 8, 8)))
    with pytest.raises(HalpError, match="no Conv or Gemm layers"):
        predict_onnx_ms(table, relu)


class SizeClock(Backend):
    """The Zen 4 profile's runtime, as far as its identity goes; a graph "takes" 1 ms per MB."""

    name = "onnxruntime"

    def _identity_impl(self):
        with open(TABLE) as f:
            ident = json.load(f)["identity"]
        return {k: v for k, v in ident.items()
                if k not in ("batch", "input_shape", "model", "protocol", "lattice", "created",
                             "halp_trt_version")}

    def _prepare_impl(self, onnx_bytes, label):
        return {"ms": len(onnx_bytes) / 1e6}

    def _time_runs_impl(self, handle, n_runs):
        return [handle["ms"]] * n_runs

    def _infer_impl(self, handle, inputs):
        raise NotImplementedError


def test_validate_measures_both_and_predicts_with_the_tables_own_calibration(tmp_path,
                                                                             table,
                                                                             monkeypatch):
    """The table's whole-model measurement calibrates the rest of the model: the original is
    predicted at exactly that, the pruned one lower by the difference of their layer sums."""
    paths = {}
    for name, width in (("original", 64), ("pruned", 24)):
        paths[name] = str(tmp_path / f"{name}.onnx")
        onnx.save(_onnx(width), paths[name])
    monkeypatch.setattr("halp_trt.runtime.backend_for", lambda gpu, precision, **kw: SizeClock())
    res = validate_onnx(paths["original"], paths["pruned"], TABLE, rounds=3)
    size = {k: os.path.getsize(p) / 1e6 for k, p in paths.items()}
    assert res["original"]["measured_ms"] == pytest.approx(size["original"])
    assert res["speedup_measured"] == pytest.approx(size["original"] / size["pruned"])
    layers = {k: predict_onnx_ms(table, onnx.load(p))["layers_sum_ms"] for k, p in paths.items()}
    assert res["original"]["predicted_ms"] == pytest.approx(table.model_measured_ms)
    assert res["pruned"]["predicted_ms"] == pytest.approx(
        table.model_measured_ms - (layers["original"] - layers["pruned"]))
    assert res["speedup_predicted"] == pytest.approx(
        res["original"]["predicted_ms"] / res["pruned"]["predicted_ms"])
    text = format_validation(res)
    assert f"{res['speedup_predicted']:.2f}x predicted" in text and "warning" not in text


def test_a_file_that_is_not_onnx_is_refused_before_measuring(tmp_path, monkeypatch):
    """A wrong path (a table, a checkpoint) must fail with the file named, not in the runtime."""
    bad = tmp_path / "model.onnx"
    bad.write_text("{}")
    monkeypatch.setattr("halp_trt.runtime.backend_for",
                        lambda *a, **kw: pytest.fail("measured an invalid model"))
    with pytest.raises(HalpError, match=f"{bad} is not a valid ONNX model"):
        validate_onnx(str(bad), str(bad))


class _TwoHeads(nn.Module):
    """A detector-like graph: one trunk, class and box outputs."""

    def __init__(self, width, classes=4):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.ReLU())
        self.cls, self.box = nn.Conv2d(width, classes, 1), nn.Conv2d(width, 4, 1)

    def forward(self, x):
        t = self.trunk(x)
        return self.cls(t), self.box(t)


def test_multi_output_graphs_are_measured_and_must_keep_every_output(tmp_path, monkeypatch):
    monkeypatch.setattr("halp_trt.runtime.backend_for", lambda gpu, precision, **kw: SizeClock())
    x = torch.randn(1, 3, 64, 64)
    paths = {}
    for name, net in (("original", _TwoHeads(64)), ("pruned", _TwoHeads(24)),
                      ("other_classes", _TwoHeads(24, classes=3))):
        paths[name] = tmp_path / f"{name}.onnx"
        paths[name].write_bytes(export_onnx(net.eval(), x))
    res = validate_onnx(str(paths["original"]), str(paths["pruned"]), rounds=3)
    assert res["output_shapes"] == [[1, 4, 32, 32], [1, 4, 32, 32]]
    assert res["speedup_measured"] > 1
    with pytest.raises(HalpError, match="must keep every output's shape"):
        validate_onnx(str(paths["original"]), str(paths["other_classes"]), rounds=3)
