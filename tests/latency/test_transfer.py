"""Table transfer: another machine's table re-anchored here with a fraction of a full build's
measurements. The two "machines" are deterministic staircase clocks (tests/fakes.py) with
different steps and speeds, so every figure below is exact, not timing noise."""
import json

import pytest

from fakes import StaircaseTimedBackend
from halp_trt.errors import HalpError
from halp_trt.latency.build import (BuildConfig, build_table, compare_with_measurements,
                                    random_step_ends)
from halp_trt.latency.table import LatencyTable
from halp_trt.latency.transfer import (TransferConfig, fit_signature, measured_configurations,
                                       transfer_table)
from halp_trt.runtime.protocol import Protocol
from tiny_models import TinyResNet

SHAPE = (1, 3, 8, 8)
PROTO = Protocol(rounds=2, min_sample_ms=0.0)


def _build(path, backend, width=64):
    cfg = BuildConfig(protocol=PROTO, max_points_per_axis=6, progress=False)
    return build_table(TinyResNet(width=width), SHAPE, backend, str(path), "tiny", cfg)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """The source (8-channel steps, scale 1), a full local build and a transfer on a machine
    with 16-channel steps at 0.4x the speed."""
    d = tmp_path_factory.mktemp("transfer")
    source = _build(d / "source.json", StaircaseTimedBackend(8))
    here = StaircaseTimedBackend(16, scale=0.4)
    full = _build(d / "full.json", here)
    moved = transfer_table(LatencyTable.load(str(d / "source.json")), TinyResNet(width=64), SHAPE,
                           here, str(d / "moved.json"), "tiny",
                           TransferConfig(protocol=PROTO, progress=False))
    return source, full, moved, here, d


def test_steps_are_found_here_not_copied(tables):
    source, full, moved, _, _ = tables
    for key, s in moved.signatures.items():
        if s.out_prunable and source.signatures[key].step_out.step == 8:
            assert s.step_out.step == 16, key
        assert s.grid_out == full.signatures[key].grid_out or s.step_out.step == 16


def test_a_fraction_of_the_measurements_and_an_accurate_table(tables):
    source, full, moved, here, d = tables
    n_full, n_moved = measured_configurations(full), measured_configurations(moved)
    # a model this small is mostly sweeps and anchors; resnet50's figure is in BENCHMARKS.md
    assert n_moved <= 0.6 * n_full, (n_moved, n_full)
    assert n_moved == moved.extra["transfer"]["configurations_measured"]
    pts = random_step_ends(full, 30, seed=3, exclude=[moved])
    res = compare_with_measurements({"full": full, "moved": moved, "source": source}, pts, here,
                                    PROTO)
    assert res["moved"]["n"] == len(pts) >= 10
    # the staircase is linear in the rounded widths, which the affine map reproduces
    assert res["moved"]["median_abs_rel_error"] < 0.03
    # the source as it is would be far off (2.5x slower, wrong steps)
    assert res["source"]["median_abs_rel_error"] > 1.0


def test_predicted_entries_are_marked_and_survive_a_reload(tables):
    _, _, moved, _, d = tables
    again = LatencyTable.load(str(d / "moved.json"))
    ns = [st.n for s in again.signatures.values() for st in s.entries.values()]
    assert 0 in ns and any(n > 0 for n in ns)
    assert measured_configurations(again) == measured_configurations(moved)
    key = next(iter(again.signatures))
    s, s2 = moved.signatures[key], again.signatures[key]
    ci, co = s.c_in_max, s.c_out_max
    assert s2.lookup(ci, co) == pytest.approx(s.lookup(ci, co), rel=1e-5)
    fits = again.extra["transfer"]["fits"]
    assert set(fits) == set(again.signatures) and all(f["a"] > 0 for f in fits.values())


def test_another_model_or_input_is_refused(tables, tmp_path):
    _, _, _, here, d = tables
    source = LatencyTable.load(str(d / "source.json"))
    with pytest.raises(HalpError, match="input_shape"):
        transfer_table(source, TinyResNet(width=64), (1, 3, 16, 16), here,
                       str(tmp_path / "t.json"), "tiny", TransferConfig(protocol=PROTO,
                                                                        progress=False))
    raw = json.load(open(d / "source.json"))
    gone = next(iter(raw["signatures"]))
    del raw["signatures"][gone]
    raw["layers"] = [layer for layer in raw["layers"] if layer["signature"] != gone]
    (tmp_path / "cut.json").write_text(json.dumps(raw))
    with pytest.raises(HalpError, match="lacks 1 of this model's layer signatures"):
        transfer_table(LatencyTable.load(str(tmp_path / "cut.json")), TinyResNet(width=64),
                       SHAPE, here, str(tmp_path / "t2.json"), "tiny",
                       TransferConfig(protocol=PROTO, progress=False))


def test_fit_is_affine_when_the_anchors_say_so_and_a_scale_otherwise():
    f = fit_signature([1.0, 2.0, 4.0], [0.6, 1.1, 2.1])  # 0.5 x + 0.1
    assert f.a == pytest.approx(0.5) and f.b == pytest.approx(0.1) and f.max_rel_residual < 1e-9
    f = fit_signature([1.0, 2.0], [0.6, 1.1])  # two points: a pure scale
    assert f.b == 0.0 and f.a == pytest.approx((0.6 + 0.55) / 2)  # median ratio
    # an offset that would make the cheapest anchor mostly overhead: refused, scale instead
    f = fit_signature([1.0, 2.0, 4.0], [1.0, 1.05, 1.1])
    assert f.b == 0.0
