"""One halp-trt process times at a time on a machine.

Every timing session (``protocol.measure_sessions``: tables, probes, calibration, the closed
loop, final comparisons) holds a machine-wide lock file exclusively. A process that does other
CPU-heavy work beside timing jobs (training, a test suite) holds it shared
(``sharing_the_machine`` here, or ``flock -s FILE cmd`` from a shell), so readings are never
taken on a busy machine. Two build-table runs started two seconds apart once both timed at once
and wrote tables their own machine's probe refused; with the lock the second waits and says so.

``HALP_TRT_TIMING_LOCK`` names the file (default ``$HALP_TRT_CACHE/timing.lock``, else
``~/.cache/halp-trt/timing.lock``); ``off`` disables it.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager

from halp_trt.fileio import cache_root

LOCK_ENV = "HALP_TRT_TIMING_LOCK"


def lock_path() -> str | None:
    """The lock file in force, or None when disabled."""
    value = os.environ.get(LOCK_ENV, "")
    if value.lower() == "off":
        return None
    if value:
        return value
    return os.path.join(cache_root(), "timing.lock")


class _ProcessLock:
    """This process's hold on the lock file: nested and repeated uses share one descriptor,
    so a timing session inside a shared hold converts it to exclusive and back."""

    def __init__(self):
        self.path: str | None = None
        self.fd: int | None = None
        self.exclusive_depth = 0
        self.shared_depth = 0
        self.mutex = threading.RLock()
        # time blocked on other processes' holds: a job's own budget does not count it
        self.waited_s = 0.0
        self.waiting_since: float | None = None

    def _open(self) -> bool:
        path = lock_path()
        if path != self.path and self.fd is not None and not (self.exclusive_depth or
                                                               self.shared_depth):
            os.close(self.fd)
            self.fd = None
        if self.fd is None:
            if path is None:
                return False
            try:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:  # a read-only home must not stop timing
                print(f"halp-trt: cannot open the timing lock {path} ({exc}); timing without "
                      f"it (set {LOCK_ENV} to a writable file)", file=sys.stderr)
                return False
            self.path = path
        return True

    def _flock(self, mode: int, what: str) -> None:
        import fcntl

        try:
            fcntl.flock(self.fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"halp-trt: another process is {what} on this machine (lock {self.path}); "
                  "waiting for it", file=sys.stderr, flush=True)
            self.waiting_since = time.monotonic()
            try:
                fcntl.flock(self.fd, mode)
            finally:
                self.waited_s += time.monotonic() - self.waiting_since
                self.waiting_since = None

    @contextmanager
    def hold(self, exclusive: bool):
        import fcntl

        with self.mutex:
            if not self._open():
                yield
                return
            if exclusive and not self.exclusive_depth:
                self._flock(fcntl.LOCK_EX, "timing or working")
            elif not exclusive and not (self.exclusive_depth or self.shared_depth):
                self._flock(fcntl.LOCK_SH, "timing")
            if exclusive:
                self.exclusive_depth += 1
            else:
                self.shared_depth += 1
            try:
                yield
            finally:
                if exclusive:
                    self.exclusive_depth -= 1
                else:
                    self.shared_depth -= 1
                if not self.exclusive_depth:
                    fcntl.flock(self.fd, fcntl.LOCK_SH if self.shared_depth else fcntl.LOCK_UN)


_LOCK = _ProcessLock()


def timing_exclusive():
    """Context: nothing else of halp-trt (nor anything run under ``flock -s``) works on this
    machine meanwhile."""
    return _LOCK.hold(exclusive=True)


def sharing_the_machine():
    """Context for CPU-heavy work that is not timing (training): other processes' timing waits
    for it to end, and this process's own timing still takes the lock exclusively."""
    return _LOCK.hold(exclusive=False)


def seconds_waited() -> float:
    """Seconds this process has spent blocked on other processes' holds of the lock, the wait
    in progress included (a per-model budget counts the model's own work, not the queue)."""
    since = _LOCK.waiting_since
    return _LOCK.waited_s + (time.monotonic() - since if since is not None else 0.0)
