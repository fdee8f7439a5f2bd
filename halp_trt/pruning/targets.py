"""Latency targets: one parser for every way a target is written.

A target is a fraction ("0.5", "50%", 0.5) or an absolute latency ("12ms", "12.5 ms"). What a
fraction is a fraction *of* depends on the caller: the pruner's targets are fractions of the
table's predicted latency of the full model (``of="predicted"``); prune-and-deploy's are
fractions of the original measured on the runtime (``of="measured"``).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from halp_trt.errors import ConfigError

OF = ("predicted", "measured")

_MS_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*ms\s*$", re.IGNORECASE)
_PCT_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*%\s*$")


@dataclass(frozen=True)
class Target:
    """``kind`` is "fraction" (of the full model's ``of`` latency) or "ms"."""

    kind: str
    value: float
    of: str = field(default="predicted", compare=False)

    def to_ms(self, full_ms: float) -> float:
        return self.value * full_ms if self.kind == "fraction" else self.value

    def __str__(self) -> str:
        return f"{self.value:g}" if self.kind == "fraction" else f"{self.value:g}ms"


def parse_target(target, of: str = "predicted", field_name: str = "target") -> Target:
    """Parse ``0.5``, ``"0.5"``, ``"50%"`` (fractions) or ``"12ms"``, ``"12.5 ms"`` (ms).
    Bad values raise one ConfigError naming ``field_name``."""
    if of not in OF:
        raise ValueError(f"of must be one of {OF}")
    if isinstance(target, Target):
        return target

    def fraction(value: float, text: str) -> Target:
        if not (math.isfinite(value) and 0.0 < value < 1.0):
            raise ConfigError(field_name, f"{{field}} {text!r}: a fraction of the full model's "
                              f"{of} latency must be between 0 and 1 (exclusive), e.g. 0.5; "
                              "for milliseconds write e.g. '12ms'")
        return Target("fraction", float(value), of)

    if isinstance(target, bool) or not isinstance(target, (int, float, str)):
        raise ConfigError(field_name, f"{{field}} {target!r} is neither a fraction (0.5, 50%) "
                          "nor a latency ('12ms')")
    if isinstance(target, (int, float)):
        return fraction(float(target), str(target))
    m = _MS_RE.match(target)
    if m:
        ms = float(m.group(1))
        if not (math.isfinite(ms) and ms > 0):
            raise ConfigError(field_name, f"{{field}} {target!r}: a latency in ms must be a "
                              "positive number")
        return Target("ms", ms, of)
    m = _PCT_RE.match(target)
    if m:
        return fraction(float(m.group(1)) / 100.0, target)
    try:
        value = float(target.strip())
    except ValueError:
        raise ConfigError(field_name, f"{{field}} {target!r} is neither a fraction (0.5, 50%) "
                          "nor a latency (12ms)") from None
    return fraction(value, target)
