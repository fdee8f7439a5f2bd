"""The interleaved-rounds timing protocol, against a recording fake backend."""
import pytest

from halp_trt.runtime.base import Backend
from halp_trt.runtime.protocol import (Protocol, measure_interleaved, measure_sessions,
                                       memory_chunks, model_protocol, sessions_that_fit,
                                       summarize)


class RecordingBackend(Backend):
    """Each graph's bytes are its latency in ms as text; every call is recorded."""

    name = "recording"

    def __init__(self, fail_on=None, fail_timing_of=None):
        self.calls, self.live = [], set()
        self.fail_on, self.fail_timing_of = fail_on, fail_timing_of
        self.sessions = 0

    def _identity_impl(self):
        return {}

    def _prepare_impl(self, onnx_bytes, label=""):
        if label == self.fail_on:
            raise RuntimeError("cannot build " + label)
        self.sessions += 1
        handle = {"label": label, "ms": float(onnx_bytes.split(b"|")[0]), "id": self.sessions}
        self.live.add(handle["id"])
        self.calls.append(("prepare", label))
        return handle

    def _time_runs_impl(self, handle, n_runs):
        if handle["label"] == self.fail_timing_of and len(self.calls) > 20:
            raise RuntimeError("device lost")
        self.calls.append(("time", handle["label"], n_runs))
        # the second session of a graph is 10% slower: averaging sessions must show it
        slow = 1.1 if handle["id"] % 2 == 0 else 1.0
        return [handle["ms"] * slow] * n_runs

    def _infer_impl(self, handle, inputs):
        raise NotImplementedError

    def flush_cache(self, level="llc"):
        self.calls.append(("flush", level))

    def release(self, handle):
        self.live.discard(handle["id"])
        self.calls.append(("release", handle["label"]))


def graphs(*ms, big=()):
    return {f"g{i}": (f"{m}|".encode() + (b"x" * 2048 if i in big else b""))
            for i, m in enumerate(ms)}


def timed_order(calls):
    return [c[1] for c in calls if c[0] == "time" and c[2] >= 1]


