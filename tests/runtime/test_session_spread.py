"""Per-session statistics of whole-model comparisons, the warm-up that removes the per-session
offset, and the report's verdict when a target lies inside the session spread — against fake
backends whose sessions have known, fixed offsets."""
import json
import random
from types import SimpleNamespace

import pytest

from halp_trt.latency.calibration import Calibration
from halp_trt.pruning.targets import parse_target
from halp_trt.report import build_report, target_verdict, write_markdown
from halp_trt.runtime.base import Backend
from halp_trt.runtime.deploy import NumericCheck, compare_onnx
from halp_trt.runtime.protocol import MAX_WARM_RUNS_MS, MODEL_WARM_MS, Protocol, \
    measure_interleaved, measure_sessions, model_protocol, warm_up_runs


class OffsetSessionsBackend(Backend):
    """A graph's bytes are its steady latency in ms as text. The i-th session built of a graph
    runs ``offsets[i]`` times slower for its whole life; runs right after a switch from another
    session pay a cache refill: ``refill[i]`` × steady on the first run, half of it on the
    second, a quarter on the third, nothing later (the shape measured on ORT CPU). Every timed
    run may also land in a noise burst (probability ``burst``, +0-30%, seeded)."""

    name = "offset-sessions"

    def __init__(self, offsets=(1.0,), refill=(0.0,), burst=0.0, seed=0):
        self.offsets, self.refill, self.burst = offsets, refill, burst
        self.built, self.last, self.consecutive = {}, None, 0
        self.rng = random.Random(seed)

    def _identity_impl(self):
        return {"runtime": "fake"}

    def _prepare_impl(self, onnx_bytes, label=""):
        i = self.built.get(onnx_bytes, 0)
        self.built[onnx_bytes] = i + 1
        return {"ms": float(onnx_bytes.split(b"|")[0]), "i": i}

    def _time_runs_impl(self, handle, n_runs):
        out = []
        for _ in range(n_runs):
            self.consecutive = self.consecutive + 1 if self.last is handle else 1
            self.last = handle
            i = handle["i"]
            refill = self.refill[i % len(self.refill)] * (0.5 ** (self.consecutive - 1)
                                                          if self.consecutive <= 3 else 0.0)
            burst = 1 + 0.3 * self.rng.random() if self.rng.random() < self.burst else 1.0
            out.append(handle["ms"] * self.offsets[i % len(self.offsets)] * (1 + refill) * burst)
        return out

    def _infer_impl(self, handle, inputs):
        raise NotImplementedError

    def release(self, handle):
        handle.clear()


def test_each_session_keeps_its_own_statistics_and_the_combined_sample_is_their_mean():
    offsets = (1.0, 1.04, 0.97)
    be = OffsetSessionsBackend(offsets=offsets, burst=0.3)
    proto = Protocol(rounds=12, min_sample_ms=0.0, sessions_per_graph=3)
    stats = measure_sessions(be, {"a": b"2.0|", "b": b"0.5|"}, proto)
    for key, ms in (("a", 2.0), ("b", 0.5)):
        per = stats[key].session_estimates("min")
        assert per == pytest.approx([ms * o for o in offsets]), "per-session minima, build order"
        assert all(s.n == 12 for s in stats[key].sessions)
        assert stats[key].combined.n == 36
        # the graph's estimate is the mean of its sessions' (bursts filtered per session)
        assert stats[key].combined.min_ms == pytest.approx(ms * sum(offsets) / 3)
        assert stats[key].combined.median_ms == pytest.approx(
            sum(s.median_ms for s in stats[key].sessions) / 3)
    # measure_interleaved returns the combined statistics of the same protocol
    again = measure_interleaved(OffsetSessionsBackend(offsets=offsets, burst=0.3),
                                {"a": b"2.0|", "b": b"0.5|"}, proto)
    assert again["a"].to_json() == stats["a"].combined.to_json()


