"""Table format, identity, lookup (rounding up to the step, suffix minimum, interpolation)."""
import json
import math

import pytest

from halp_trt.errors import HalpError
from halp_trt.graph.layers import LayerSpec, Signature
from halp_trt.runtime.protocol import Stats
from halp_trt.latency.table import LatencyTable, SignatureTable, StepInfo

SIG = Signature("conv", (3, 3), (1, 1), (1, 1), (1, 1), 1, (14, 14))


def staircase_ms(ci, co, step=8):
    """Cost grows with the number of 8-channel blocks on each axis."""
    return 0.1 + 0.01 * math.ceil(ci / step) * math.ceil(co / step)


def make_sig(grid_in, grid_out, fn=staircase_ms, step=8):
    s = SignatureTable(SIG, c_in_max=max(grid_in), c_out_max=max(grid_out), in_prunable=True,
                       out_prunable=True, layers=["conv"], step_in=StepInfo(step, 0, True),
                       step_out=StepInfo(step, 0, True), grid_in=list(grid_in),
                       grid_out=list(grid_out))
    for ci in grid_in:
        for co in grid_out:
            v = fn(ci, co)
            s.add(ci, co, Stats(15, v, v * 1.01, v * 1.02, 0.01))
    return s


def make_table(sig):
    spec = LayerSpec("conv", SIG, sig.c_in_max, sig.c_out_max, 0, 1)
    t = LatencyTable(identity={"backend": "onnxruntime", "device": "cpu", "precision": "fp32",
                               "batch": 1, "threads": 1, "protocol": {"estimator": "min"}},
                     signatures={sig.key: sig}, layers=[spec.to_json()], complete=True)
    return t, spec


def test_lookup_rounds_up_to_step_end():
    sig = make_sig(range(8, 65, 8), range(8, 65, 8))
    for ci in (1, 7, 8, 9, 33, 64):
        for co in (1, 5, 16, 17, 63):
            assert sig.lookup(ci, co) == pytest.approx(staircase_ms(ci, co))


def test_lookup_uses_suffix_minimum_on_non_monotone_curves():
    # cheaper at exact multiples of 16 than at the step end below them
    def dip(ci, co):
        return 1.0 + 0.01 * co - (0.3 if co % 16 == 0 else 0.0)
    sig = make_sig([32], range(8, 65, 8), dip)
    sig.in_prunable = False
    # c_out=24 is padded up to 32, which is cheaper than 24 itself
    assert sig.lookup(32, 24) == pytest.approx(dip(32, 32))
    assert sig.lookup(32, 8) == pytest.approx(min(dip(32, c) for c in range(8, 65, 8)))


def test_lookup_interpolates_coarse_lattice_and_rejects_out_of_range():
    linear = lambda ci, co: 0.01 * ci + 0.02 * co  # noqa: E731
    sig = make_sig([16, 64], [16, 64], linear, step=1)
    sig.step_in = sig.step_out = StepInfo()
    assert sig.lookup(40, 40) == pytest.approx(linear(40, 40))
    with pytest.raises(ValueError):
        sig.lookup(65, 10)


def test_json_round_trip(tmp_path):
    sig = make_sig(range(8, 33, 8), range(8, 33, 8))
    table, spec = make_table(sig)
    table.model_stats = Stats(20, 3.0, 3.1, 3.2, 0.02)
    path = tmp_path / "t.json"
    table.save(str(path))
    loaded = LatencyTable.load(str(path))
    assert loaded.to_json() == table.to_json()
    for ci in range(1, 33, 3):
        for co in range(1, 33, 5):
            # entries are stored to the nanosecond
            assert loaded.layer_ms(spec, ci, co) == pytest.approx(table.layer_ms(spec, ci, co),
                                                                  abs=1e-6)
    assert loaded.model_measured_ms == 3.0


@pytest.mark.parametrize("content,fragment", [
    ("", "empty"),
    ("{not json", "not valid JSON"),
    (json.dumps({"format": "other"}), "not a halp-trt latency table"),
    (json.dumps({"format": "halp-trt-latency-table", "version": 99}), "version"),
    (json.dumps({"format": "halp-trt-latency-table", "version": 1}), "malformed"),
])
def test_bad_files_give_one_clear_error(tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(HalpError, match=fragment):
        LatencyTable.load(str(path))


def test_negative_or_nan_entries_are_refused(tmp_path):
    table, _ = make_table(make_sig([8, 16], [8, 16]))
    d = table.to_json()
    key = next(iter(d["signatures"]))
    d["signatures"][key]["entries"][0][3] = -1.0
    path = tmp_path / "neg.json"
    path.write_text(json.dumps(d))
    with pytest.raises(HalpError, match="invalid statistics"):
        LatencyTable.load(str(path))
    d["signatures"][key]["entries"][0][3] = "NaN"
    path.write_text(json.dumps(d))
    with pytest.raises(HalpError):
        LatencyTable.load(str(path))


def test_missing_file_and_incomplete_table(tmp_path):
    with pytest.raises(HalpError, match="does not exist"):
        LatencyTable.load(str(tmp_path / "nope.json"))
    table, _ = make_table(make_sig([8], [8]))
    table.complete = False
    table.save(str(tmp_path / "partial.json"))
    with pytest.raises(HalpError, match="incomplete"):
        LatencyTable.load(str(tmp_path / "partial.json"))
    assert LatencyTable.load(str(tmp_path / "partial.json"), require_complete=False)


def test_unknown_layer_names_the_command_that_measures_it():
    table, _ = make_table(make_sig([8], [8]))
    other = LayerSpec("head.conv", Signature("conv", input_hw=(7, 7)), 8, 8, 0, 1)
    with pytest.raises(HalpError, match="head.conv.*build-table"):
        table.layer_ms(other, 8, 8)


def test_identity_mismatch_is_refused_unless_overridden():
    table, _ = make_table(make_sig([8], [8]))
    with pytest.raises(HalpError, match="precision"):
        table.check_compatible({"precision": "fp16", "batch": 1})
    assert table.check_compatible({"precision": "fp16"}, allow_mismatch=True).differs
    assert table.check_compatible({"precision": "fp32", "batch": 1}).matches
