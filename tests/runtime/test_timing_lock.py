"""The machine-wide timing lock: every timing session holds it exclusively, another process
waits for it (and says so), and work held shared keeps other processes' timing out."""
import subprocess
import sys
import textwrap
import time

import pytest

import halp_trt.runtime.timing_lock as timing_lock
from halp_trt.latency.build import BuildConfig, build_table
from halp_trt.latency.probe import probe_table
from halp_trt.latency.table import LatencyTable
from halp_trt.runtime import get_backend
from halp_trt.runtime.deploy import compare_onnx
from halp_trt.runtime.export import export_onnx
from halp_trt.runtime.protocol import Protocol, measure_interleaved


@pytest.fixture
def lock_file(tmp_path, monkeypatch):
    path = tmp_path / "timing.lock"
    monkeypatch.setenv(timing_lock.LOCK_ENV, str(path))
    return path


def _hold_in_child(path, mode: str, seconds: float) -> subprocess.Popen:
    """A child that holds ``path`` (flock ``mode``) for ``seconds`` once it prints 'held'."""
    code = textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.{mode})
        print("held", flush=True)
        time.sleep({seconds})
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


class LockCheckingBackend:
    """The real ONNX Runtime backend, recording at every timed run whether this process holds
    the timing lock exclusively."""

    def __init__(self):
        self.inner = get_backend("onnxruntime")
        self.held = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def time_runs(self, handle, n_runs):
        self.held.append(timing_lock._LOCK.exclusive_depth > 0)
        return self.inner.time_runs(handle, n_runs)


def test_a_timing_session_from_each_caller_holds_the_lock(lock_file, tmp_path, monkeypatch):
    import halp_trt.latency.probe as probe
    from tiny_models import tiny_resnet

    # the probe skips entries under its minimum latency or noisy: tiny layers on a busy machine
    # can leave it nothing to time, so it is given two entries of the table to re-measure
    monkeypatch.setattr(probe, "_lattice_points", lambda table: [
        (key, *point) for key, sig in table.signatures.items() for point in sig.entries][:2])

    model = tiny_resnet().eval()
    shape = (1, 3, 16, 16)
    be = LockCheckingBackend()
    cfg = BuildConfig(protocol=Protocol(rounds=2), sweep_window=8, max_points_per_axis=3,
                      progress=False)
    build_table(model, shape, be, str(tmp_path / "t.json"), "tiny", cfg)
    callers = {"build_table": len(be.held)}
    probe_table(LatencyTable.load(str(tmp_path / "t.json")), be, Protocol(rounds=2))
    callers["probe_table"] = len(be.held)
    import torch

    onnx_bytes = export_onnx(model, torch.randn(shape))
    compare_onnx(be, onnx_bytes, onnx_bytes, Protocol(rounds=2))
    callers["compare_onnx"] = len(be.held)
    measure_interleaved(be, {"m": onnx_bytes}, Protocol(rounds=2))
    callers["measure_interleaved"] = len(be.held)
    counts = list(callers.values())
    assert all(b > a for a, b in zip([0] + counts, counts)), callers  # each caller timed
    assert all(be.held), f"{be.held.count(False)} timed runs outside the lock"
    assert timing_lock._LOCK.exclusive_depth == 0  # released after each session


def test_timing_waits_for_another_process_and_says_so(lock_file, capfd):
    child = _hold_in_child(lock_file, "LOCK_EX", 1.5)
    before = timing_lock.seconds_waited()
    try:
        t0 = time.perf_counter()
        with timing_lock.timing_exclusive():
            waited = time.perf_counter() - t0
    finally:
        child.wait()
    assert waited > 1.0
    assert "another process" in capfd.readouterr().err
    # the wait is counted, so a per-job budget can leave it out
    assert waited - 0.2 < timing_lock.seconds_waited() - before <= waited


def test_shared_work_keeps_timing_out_and_timing_inside_it_converts(lock_file):
    child = _hold_in_child(lock_file, "LOCK_SH", 1.5)  # e.g. `flock -s LOCK make test`
    try:
        with timing_lock.sharing_the_machine():  # shared beside shared: no wait
            t0 = time.perf_counter()
            assert time.perf_counter() - t0 < 0.5
            with timing_lock.timing_exclusive():  # waits for the child's shared hold
                assert time.perf_counter() - t0 > 1.0
                assert timing_lock._LOCK.exclusive_depth == 1
            # back to shared: another process can share, not time
            probe = subprocess.run(
                [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], "
                 "os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB); "
                 "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(lock_file)],
                capture_output=True, text=True)
            assert probe.returncode != 0 and "BlockingIOError" in probe.stderr
    finally:
        child.wait()
    assert timing_lock._LOCK.shared_depth == 0


def test_the_lock_can_be_turned_off_and_follows_the_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(timing_lock.LOCK_ENV, "off")
    assert timing_lock.lock_path() is None
    with timing_lock.timing_exclusive():  # no file, no wait
        pass
    monkeypatch.delenv(timing_lock.LOCK_ENV)
    monkeypatch.setenv("HALP_TRT_CACHE", str(tmp_path / "cache"))
    assert timing_lock.lock_path() == str(tmp_path / "cache" / "timing.lock")