def test_every_round_visits_every_graph_in_a_shuffled_order():
    be = RecordingBackend()
    proto = Protocol(rounds=6, untimed_runs_per_round=0, min_sample_ms=0.0, seed=1)
    stats = measure_interleaved(be, graphs(1.0, 2.0, 3.0, 4.0), proto)
    prepares = [i for i, c in enumerate(be.calls) if c[0] == "prepare"]
    first_timed_round = [i for i, c in enumerate(be.calls) if c[0] == "time" and c[2] == 1]
    assert max(prepares) < min(first_timed_round), "all sessions exist before the first round"
    order = [c[1] for c in be.calls if c[0] == "time" and c[2] == 1]
    rounds = [order[i:i + 4] for i in range(0, len(order), 4)]
    assert len(rounds) == 6 and all(sorted(r) == ["g0", "g1", "g2", "g3"] for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1, "the order is shuffled between rounds"
    assert {k: s.n for k, s in stats.items()} == {f"g{i}": 6 for i in range(4)}
    assert stats["g2"].min_ms == pytest.approx(3.0)
    assert not be.live, "every session released"


def test_sessions_per_graph_are_averaged_within_a_round():
    be = RecordingBackend()
    proto = Protocol(rounds=3, untimed_runs_per_round=0, min_sample_ms=0.0, sessions_per_graph=2)
    stats = measure_interleaved(be, graphs(1.0, 2.0), proto)
    assert be.sessions == 4
    # one session of each graph is 10% slower; every sample is the mean of the two
    assert stats["g0"].min_ms == pytest.approx(1.05) and stats["g0"].median_ms == \
        pytest.approx(1.05)


def test_sessions_per_graph_shrink_to_what_memory_holds(monkeypatch):
    # 13 graphs of 350 MB (an 88M-parameter model's bracket) on 20 GB: one session each
    assert sessions_that_fit(350 << 20, 13, 3, available_bytes=20 << 30) == 1
    assert sessions_that_fit(45 << 20, 13, 3, available_bytes=20 << 30) == 3
    assert sessions_that_fit(100 << 20, 13, 8, available_bytes=20 << 30) == 2
    import halp_trt.runtime.machine as machine

    # the same graphs with 10 kB of memory to spare: every graph still gets one session
    monkeypatch.setattr(machine, "available_memory_bytes", lambda: 10_000)
    be = RecordingBackend()
    proto = Protocol(rounds=2, untimed_runs_per_round=0, min_sample_ms=0.0, sessions_per_graph=3)
    stats = measure_sessions(be, graphs(1.0, 2.0, big=(0, 1)), proto)
    assert be.sessions == 2 and [len(s.sessions) for s in stats.values()] == [1, 1]
    monkeypatch.setattr(machine, "available_memory_bytes", lambda: 10 << 30)
    be = RecordingBackend()
    stats = measure_sessions(be, graphs(1.0, 2.0, big=(0, 1)), proto)
    assert be.sessions == 6


def test_configurations_are_chunked_by_count_and_by_memory():
    sizes = [1, 1, 1, 1, 1, 1, 1]
    assert memory_chunks(sizes, 3, lambda b: b, available_bytes=10**9) == \
        [[1, 1, 1], [1, 1, 1], [1]]
    # 411 MB linear graphs on 20 GB: ~10 GB share / 3 per session -> 8 alive at once
    mb411 = 411 << 20
    chunks = memory_chunks([mb411] * 24, 48, lambda b: b, available_bytes=20 << 30)
    assert [len(c) for c in chunks] == [8, 8, 8]
    # one graph too big for the share alone still gets measured, in a chunk of its own
    assert memory_chunks([5, 100, 5], 48, lambda b: b, available_bytes=60) == [[5], [100], [5]]


def test_big_graphs_are_timed_cold_one_run_per_sample_small_ones_repeated():
    be = RecordingBackend()
    proto = Protocol(rounds=2, untimed_runs_per_round=1, min_sample_ms=0.3,
                     cold_above_bytes=1024)
    measure_interleaved(be, graphs(0.01, 1.0, big=(1,)), proto)
    seq = be.calls
    for i, c in enumerate(seq):
        if c[0] == "time" and c[1] == "g1" and c[2] == 1 and seq[i - 1][0] == "flush":
            break
    else:
        raise AssertionError("the big graph's timed run is not preceded by a cache flush")
    small_timed = [c[2] for c in seq if c[0] == "time" and c[1] == "g0" and c[2] > 3]
    assert small_timed and all(n == 30 for n in small_timed), "0.3 ms / 0.01 ms = 30 runs"
    flushes = [c for c in seq if c[0] == "flush"]
    assert flushes == [("flush", "llc")] * 2, \
        "one flush per timed sample of the big graph, none for the small one"
    # a model whose weights stay in the last-level cache: only the core's own cache is emptied
    be = RecordingBackend()
    measure_interleaved(be, graphs(0.01, 1.0, big=(1,)),
                        Protocol(rounds=2, cold_above_bytes=1024, cold_level="l2"))
    assert [c for c in be.calls if c[0] == "flush"] == [("flush", "l2")] * 2


def test_cold_level_is_validated_and_recorded_only_when_not_the_old_default():
    assert "cold_level" not in Protocol().to_json(), "tables measured before it stay equal"
    assert Protocol(cold_level="l2").to_json()["cold_level"] == "l2"
    with pytest.raises(ValueError, match="cold_level"):
        Protocol(cold_level="l3")


def test_sessions_are_released_when_a_build_or_a_run_fails():
    be = RecordingBackend(fail_on="g2")
    with pytest.raises(RuntimeError, match="cannot build g2"):
        measure_interleaved(be, graphs(1.0, 2.0, 3.0), Protocol(rounds=2))
    assert not be.live and sum(c[0] == "release" for c in be.calls) == 2
    be = RecordingBackend(fail_timing_of="g0")
    with pytest.raises(RuntimeError, match="device lost"):
        measure_interleaved(be, graphs(1.0, 2.0), Protocol(rounds=10, min_sample_ms=0.0))
    assert not be.live


def test_callables_make_bytes_only_when_measured_and_model_protocol_is_warm():
    made = []
    be = RecordingBackend()
    measure_interleaved(be, {"a": lambda: made.append(1) or b"1|"}, Protocol(rounds=1))
    assert made == [1]
    p = model_protocol(rounds=7)
    assert p.rounds == 7 and p.sessions_per_graph == 3 and p.min_sample_ms == 0.0
    assert p.cold_above_bytes > 1 << 40, "whole models are never flushed"


def test_summary_statistics_and_bad_samples():
    s = summarize([3.0, 1.0, 2.0, 10.0])
    assert (s.n, s.min_ms, s.median_ms) == (4, 1.0, 2.5)
    assert s.noisy and s.spread == pytest.approx(1.5)
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0, float("nan")])
    with pytest.raises(ValueError):
        Protocol(rounds=0)


def test_a_recorded_protocol_reads_back_with_defaults_for_what_it_lacks():
    p = Protocol(rounds=7, cold_level="l2", sessions_per_graph=2)
    assert Protocol.from_json(p.to_json()) == p  # "name" and other extra keys ignored
    assert Protocol.from_json({"rounds": 15, "name": "interleaved-rounds"}).cold_level == "llc"
    assert Protocol.from_json(p.to_json(), rounds=20).rounds == 20
