"""The fingerprint probe and what uses it: tables from another landscape are caught even when
the identity cannot tell (masked names, hand edits, fields a table does not record)."""
import json

import pytest

from fakes import StaircaseTimedBackend
from halp_trt.errors import ConfigError
from halp_trt.graph.groups import find_channel_groups
from halp_trt.graph.layers import list_layers
from halp_trt.latency.build import BuildConfig, build_table
from halp_trt.latency.probe import probe_table
from halp_trt.latency.resolve import check_table, resolve_table
from halp_trt.latency.table import LatencyTable
from halp_trt.runtime.protocol import Protocol
from tiny_models import TinyResNet

SHAPE = (1, 3, 8, 8)


def _specs(model):
    import torch

    x = torch.randn(*SHAPE)
    return list_layers(model, x, find_channel_groups(model, x)[0])


@pytest.fixture(scope="module")
def step8_table(tmp_path_factory):
    """A table of a 48-channel model measured on a machine with 8-channel steps (15 rounds, as
    a real table: fewer get no shape verdict)."""
    path = tmp_path_factory.mktemp("probe") / "step8.json"
    cfg = BuildConfig(protocol=Protocol(rounds=15), max_points_per_axis=4, progress=False)
    build_table(TinyResNet(width=48), SHAPE, StaircaseTimedBackend(8), str(path), "tiny", cfg)
    return str(path)


def test_the_same_landscape_fits(step8_table):
    r = probe_table(LatencyTable.load(step8_table), StaircaseTimedBackend(8))
    assert r.fits and r.reasons == []
    assert r.step_expected == r.step_found == (8, 0) and r.step_conclusive
    assert r.scale_ratio == pytest.approx(1.0) and r.points >= 3
    # every lattice point is kept with both readings, so a user sees which layer drifted
    assert len(r.lattice) == r.points
    assert all(p["here_ms"] == pytest.approx(p["table_ms"], rel=1e-3) for p in r.lattice)


def test_steps_that_moved_are_caught_at_the_same_speed(step8_table):
    r = probe_table(LatencyTable.load(step8_table), StaircaseTimedBackend(16))
    assert not r.fits and r.step_found == (16, 0)
    assert "steps of 8 channels" in r.reasons[0] and "shows 16" in r.reasons[0]


def test_a_faster_machine_with_the_same_steps_is_caught(step8_table):
    r = probe_table(LatencyTable.load(step8_table), StaircaseTimedBackend(8, scale=0.4))
    assert not r.fits and r.scale_ratio == pytest.approx(0.4, rel=1e-3)
    assert "0.40x" in r.reasons[0]


def _half_scaled(table_path, factor: float, out) -> str:
    """A copy of the table with every other signature's latencies times ``factor``: the shape
    changes, not only the scale."""
    d = json.load(open(table_path))
    for i, sig in enumerate(d["signatures"].values()):
        if i % 2:
            cols = [sig["entry_columns"].index(k) for k in ("min_ms", "p25_ms", "median_ms")]
            for e in sig["entries"]:
                for c in cols:
                    e[c] *= factor
    out.write_text(json.dumps(d))
    return str(out)


def test_a_table_edited_by_hand_is_caught(step8_table, tmp_path):
    path = _half_scaled(step8_table, 3, tmp_path / "edited.json")
    r = probe_table(LatencyTable.load(path), StaircaseTimedBackend(8))
    assert not r.fits and any("relative latencies differ" in x for x in r.reasons)


def test_an_explicit_table_from_another_landscape_is_refused_with_what_to_run(step8_table):
    model = TinyResNet(width=48)
    with pytest.raises(ConfigError, match="does not describe this machine.*build-table tiny"):
        resolve_table(step8_table, model, "tiny", SHAPE, _specs(model), StaircaseTimedBackend(16),
                      log=lambda m: None)
    logs = []
    got = resolve_table(step8_table, model, "tiny", SHAPE, _specs(model),
                        StaircaseTimedBackend(16), allow_mismatch=True, log=logs.append)
    assert got.probe is not None and not got.probe.fits
    assert any(m.startswith("WARNING") and "--allow-table-mismatch" in m for m in logs)


