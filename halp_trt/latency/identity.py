"""A table's identity: which fields make latencies comparable, one list per role.

- ``COMPATIBLE_KEYS``: must agree for a table to prune for a deployment (hardware, runtime,
  precision, batch, settings). The CPU is compared by vendor, family/model numbers, ISA flags
  and cache sizes, not by its name, which a hypervisor may mask ("AMD EPYC" on Zen 3 and 5).
- ``AUTO_MATCH_KEYS``: ``--table auto`` also wants the same runtime version, model and input.
- ``RESUME_KEYS``: an interrupted build resumes only into the very same setup and lattice.
- ``INFO_KEYS``: recorded and shown when they differ, never a reason to refuse.

A key a table does not record is *unknown*, never a match: a measurement decides
(``halp_trt.latency.probe``)."""
from __future__ import annotations

from dataclasses import dataclass, field

MACHINE_KEYS = ("cpu_vendor", "cpu_family", "cpu_model_number", "isa", "cache_l2_bytes",
                "cache_l3_bytes", "compute_capability")
COMPATIBLE_KEYS = ("backend", "runtime", "device", "cpu_model") + MACHINE_KEYS + (
    "precision", "batch", "optimization_level", "threads")
AUTO_MATCH_KEYS = COMPATIBLE_KEYS + ("runtime_version", "model", "input_shape")
RESUME_KEYS = COMPATIBLE_KEYS + ("runtime_version", "input_shape", "model", "protocol",
                                 "lattice")
INFO_KEYS = ("cpu_stepping", "cpus_available", "cuda_driver", "cuda_runtime")


def _norm(value):
    return list(value) if isinstance(value, tuple) else value


def differences(recorded: dict, expected: dict, keys, only_shared: bool = False) -> list[str]:
    """One line per key on which the two identities disagree. With ``only_shared`` a key
    missing from either side is not a difference."""
    out = []
    for k in keys:
        if only_shared and (k not in recorded or k not in expected):
            continue
        a, b = _norm(recorded.get(k)), _norm(expected.get(k))
        if a != b:
            out.append(f"{k}: table has {a!r}, this setup has {b!r}")
    return out


@dataclass
class IdentityComparison:
    """How a table's identity compares with this setup's, one line per key."""

    differs: list[str] = field(default_factory=list)  # recorded on both sides, not equal
    unknown: list[str] = field(default_factory=list)  # this setup has it, the table does not
    notes: list[str] = field(default_factory=list)  # INFO_KEYS that differ

    @property
    def matches(self) -> bool:
        return not self.differs and not self.unknown

    def lines(self) -> list[str]:
        return (self.differs + [f"{u} (not recorded in the table: unknown)" for u in self.unknown]
                + [f"note: {n}" for n in self.notes])


def compare_identity(recorded: dict, expected: dict, keys=COMPATIBLE_KEYS,
                     info_keys=INFO_KEYS) -> IdentityComparison:
    """Compare on ``keys``; a key this setup does not report (None or absent: e.g. CPU fields
    for a GPU runtime) is skipped, a key the table lacks is unknown."""
    out = IdentityComparison()
    for k in keys:
        b = _norm(expected.get(k))
        if b is None:
            continue
        if recorded.get(k) is None:
            out.unknown.append(f"{k}: this setup has {b!r}")
        elif _norm(recorded[k]) != b:
            out.differs.append(f"{k}: table has {_norm(recorded[k])!r}, this setup has {b!r}")
    out.notes = differences(recorded, expected, info_keys, only_shared=True)
    return out
