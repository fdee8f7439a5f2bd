"""File helpers: atomic writes (a crash or kill -9 mid-write leaves the previous file, never half
of one) and writability checks made before any work.

The temporary file lives in the target's directory so ``os.replace`` is a rename, not a copy.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import io
import json
import os
import tempfile
import time
from typing import BinaryIO, Callable

from halp_trt.errors import HalpError

# A temporary file of this target older than this was left by a killed writer (kill -9 skips
# the cleanup below); younger ones may belong to a writer still running.
STALE_TMP_S = 60.0


def cache_root() -> str:
    """halp-trt's cache folder: ``$HALP_TRT_CACHE``, default ``~/.cache/halp-trt``."""
    return os.environ.get("HALP_TRT_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "halp-trt"))


def _remove_stale_tmp(directory: str, prefix: str) -> None:
    now = time.time()
    for old in glob.glob(os.path.join(glob.escape(directory), glob.escape(prefix) + "*")):
        with contextlib.suppress(OSError):
            if now - os.path.getmtime(old) > STALE_TMP_S:
                os.unlink(old)


# What to do about the operating system's refusals, by errno.
_OS_ADVICE = {
    errno.ENOSPC: "free some space there or choose another location",
    errno.EDQUOT: "free some space there or choose another location",
    errno.EROFS: "the file system is read-only; choose a writable location",
    errno.EACCES: "choose a location you may write to, or change its permissions",
    errno.EPERM: "choose a location you may write to, or change its permissions",
}


def os_error(path: str, exc: OSError, what: str = "write") -> HalpError:
    """One clear error for an operating-system failure at ``path``."""
    advice = _OS_ADVICE.get(exc.errno, "check the path and try again")
    return HalpError(f"cannot {what} {path}: {exc.strerror or exc}; {advice}. Whatever was "
                     "saved before is kept, and a rerun resumes from it")


def make_dirs(directory: str) -> None:
    """``os.makedirs(exist_ok=True)`` whose failures are HalpErrors naming the folder."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise os_error(directory, exc, "create the folder") from None


def write_bytes_atomic(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    make_dirs(directory)
    prefix = f".tmp-{os.path.basename(path)}-"  # names its target, so leftovers can be found
    _remove_stale_tmp(directory, prefix)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=os.path.splitext(path)[1] or ".bin",
                                   dir=directory)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            raise os_error(path, exc) from None
        raise


def write_atomic_with(path: str, write: Callable[[BinaryIO], object]) -> None:
    """Atomically write what ``write(file)`` produces (``torch.save``, ``fig.savefig``, ...);
    it writes to memory first, so an exception inside it leaves ``path`` untouched."""
    buf = io.BytesIO()
    write(buf)
    write_bytes_atomic(path, buf.getvalue())


def write_json_atomic(path: str, payload) -> None:
    """JSON (no NaN/inf: they are not JSON) written atomically."""
    write_bytes_atomic(path, json.dumps(payload, indent=1, allow_nan=False).encode("utf-8"))


def check_writable(path: str, is_dir: bool = False) -> None:
    """Fail before any work if ``path`` (a file, or with ``is_dir`` a folder) cannot be
    written: creates the folder and a temporary file in it."""
    directory = path if is_dir else os.path.dirname(os.path.abspath(path))
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise HalpError(f"cannot write to {directory}: it is a file, not a folder; choose a "
                        "writable location")
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise HalpError(f"cannot write to {directory} ({exc.strerror or exc}); choose a "
                        "writable location") from None
