"""Latency targets and the progressive pruning schedule (design.md, "The algorithm" 6).

A target is either a fraction of the full model's *predicted* latency ("0.5", "50%") or an
absolute latency ("12ms", "12.5 ms"). Pruning approaches it over ``m`` steps; the exponential
schedule takes equal *ratios* per step, so early steps (when the network is wide and redundant)
remove more milliseconds than late ones.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from halp_trt.errors import HalpError

SCHEDULES = ("exp", "linear")

_MS_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*ms\s*$", re.IGNORECASE)
_PCT_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*%\s*$")


@dataclass(frozen=True)
class Target:
    """A latency target: ``kind`` is "fraction" (of the full predicted latency) or "ms"."""

    kind: str
    value: float

    def to_ms(self, full_ms: float) -> float:
        return self.value * full_ms if self.kind == "fraction" else self.value

    def __str__(self) -> str:
        return f"{self.value:g}" if self.kind == "fraction" else f"{self.value:g}ms"


def _fraction(value: float, text: str) -> Target:
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise HalpError(f"latency target {text!r}: a fraction of the full model's latency must be "
                        "between 0 and 1 (exclusive), e.g. 0.5; for milliseconds write e.g. "
                        "'12ms'")
    return Target("fraction", float(value))


def parse_target(target) -> Target:
    """Parse ``0.5``, ``"0.5"``, ``"50%"`` (fractions) or ``"12ms"``, ``"12.5 ms"`` (ms)."""
    if isinstance(target, Target):
        return target
    if isinstance(target, bool):
        raise HalpError(f"latency target {target!r} is not a number")
    if isinstance(target, (int, float)):
        return _fraction(float(target), str(target))
    if not isinstance(target, str):
        raise HalpError(f"latency target must be a number or a string like '0.5' or '12ms', "
                        f"got {type(target).__name__}")
    m = _MS_RE.match(target)
    if m:
        ms = float(m.group(1))
        if not (math.isfinite(ms) and ms > 0):
            raise HalpError(f"latency target {target!r} must be a positive number of milliseconds")
        return Target("ms", ms)
    m = _PCT_RE.match(target)
    if m:
        return _fraction(float(m.group(1)) / 100.0, target)
    try:
        value = float(target.strip())
    except ValueError:
        raise HalpError(f"cannot read latency target {target!r}: write a fraction of the full "
                        "model's latency ('0.5' or '50%') or milliseconds ('12ms')") from None
    return _fraction(value, target)


def schedule_targets_ms(initial_ms: float, final_ms: float, steps: int,
                        kind: str = "exp") -> list[float]:
    """Targets for pruning steps t = 1..steps, ending exactly at ``final_ms``.

    exp:    target_t = exp(α·ln final + (1−α)·ln initial), α = t/steps
    linear: target_t = (1−α)·initial + α·final
    """
    if kind not in SCHEDULES:
        raise HalpError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise HalpError(f"the number of pruning steps must be a positive integer, got {steps!r}")
    if not (initial_ms > 0 and final_ms > 0 and math.isfinite(initial_ms)
            and math.isfinite(final_ms)):
        raise HalpError(f"schedule endpoints must be positive latencies, got {initial_ms!r} ms "
                        f"and {final_ms!r} ms")
    out = []
    for t in range(1, steps + 1):
        a = t / steps
        if kind == "exp":
            out.append(math.exp(a * math.log(final_ms) + (1 - a) * math.log(initial_ms)))
        else:
            out.append((1 - a) * initial_ms + a * final_ms)
    out[-1] = float(final_ms)  # exact endpoint, no exp/log round-off
    return out