def test_a_table_without_machine_fields_is_settled_by_the_probe(step8_table, tmp_path):
    d = json.load(open(step8_table))
    for k in ("cpu_vendor", "cpu_family", "cpu_model_number", "cache_l2_bytes",
              "cache_l3_bytes"):
        d["identity"].pop(k, None)
    path = tmp_path / "old.json"
    path.write_text(json.dumps(d))
    model = TinyResNet(width=48)
    logs = []
    got = resolve_table(str(path), model, "tiny", SHAPE, _specs(model), StaircaseTimedBackend(8),
                        log=logs.append)
    assert got.probe.fits and "probe" in got.reason
    assert any("not recorded in the table: unknown" in m for m in logs)


@pytest.mark.parametrize("transfer", [True, False])
def test_auto_skips_a_cached_table_the_probe_refuses_and_makes_one(step8_table, tmp_path,
                                                                   monkeypatch, transfer):
    import shutil

    from halp_trt.latency import resolve

    cache = tmp_path / "cache"
    (cache / "tables").mkdir(parents=True)
    stale = cache / "tables" / "stale.json"
    shutil.copy(step8_table, stale)
    d = json.load(open(stale))
    d["identity"]["model"] = "tiny"  # an auto candidate for this model and input
    stale.write_text(json.dumps(d))
    other_isa = cache / "tables" / "other_isa.json"
    d["identity"]["isa"] = ["avx2", "fma"]  # the same job measured on another machine class
    other_isa.write_text(json.dumps(d))
    monkeypatch.setattr(resolve, "profile_dirs", lambda: [str(tmp_path / "none"),
                                                          str(cache / "tables")])
    model = TinyResNet(width=48)
    logs = []
    got = resolve_table("auto", model, "tiny", SHAPE, _specs(model), StaircaseTimedBackend(16),
                        progress=False, log=logs.append, transfer=transfer)
    assert got.path != str(stale) and "stale.json" in got.reason
    if transfer:  # another machine's table of this model is a prior: re-anchored, not rebuilt
        assert "transferred here from" in got.reason
        assert got.table.extra["transfer"]["configurations_measured"] > 0
    else:
        assert "measured here" in got.reason and "transfer" not in got.table.extra
    assert "other_isa.json: isa: table has ['avx2', 'fma']" in got.reason
    assert any(m.startswith(f"not using {other_isa}: measured on another setup") for m in logs)
    assert got.table.signatures["conv_k3x3_s1x1_p1x1_d1x1_g1_hw8x8"].step_out.step == 16
    # the next run on this machine finds the table it measured, and the probe agrees
    again = resolve_table("auto", model, "tiny", SHAPE, _specs(model), StaircaseTimedBackend(16),
                          progress=False, log=logs.append)
    assert again.path == got.path and again.probe.fits


def test_check_table_reports_identity_probe_and_coverage(step8_table):
    model = TinyResNet(width=48)
    ok = check_table(step8_table, StaircaseTimedBackend(8), _specs(model), SHAPE)
    assert ok.fits and "verdict: fits this machine" in ok.lines()
    bigger = TinyResNet(width=64)
    bad = check_table(step8_table, StaircaseTimedBackend(16), _specs(bigger), SHAPE)
    assert not bad.fits and bad.uncovered and "coverage: " in "\n".join(bad.lines())