def test_comparison_gives_the_ratio_over_every_pair_of_sessions():
    offsets = (1.0, 1.05, 0.98)
    cmp = compare_onnx(OffsetSessionsBackend(offsets=offsets), b"4.0|", b"1.2|",
                       Protocol(rounds=5, min_sample_ms=0.0, sessions_per_graph=3), calls=1)
    assert cmp.ratio == pytest.approx(0.3)
    pairs = cmp.session_pair_ratios
    assert len(pairs) == 3 and all(len(row) == 3 for row in pairs)
    assert pairs[1][2] == pytest.approx(1.2 * 1.05 / (4.0 * 0.98))
    lo, hi = cmp.ratio_spread
    assert lo == pytest.approx(0.3 * 0.98 / 1.05) and hi == pytest.approx(0.3 * 1.05 / 0.98)
    assert lo < cmp.ratio < hi
    pruned_ms = [x.min_ms for x in cmp.pruned_sessions]
    assert (min(pruned_ms), max(pruned_ms)) == pytest.approx((1.2 * 0.98, 1.2 * 1.05))
    # one session per graph: no spread to give, the point ratio stands alone
    single = compare_onnx(OffsetSessionsBackend(), b"4.0|", b"1.2|",
                          Protocol(rounds=3, min_sample_ms=0.0), calls=1)
    assert single.ratio_spread == pytest.approx((0.3, 0.3))


def test_sessions_are_paired_only_within_their_measurement_call():
    # each call's three sessions share an offset, the same for both graphs: within a call
    # every pair reads 0.3; pairing across calls would invent a spread of 0.3 x 1.1 / 0.9
    offsets = (1.0,) * 3 + (1.1,) * 3 + (0.9,) * 3
    cmp = compare_onnx(OffsetSessionsBackend(offsets=offsets), b"4.0|", b"1.2|",
                       Protocol(rounds=15, min_sample_ms=0.0, sessions_per_graph=3), calls=3)
    assert len(cmp.pruned_sessions) == len(cmp.original_sessions) == 9
    pairs = cmp.session_pair_ratios
    assert len(pairs) == 9 and all(len(row) == 3 for row in pairs)
    assert cmp.ratio_spread == pytest.approx((0.3, 0.3))
    pruned_ms = [x.min_ms for x in cmp.pruned_sessions]
    assert (min(pruned_ms), max(pruned_ms)) == pytest.approx((1.2 * 0.9, 1.2 * 1.1))
    assert cmp.ratio == pytest.approx(0.3)


def test_warm_up_after_a_session_switch_removes_the_per_session_offset():
    # sessions identical at steady state; they differ only in how slowly they refill
    refill = (0.1, 0.5, 0.3, 0.8)
    graphs = {"a": b"0.5|", "b": b"0.8|"}
    one_untimed = Protocol(rounds=6, min_sample_ms=0.0, sessions_per_graph=4,
                           cold_above_bytes=2 ** 62)
    cold = measure_sessions(OffsetSessionsBackend(refill=refill), graphs, one_untimed)
    per = cold["a"].session_estimates()
    assert max(per) / min(per) - 1 > 0.1, "one untimed run leaves a per-session offset"
    warm = measure_sessions(OffsetSessionsBackend(refill=refill), graphs, model_protocol(6, 4))
    for key, ms in (("a", 0.5), ("b", 0.8)):
        assert warm[key].session_estimates() == pytest.approx([ms] * 4)


def test_warm_up_counts_runs_where_one_run_outlasts_warm_ms():
    # a 3.5 ms model: warm_ms alone gives one untimed run, which leaves half the refill on the
    # timed run (the Xeon's 45 MB of weights in its large L3); four runs leave none
    refill = (0.1, 0.5, 0.3, 0.8)
    graphs = {"a": b"3.5|", "b": b"5.0|"}
    time_only = Protocol(rounds=6, min_sample_ms=0.0, sessions_per_graph=4,
                         cold_above_bytes=2 ** 62, warm_ms=MODEL_WARM_MS)
    assert warm_up_runs(time_only, 3.5) == 1
    short = measure_sessions(OffsetSessionsBackend(refill=refill), graphs, time_only)
    per = short["a"].session_estimates()
    assert max(per) / min(per) - 1 > 0.1
    warm = measure_sessions(OffsetSessionsBackend(refill=refill), graphs, model_protocol(6, 4))
    for key, ms in (("a", 3.5), ("b", 5.0)):
        assert warm[key].session_estimates() == pytest.approx([ms] * 4)


