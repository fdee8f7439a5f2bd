"""A table's identity: which fields make latencies comparable, and what each comparison needs.

Three roles, one list each:
- ``COMPATIBLE_KEYS``: a table may be used to prune for a deployment only when these agree
  (different hardware, runtime, precision, batch or settings give a different landscape).
- ``AUTO_MATCH_KEYS``: ``--table auto`` also wants the same runtime version, model and input.
- ``RESUME_KEYS``: an interrupted build resumes only into the very same setup and lattice.
"""
from __future__ import annotations

COMPATIBLE_KEYS = ("backend", "runtime", "device", "cpu_model", "precision", "batch",
                   "optimization_level", "threads")
AUTO_MATCH_KEYS = COMPATIBLE_KEYS + ("runtime_version", "model", "input_shape")
RESUME_KEYS = COMPATIBLE_KEYS + ("runtime_version", "input_shape", "model", "protocol",
                                 "lattice")


def _norm(value):
    return list(value) if isinstance(value, tuple) else value


def differences(recorded: dict, expected: dict, keys, only_shared: bool = False) -> list[str]:
    """One line per key on which the two identities disagree. With ``only_shared`` a key
    missing from either side is not a difference (tables from before a key existed)."""
    out = []
    for k in keys:
        if only_shared and (k not in recorded or k not in expected):
            continue
        a, b = _norm(recorded.get(k)), _norm(expected.get(k))
        if a != b:
            out.append(f"{k}: table has {a!r}, target has {b!r}")
    return out