def test_check_table_command_exits_0_when_the_table_fits_and_2_when_not(step8_table, tmp_path,
                                                                        monkeypatch):
    from click.testing import CliRunner

    import halp_trt.runtime
    from halp_trt.cli import main

    machine = {"step": 8}
    monkeypatch.setattr(halp_trt.runtime, "backend_for",
                        lambda gpu, precision="fp32", **kw: StaircaseTimedBackend(machine["step"]))
    out = tmp_path / "check.json"
    res = CliRunner().invoke(main, ["check-table", step8_table, "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "verdict: fits this machine" in res.output and json.loads(out.read_text())["fits"]
    machine["step"] = 16
    res = CliRunner().invoke(main, ["check-table", step8_table])
    assert res.exit_code == 2 and "found 16" in res.output and "does NOT fit" in res.output


def test_inspect_draws_and_compares_two_landscapes_of_one_model(step8_table, tmp_path):
    from click.testing import CliRunner

    from halp_trt.cli import main

    step16 = tmp_path / "step16.json"
    cfg = BuildConfig(protocol=Protocol(rounds=2), max_points_per_axis=4, progress=False)
    build_table(TinyResNet(width=48), SHAPE, StaircaseTimedBackend(16), str(step16), "tiny", cfg)
    res = CliRunner().invoke(main, ["inspect", step8_table, str(step16), "--out",
                                    str(tmp_path / "png")])
    assert res.exit_code == 0, res.output
    # the comparison comes after each table's own report
    row = [ln for ln in res.output.splitlines()
           if ln.startswith("conv_k3x3_s1x1_p1x1_d1x1_g1_hw8x8")][-1]
    assert row.split()[1:3] == ["8/8", "16/16"]
    assert "shared signatures have a different output step" in res.output
    assert len(list((tmp_path / "png").glob("*.png"))) == 4
    other = tmp_path / "other.json"
    build_table(TinyResNet(width=48), (1, 3, 12, 12), StaircaseTimedBackend(8), str(other),
                "tiny", cfg)
    res = CliRunner().invoke(main, ["inspect", step8_table, str(other)])
    assert res.exit_code == 2 and "same model and input" in res.output


def test_microsecond_layers_are_not_swept_for_steps(step8_table, tmp_path):
    from halp_trt.latency.probe import _step_signatures

    assert _step_signatures(LatencyTable.load(step8_table))
    d = json.load(open(step8_table))
    for sig in d["signatures"].values():  # the same landscape at 1/1000 of the time
        sig["entries"] = [[ci, co, n, mn / 1000, p25 / 1000, med / 1000, cv]
                          for ci, co, n, mn, p25, med, cv in sig["entries"]]
    (tmp_path / "tiny.json").write_text(json.dumps(d))
    assert _step_signatures(LatencyTable.load(str(tmp_path / "tiny.json"))) == []


def test_one_signature_reading_another_step_than_its_table_does_not_decide(step8_table,
                                                                           tmp_path):
    """A coarse table can read another step on one signature than on the rest; the probe
    checks the table's consensus, so it still fits the machine the table came from."""
    from halp_trt.latency.probe import _step_signatures

    d = json.load(open(step8_table))
    own = [s for s in d["signatures"].values()
           if s["step_out"]["accepted"] and s["step_out"]["source"] == "own"]
    assert len(own) >= 3
    picked = _step_signatures(LatencyTable.load(step8_table))[0].key
    # the signature the probe would sweep now claims 16, with the clearest sweep of all
    d["signatures"][picked]["step_out"].update(step=16, jump_to_noise=1e3)
    (tmp_path / "odd.json").write_text(json.dumps(d))
    odd = LatencyTable.load(str(tmp_path / "odd.json"))
    assert _step_signatures(odd)[0].step_out.step == 8
    r = probe_table(odd, StaircaseTimedBackend(8))
    assert r.fits and r.step_expected == r.step_found == (8, 0)
    # a table whose steps are 16 nearly everywhere is still refused where the steps are 8
    for s in d["signatures"].values():
        if s["step_out"]["accepted"]:
            s["step_out"]["step"] = 16
    (tmp_path / "all16.json").write_text(json.dumps(d))
    assert not probe_table(LatencyTable.load(str(tmp_path / "all16.json")),
                           StaircaseTimedBackend(8)).fits


def test_one_sweep_reading_another_step_is_outvoted(step8_table):
    """Two signatures are swept; one reading 16 on the machine its 8-step table came from (a
    stem did so on the Xeon) does not refuse the table; both reading 16 does."""
    from halp_trt.latency.probe import _step_signatures
    from halp_trt.runtime.base import Backend

    table = LatencyTable.load(step8_table)
    swept = _step_signatures(table)
    assert len(swept) == 2
    assert all(s.depthwise or s.c_in_max >= 16 for s in swept), "thin-input stems not swept"
    eight, sixteen = StaircaseTimedBackend(8), StaircaseTimedBackend(16)

    class OneSignatureOdd(Backend):
        name = "one-signature-odd"

        def _identity_impl(self):
            return eight.identity()

        def _prepare_impl(self, onnx_bytes, label=""):
            return (sixteen if swept[0].key in label else eight)._prepare_impl(onnx_bytes, label)

        def _time_runs_impl(self, handle, n_runs):
            return [handle["ms"]] * n_runs

        def _infer_impl(self, handle, inputs):
            raise NotImplementedError

    r = probe_table(table, OneSignatureOdd())
    found = {s["signature"]: tuple(s["found"]) for s in r.step_sweeps}
    assert found == {swept[0].key: (16, 0), swept[1].key: (8, 0)}
    assert r.fits and r.step_found == (8, 0)
    both = probe_table(table, sixteen)
    assert not both.fits and len(both.step_sweeps) == 2
    assert "1 other signature" in both.reasons[0]


def test_a_refusal_stands_only_when_a_second_session_confirms_it(step8_table, monkeypatch):
    """A first session that reads the table's own machine as another landscape (16-channel
    steps, 30% slower) is measured again; the faster reading of each configuration across
    both sessions decides. A machine that really differs is refused in both."""
    import halp_trt.latency.probe as probe_mod
    from halp_trt.runtime.base import Backend

    eight, sixteen = StaircaseTimedBackend(8), StaircaseTimedBackend(16)

    class OddUntilToldOtherwise(Backend):
        name = "odd-first-session"
        odd = True

        def _identity_impl(self):
            return eight.identity()

        def _prepare_impl(self, onnx_bytes, label=""):
            handle = (sixteen if self.odd else eight)._prepare_impl(onnx_bytes, label)
            handle["ms"] *= 1.3 if self.odd else 1.0
            return handle

        def _time_runs_impl(self, handle, n_runs):
            return [handle["ms"]] * n_runs

        def _infer_impl(self, handle, inputs):
            raise NotImplementedError

    sessions = []
    real = probe_mod.measure_interleaved

    def one_odd_session(backend, graphs, protocol):
        out = real(backend, graphs, protocol)
        sessions.append(len(graphs))
        backend.odd = False  # the sessions after the first read the table's landscape
        return out

    table = LatencyTable.load(step8_table)
    quiet = probe_table(table, eight)
    monkeypatch.setattr(probe_mod, "measure_interleaved", one_odd_session)
    r = probe_table(table, OddUntilToldOtherwise())
    assert quiet.fits and quiet.confirmed_by_second_session is None
    assert len(sessions) == 2 and r.fits and r.confirmed_by_second_session is False
    assert r.step_found == (8, 0) and "not confirmed" in r.summary()
    refused = probe_table(table, sixteen)
    assert not refused.fits and refused.confirmed_by_second_session is True
    assert "confirmed by a second session" in refused.summary()


def test_one_signature_alone_reading_another_step_is_inconclusive(step8_table, monkeypatch):
    """The step verdict needs MIN_DIFFERING_SIGNATURES signatures that agree on another step:
    one sweep alone reading 16 where the build read 8 is a warning, not a refusal."""
    import halp_trt.latency.probe as probe_mod

    table = LatencyTable.load(step8_table)
    monkeypatch.setattr(probe_mod, "STEP_SWEEPS", 1)
    one = probe_table(table, StaircaseTimedBackend(16))
    assert len(one.step_sweeps) == 1 and one.step_sweeps[0]["found"] == [16, 0]
    assert one.fits and not one.step_conclusive
    assert any("inconclusive" in w for w in one.warnings) and "with warnings" in one.summary()
    monkeypatch.setattr(probe_mod, "STEP_SWEEPS", 3)
    many = probe_table(table, StaircaseTimedBackend(16))
    assert len(many.step_sweeps) >= 2 and not many.fits


def test_a_moderate_shape_drift_warns_and_a_large_one_refuses(step8_table, tmp_path):
    """Shape deviations up to SHAPE_REFUSAL are what a table of small layers shows on its own
    machine minutes later: reported as a warning. Beyond it, refused."""
    from halp_trt.latency.probe import MAX_SHAPE_DEVIATION, SHAPE_REFUSAL

    def scaled(factor):
        path = _half_scaled(step8_table, factor, tmp_path / f"x{factor}.json")
        return probe_table(LatencyTable.load(path), StaircaseTimedBackend(8))

    drift = scaled(1.3)
    assert MAX_SHAPE_DEVIATION < drift.shape_deviation <= SHAPE_REFUSAL
    assert drift.fits and any("relative latencies drift" in w for w in drift.warnings)
    far = scaled(3.0)
    assert far.shape_deviation > SHAPE_REFUSAL and not far.fits
