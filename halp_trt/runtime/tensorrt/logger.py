"""TensorRT's logger: one per process (TensorRT treats the logger as process-wide); warnings
go to ``logging`` and recent errors are kept for the backend's error messages."""
from __future__ import annotations

import collections
import logging

log = logging.getLogger("halp_trt.runtime.tensorrt")

_LOGGER_CACHE: dict = {}


def get_logger(trt):
    """A logger that forwards warnings to ``logging`` and keeps recent errors for messages."""
    key = id(trt)
    cached = _LOGGER_CACHE.get(key)
    if cached is not None and cached[0] is trt:
        return cached[1]

    severity = trt.ILogger.Severity
    error_levels = {int(severity.INTERNAL_ERROR), int(severity.ERROR)}
    warning_level = int(severity.WARNING)

    class _CapturingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)  # required by the pybind trampoline
            self.errors: collections.deque[str] = collections.deque(maxlen=20)

        def log(self, sev, msg):
            level = int(sev)
            if level in error_levels:
                self.errors.append(str(msg))
                log.error("TensorRT: %s", msg)
            elif level == warning_level:
                log.warning("TensorRT: %s", msg)

    logger = _CapturingLogger()
    _LOGGER_CACHE[key] = (trt, logger)
    return logger