def test_warm_up_runs_are_capped_for_slow_models():
    proto = model_protocol()
    assert warm_up_runs(proto, 0.2) == 15  # warm_ms decides: 3 ms of 0.2 ms runs
    assert warm_up_runs(proto, 3.0) == proto.warm_runs
    assert warm_up_runs(proto, MAX_WARM_RUNS_MS / 2) == 2  # what fits in the cap
    assert warm_up_runs(proto, 100.0) == 1  # one run warms a 100 ms model
    assert warm_up_runs(Protocol(), 3.0) == 1, "layer tables: one untimed run, as before"


def test_protocol_identity_and_validation_of_warm_ms():
    assert "warm_ms" not in Protocol().to_json(), "layer tables keep their identity"
    assert "warm_runs" not in Protocol().to_json()
    assert model_protocol().to_json()["warm_ms"] > 0
    assert model_protocol().to_json()["warm_runs"] > 1
    with pytest.raises(ValueError, match="warm_ms"):
        Protocol(warm_ms=-1)
    with pytest.raises(ValueError, match="warm_runs"):
        Protocol(warm_runs=-1)


@pytest.mark.parametrize("ratio,spread,verdict", [
    (0.303, (0.29, 0.32), "met"),              # within ±5% of 0.30
    (0.323, (0.295, 0.335), "within the session spread"),  # 7.7% over, target inside spread
    (0.323, (0.315, 0.335), "missed"),         # 7.7% over, every session pair over
    (0.26, (0.25, 0.27), "missed"),            # pruned far more than asked
])
def test_target_verdict(ratio, spread, verdict):
    assert target_verdict(ratio, 0.30, spread) == verdict


def _report_for(tmp_path, offsets, pruned_ms):
    cmp = compare_onnx(OffsetSessionsBackend(offsets=offsets), b"1.0|", f"{pruned_ms}|".encode(),
                       Protocol(rounds=4, min_sample_ms=0.0, sessions_per_graph=len(offsets)))
    cfg = SimpleNamespace(model="m", data="d", input_shape=(1, 3, 8, 8), target="0.3",
                          parsed_target=parse_target("0.3", of="measured"), to_json=lambda: {})
    result = SimpleNamespace(original_widths={"g": 8}, kept={"g": [0, 1, 2]}, history=[])
    backend = SimpleNamespace(identity=lambda: {"runtime": "fake"}, verification_note="fake",
                              verified=False)
    table = SimpleNamespace(identity={})
    report = build_report(cfg, table, "t.json", "given", None, backend,
                          Calibration("ratio", 10.0, 1.0), 10.0, {"g": 3.0}, cmp,
                          NumericCheck(0.0, 1.0, 1e-3, 2), 0.9, 0.8, result, 1.0,
                          {"prune": 0.75, "verify": 0.25}, {})
    path = tmp_path / "report.md"
    write_markdown(str(path), report)
    return report, path.read_text()


def test_report_says_within_the_session_spread_rather_than_met(tmp_path):
    # pruned reads 0.324 of the original (8% over 0.30); sessions 10% apart put 0.30 inside
    report, md = _report_for(tmp_path, (1.0, 1.1, 0.95), 0.324)
    lo, hi = report["latency_ratio_spread"]
    assert lo < 0.3 < hi and report["latency_ratio_measured"] == pytest.approx(0.324)
    assert report["target_verdict"] == "within the session spread"
    assert "within the session spread" in md and "**met**" not in md
    assert f"{lo:.3f}–{hi:.3f} over pairs of sessions" in md
    assert report["pruned"]["session_ms"] == pytest.approx([0.324, 0.3564, 0.3078] * 3)
    assert "Wall time: 1 s (prune 1 s, verify 0 s)" in md
    json.dumps(report)  # report.json stays serializable
    # the same reading with sessions that agree is a miss, and a close one is met
    report, md = _report_for(tmp_path, (1.0, 1.01), 0.324)
    assert report["target_verdict"] == "missed" and "**missed** (slower than" in md
    report, md = _report_for(tmp_path, (1.0, 1.1, 0.95), 0.31)
    assert report["target_verdict"] == "met" and "**met**" in md
    # keys of earlier reports are all still there
    for key in ("latency_ratio_measured", "latency_ratio_vs_target", "speedup_measured",
                "noisy_measurement"):
        assert key in report
